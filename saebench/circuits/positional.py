"""Per-position feature circuits on templatic tasks (Marks et al. 2024, "Sparse Feature
Circuits", arXiv 2403.19647, §4: "when the data are templatic, we treat each position as
its own node").

Pairs are grouped by template (`Task.template_batches`), so that within a group every prompt
has the same length and the same role at each position. A node is (hook, role, latent), the
error node included; in each group it lives at the one position that has its role (or at
none). Its effect is the mean over all pairs of its per-position effect, i.e. the
group-size-weighted mean of each group's per-position effects (saebench.circuits.attribution
with `per_position=True`). Faithfulness mean-ablates every node outside the circuit to its
mean over *its template group* at its position, as Marks et al. do for templatic data; the
group metrics are averaged with the same weights.

Our choices, not the paper's: roles are named (BOS, A, B, S2, place, obj, end, and fixed
words by their text) so that one node spans templates; "summed" nodes (one per (hook,
latent), kept at every position) use the same template-group means, so the two node kinds
differ only in whether position is part of the node.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from saebench.circuits.attribution import Attribution, edge_effects, kept_nodes, node_effects
from saebench.circuits.faithfulness import circuit_metric, keep_of
from saebench.circuits.saes import SAESet
from saebench.tasks import TaskBatch
from store.errors import UserError

NODE_KINDS = ("role", "summed")
"""Per-position nodes (hook, role, latent), or one node per (hook, latent) at every position."""


@dataclass
class Group:
    """One template's pairs, the role of each of its positions, and its own attribution."""

    batch: TaskBatch
    """The template's pairs, all of one length."""
    roles: tuple[str, ...]
    """The role of each position of this template."""
    attr: Attribution
    """Per-position node effects and clean means over this group alone."""
    weight: float
    """Share of all pairs in this group: the group's weight in every mean."""


@dataclass
class Grouped:
    """Role-level node effects over template groups."""

    roles: list[str]
    """Every role of every template, in order of first appearance."""
    groups: list[Group]
    """One per template."""
    effects: dict[str, Tensor]
    """hook -> [roles, d_sae + 1]: mean effect per (role, node); column d_sae is the error."""


def template_groups(task, tokenizer, n: int, seed: int) -> list[tuple[TaskBatch, tuple]]:
    """The task's pairs grouped by template, or a one-line error for untemplated tasks."""
    make = getattr(task, "template_batches", None)
    if make is None:
        raise UserError(f"task {task.name} has no templates to group pairs by; "
                        "per-template circuits need a templatic task (ioi)")
    return make(tokenizer, n, seed)


def role_effects(model, sset: SAESet, task, groups: list[tuple[TaskBatch, tuple]], *,
                 method: str = "attrib", patch: str = "mean", batch_size: int = 32,
                 progress: bool = True) -> Grouped:
    """Per-position attribution in each template group, pooled by role."""
    total = sum(len(b) for b, _ in groups)
    roles = list(dict.fromkeys(r for _, rs in groups for r in rs))
    index = {r: i for i, r in enumerate(roles)}
    effects = {h: torch.zeros(len(roles), s.d_sae + 1) for h, s in sset.items()}
    out = []
    for batch, rs in tqdm(groups, desc="templates", disable=not progress):
        attr = node_effects(model, sset, task, batch, method=method, patch=patch,
                            per_position=True, batch_size=batch_size, progress=False)
        w = len(batch) / total
        rows = torch.tensor([index[r] for r in rs])
        for h in effects:  # node_effects averages over the group: reweight to all pairs
            effects[h].index_add_(0, rows, w * attr.effects[h][: len(rs)])
        out.append(Group(batch, rs, attr, w))
    return Grouped(roles, out, effects)


def summed(g: Grouped) -> dict[str, Float[Tensor, " node"]]:
    """hook -> [d_sae + 1]: effects summed over roles (the position-free node)."""
    return {h: e.sum(0) for h, e in g.effects.items()}


def kept(g: Grouped, kind: str, threshold: float) -> dict[str, Int[Tensor, "K 2"]]:
    """(role or -1 for every position, node) of the nodes with |effect| > threshold."""
    eff = g.effects if kind == "role" else summed(g)
    return {h: kept_nodes(e, threshold) for h, e in eff.items()}


def in_group(k: Int[Tensor, "K 2"], roles: list[str], group: Group) -> Int[Tensor, "J 2"]:
    """Role-level kept nodes as (pos or -1, node) in one group; roles it lacks drop out."""
    pos = {r: p for p, r in enumerate(group.roles)}
    where = torch.tensor([pos.get(roles[r], -2) if r >= 0 else -1 for r in k[:, 0].tolist()],
                         dtype=torch.long)
    return torch.stack([where, k[:, 1]], 1)[where > -2]


def grouped_metric(model, sset: SAESet, task, g: Grouped, k: dict[str, Tensor] | None,
                   batch_size: int = 32, *, invert: bool = False) -> float:
    """Mean metric over all pairs with every node outside `k` (None: nothing) mean-ablated
    to its template group's mean at its position; `invert` ablates only `k`."""
    total = 0.0
    for grp in g.groups:
        if k is None:
            keep = {h: None for h in sset.hooks}
        else:
            keep = keep_of(grp.attr, {h: in_group(v, g.roles, grp) for h, v in k.items()},
                           invert=invert)
        total += grp.weight * circuit_metric(model, sset, task, grp.batch, grp.attr, keep,
                                             batch_size)
    return total


def random_like(g: Grouped, k: dict[str, Tensor], kind: str,
                gen: torch.Generator) -> dict[str, Tensor]:
    """A random circuit with as many nodes at each hook, of the same kind (the control)."""
    out = {}
    for h, v in k.items():
        n_nodes = g.effects[h].shape[1]
        if kind == "role":
            flat = torch.randperm(len(g.roles) * n_nodes, generator=gen)[: len(v)]
            out[h] = torch.stack([flat // n_nodes, flat % n_nodes], 1)
        else:
            j = torch.randperm(n_nodes, generator=gen)[: len(v)]
            out[h] = torch.stack([torch.full_like(j, -1), j], 1)
    return out


def as_attribution(g: Grouped, kind: str, hooks: list[str]) -> Attribution:
    """One Attribution for the record writer: `pos` is the role index (or -1 when summed)."""
    cat = lambda f: torch.cat([getattr(x.attr, f) for x in g.groups])  # noqa: E731
    return Attribution(
        hooks=hooks, per_position=kind == "role",
        effects=g.effects if kind == "role" else summed(g), means={},
        clean_metric=cat("clean_metric"), corrupt_metric=cat("corrupt_metric"),
        accuracy=sum(x.weight * x.attr.accuracy for x in g.groups), patch=g.groups[0].attr.patch)


def role_edges(model, sset: SAESet, task, g: Grouped, attr: Attribution, *,
               batch_size: int = 32, max_pairs: int | None = None,
               progress: bool = True) -> None:
    """Per-position edges (Marks et al. 2024, App. A.1) in each group between the kept nodes
    at the positions of their roles, pooled into attr.edges with the group weights."""
    pairs = list(zip(sset.hooks[:-1], sset.hooks[1:], strict=True))
    attr.edges = {(u, d): torch.zeros(len(attr.kept[d]), len(attr.kept[u])) for u, d in pairs}
    for grp in tqdm(g.groups, desc="edges", disable=not progress):
        local = {h: in_group(k, g.roles, grp) if attr.per_position else k
                 for h, k in attr.kept.items()}
        # Which role-level rows survive in this group, in the order edge_effects keeps them.
        width = grp.attr.means[sset.hooks[0]]["c"].shape[0]
        marks = {h: keep_of(grp.attr, {h: local[h]})[h].float() for h in sset.hooks}
        sub = replace(grp.attr, effects=marks, edges={}, kept={})
        edge_effects(model, sset, task, grp.batch, sub, 0.5, batch_size=batch_size,
                     max_pairs=max_pairs, progress=False)
        rows = {h: _rows_of(attr.kept[h], sub.kept[h], grp, g.roles, attr.per_position, width)
                for h in sset.hooks}
        for (u, d), w in sub.edges.items():
            if len(w):
                attr.edges[(u, d)][rows[d][:, None], rows[u][None, :]] += grp.weight * w


def _rows_of(k: Tensor, local: Tensor, grp: Group, roles: list[str], per_position: bool,
             width: int) -> Tensor:
    """For each (pos, node) edge_effects kept in a group, its row in the role-level `k`.

    A summed node is kept at every position of the group: all of them map to its one row,
    so its edges add up over positions."""
    key = {}
    for i, (r, j) in enumerate(k.tolist()):
        if not per_position:
            for p in range(width):
                key[(p, j)] = i
        elif roles[r] in grp.roles:
            key[(grp.roles.index(roles[r]), j)] = i
    return torch.tensor([key[(p, j)] for p, j in local.tolist()], dtype=torch.long)
