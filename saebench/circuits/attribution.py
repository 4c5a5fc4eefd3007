"""Node and edge attribution for feature circuits (Marks et al. 2024, "Sparse Feature
Circuits", arXiv 2403.19647, §2).

Nodes are every SAE latent and every SAE error term at each hook; per position or summed over
positions. A node's effect is its indirect effect on the metric m (the task's per-pair metric,
averaged over pairs) when patched from the clean to the corrupt prompt, signed so that a node
supporting the behaviour is positive:

    attribution patching (eq. 3):  effect(a) = ∇ₐm|clean · (a_clean − a_patch)
    integrated gradients (eq. 4):  effect(a) = (1/N Σ_α ∇ₐm|a_α) · (a_clean − a_patch),
                                   a_α on the line clean → patch, N = 10

where a_patch is the node's value on the corrupt prompt, or its clean mean at that position
(`patch="mean"`, the value faithfulness ablates to). The corrupt value leaves every node whose
clean and corrupt values agree (e.g. shared context before the corrupted token) with an
effect of exactly 0, so such nodes never join a circuit however low the threshold, while
mean-ablating them can still destroy the behaviour.

Edges join nodes at consecutive hooks (App. A.1): effect(u → d) = ∇_d m · ∂d/∂u · Δu, batched
as one vector-Jacobian product per block of kept downstream nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from saebench.circuits.saes import SAESet
from saebench.circuits.splice import interp_hook, last_logits, leaf_hook, metric, record_hook
from saebench.tasks import TaskBatch
from store.errors import UserError

METHODS = ("attrib", "ig")
PATCHES = ("corrupt", "mean", "zero")
"""What a node is patched to when its effect is estimated: its value on the corrupt prompt
(the counterfactual), or its mean over the clean prompts at the same position, which is
what faithfulness ablates to (Marks et al. 2024 allow either as a_patch, §2), or zero: the
one baseline a single prompt without a counterfactual has (saebench.circuits.prompt_graph)."""


@dataclass
class Attribution:
    """Node effects per hook, with what faithfulness needs (per-position clean means)."""

    hooks: list[str]
    per_position: bool
    effects: dict[str, Tensor]
    """hook -> [d_sae + 1] (summed) or [pos, d_sae + 1]; column d_sae is the error node."""
    means: dict[str, dict[str, Tensor]]
    """hook -> {"c": [pos, d_sae], "e": [pos, d_in]}: clean means over pairs per position."""
    clean_metric: Tensor
    corrupt_metric: Tensor
    accuracy: float
    patch: str = "mean"
    """The reference of every Δ: "corrupt" or "mean" (see PATCHES)."""
    edges: dict[tuple[str, str], Tensor] = field(default_factory=dict)
    """(up, down) -> [K_down, K_up] edge effects between the kept nodes of `kept`."""
    kept: dict[str, Tensor] = field(default_factory=dict)
    """hook -> Long [K, 2] kept nodes as (pos or -1 when summed, node index)."""


def chunks(batch: TaskBatch, size: int) -> list[Tensor]:
    """Pair indices in chunks of `size`, sorted by length so each chunk pads little."""
    order = torch.argsort(batch.pos, stable=True)
    return [order[i : i + size] for i in range(0, len(batch), size)]


def _reduce(c: Tensor, e: Tensor, b: int, s: int) -> Float[Tensor, "pos node"]:
    """Per-token contributions of codes [b·s, d_sae] and error [b·s] summed over pairs."""
    return torch.cat([c, e[:, None]], 1).view(b, s, -1).sum(0)


def leaf_grads(m: Tensor, rec: dict, hooks: Sequence[str], retain: bool = False) -> dict:
    leaves = [rec[h][k] for h in hooks for k in ("c", "e")]
    grads = torch.autograd.grad(m, leaves, retain_graph=retain)
    return {h: {"c": grads[2 * i], "e": grads[2 * i + 1]} for i, h in enumerate(hooks)}


def _ig_grads(model, sset, task, sub, clean, corrupt, n_total, steps) -> dict:
    """Mean gradient over `steps` midpoints α of the line clean → corrupt, one hook at a time."""
    out = {}
    for hook, sae in sset.items():
        acc = {"c": 0.0, "e": 0.0}
        for i in range(steps):
            rec: dict = {}
            fn = interp_hook(sae, clean[hook], corrupt[hook], (i + 0.5) / steps, rec)
            m = metric(model, task, sub, sub.clean, [(hook, fn)]).sum() / n_total
            g = leaf_grads(m, rec, [hook])[hook]
            acc = {k: acc[k] + g[k] / steps for k in acc}
        out[hook] = acc
    return out


def _accumulate(eff: dict, clean: dict, ref: dict, grads: dict, b: int, s: int) -> None:
    """Add one chunk's node effects, ∇m·(clean − reference)."""
    for h in eff:
        dc = clean[h]["c"].detach() - ref[h]["c"]
        de = clean[h]["e"].detach() - ref[h]["e"]
        c_part = (grads[h]["c"] * dc).cpu()
        e_part = (grads[h]["e"] * de).sum(-1).cpu()
        eff[h][:s] += _reduce(c_part, e_part, b, s)


@torch.no_grad()
def clean_means(model, sset: SAESet, task, batch: TaskBatch, batch_size: int = 32) -> dict:
    """hook -> {"c": [pos, d_sae], "e": [pos, d_in]}: codes and errors averaged over the clean
    prompts at each position (padding excluded): the mean-ablation values."""
    width = int(batch.pos.max()) + 1
    sums = {h: {"c": torch.zeros(width, s.d_sae), "e": torch.zeros(width, s.d_in)}
            for h, s in sset.items()}
    count = torch.zeros(width)
    for idx in chunks(batch, batch_size):
        sub = batch.select(idx).to(model.cfg.device)
        (b, s), rec = sub.clean.shape, {}
        metric(model, task, sub, sub.clean, [(h, record_hook(sae, rec)) for h, sae in sset.items()])
        m = sub.mask.float().reshape(-1, 1)
        for h in sums:
            for k in ("c", "e"):
                sums[h][k][:s] += (rec[h][k] * m).view(b, s, -1).sum(0).cpu()
        count[:s] += sub.mask.float().sum(0).cpu()
    return {h: {k: v / count.clamp_min(1)[:, None] for k, v in d.items()} for h, d in sums.items()}


def reference(patch: str, corrupt: dict, means: dict, b: int, s: int) -> dict:
    """Per hook, the values nodes are patched to, as [b·s, ·] rows like the clean ones."""
    if patch == "corrupt":
        return corrupt
    if patch == "zero":
        return {h: {k: torch.zeros_like(v) for k, v in d.items()} for h, d in corrupt.items()}
    return {h: {k: v[:s].to(next(iter(corrupt.values()))["c"].device)[None]
                .expand(b, s, -1).reshape(b * s, -1) for k, v in d.items()}
            for h, d in means.items()}


def node_effects(
    model,
    sset: SAESet,
    task,
    batch: TaskBatch,
    *,
    method: str = "attrib",
    patch: str = "mean",
    per_position: bool = False,
    batch_size: int = 32,
    ig_steps: int = 10,
    progress: bool = True,
) -> Attribution:
    """Every node's effect on the mean metric, in chunks of `batch_size` pairs."""
    if method not in METHODS:
        raise UserError(f"unknown attribution method {method!r}; choose from {', '.join(METHODS)}")
    if patch not in PATCHES:
        raise UserError(f"unknown patch {patch!r}; choose from {', '.join(PATCHES)}")
    n, width = len(batch), int(batch.pos.max()) + 1
    eff = {h: torch.zeros(width, s.d_sae + 1) for h, s in sset.items()}
    means = clean_means(model, sset, task, batch, batch_size)
    metrics: dict[str, list] = {"clean": [], "corrupt": [], "ok": [], "idx": []}
    for idx in tqdm(chunks(batch, batch_size), desc="nodes", disable=not progress):
        sub = batch.select(idx).to(model.cfg.device)
        s = sub.clean.shape[1]
        clean: dict = {}
        hooks = [(h, leaf_hook(sae, clean, attached=False)) for h, sae in sset.items()]
        with torch.set_grad_enabled(method == "attrib"):  # IG takes its own gradients
            logits, at0 = last_logits(model, sub, sub.clean, hooks)
            per_pair = task.metric(logits, at0)
            grads = leaf_grads(per_pair.sum() / n, clean, sset.hooks) if method == "attrib" else {}
        corrupt: dict = {}
        with torch.no_grad():
            rec_hooks = [(h, record_hook(sae, corrupt)) for h, sae in sset.items()]
            corrupt_m = metric(model, task, sub, sub.corrupt, rec_hooks)
            ok = task.correct(logits.detach(), at0)
        ref = reference(patch, corrupt, means, len(idx), s)
        if method == "ig":
            with torch.enable_grad():
                grads = _ig_grads(model, sset, task, sub, clean, ref, n, ig_steps)
        _accumulate(eff, clean, ref, grads, len(idx), s)
        metrics["clean"].append(per_pair.detach().cpu())
        metrics["corrupt"].append(corrupt_m.cpu())
        metrics["ok"].append(ok.cpu())
        metrics["idx"].append(idx)
    inverse = torch.argsort(torch.cat(metrics["idx"]))
    return Attribution(
        hooks=list(sset.hooks),
        per_position=per_position,
        effects={h: e if per_position else e.sum(0) for h, e in eff.items()},
        means=means,
        clean_metric=torch.cat(metrics["clean"])[inverse],
        corrupt_metric=torch.cat(metrics["corrupt"])[inverse],
        accuracy=torch.cat(metrics["ok"]).float().mean().item(),
        patch=patch,
    )


def kept_nodes(effects: Tensor, threshold: float) -> Int[Tensor, "K 2"]:
    """(pos or -1, node) of the nodes with |effect| > threshold (Marks et al. 2024, §2)."""
    if effects.dim() == 1:
        j = (effects.abs() > threshold).nonzero().squeeze(1)
        return torch.stack([torch.full_like(j, -1), j], 1)
    return (effects.abs() > threshold).nonzero()


def _node_values(g: dict, att: dict, b: int, s: int) -> Float[Tensor, "pos node"]:
    """∇_d m · d per downstream node, summed over pairs, still a function of upstream nodes."""
    return _reduce(g["c"] * att["c_att"], (g["e"] * att["e_att"]).sum(-1), b, s)


def _pick(values: Tensor, kept: Tensor) -> Tensor:
    """values [pos, node] at kept (pos or -1 = summed over positions, node); 0 past the end."""
    summed = values.sum(0)[kept[:, 1]]
    pos = kept[:, 0].clamp(0, values.shape[0] - 1)
    at = values[pos, kept[:, 1]] * (kept[:, 0] < values.shape[0])
    return torch.where(kept[:, 0] < 0, summed, at)


def _vjp(y: Tensor, inputs: list[Tensor], block: int) -> list[Tensor]:
    """Rows of ∂y/∂inputs for every entry of y, `block` entries per batched backward."""
    outs: list[list[Tensor]] = [[] for _ in inputs]
    eye = torch.eye(y.shape[0], device=y.device, dtype=y.dtype)
    for i in range(0, y.shape[0], block):
        rows = torch.autograd.grad(y, inputs, grad_outputs=eye[i : i + block],
                                   retain_graph=True, is_grads_batched=True, allow_unused=True)
        for out, r, x in zip(outs, rows, inputs, strict=True):
            out.append(r if r is not None else x.new_zeros(eye[i : i + block].shape[0], *x.shape))
    return [torch.cat(o) for o in outs]


def edge_effects(
    model,
    sset: SAESet,
    task,
    batch: TaskBatch,
    attr: Attribution,
    node_threshold: float,
    *,
    batch_size: int = 32,
    block: int = 8,
    max_pairs: int | None = None,
    progress: bool = True,
) -> None:
    """Fill attr.kept and attr.edges: effect(u → d) = ∇_d m · ∂d/∂u · Δu (Marks et al. 2024,
    App. A.1), at the clean run, between kept nodes at consecutive hooks; on at most
    `max_pairs` pairs."""
    attr.kept = {h: kept_nodes(attr.effects[h], node_threshold) for h in sset.hooks}
    pairs = list(zip(sset.hooks[:-1], sset.hooks[1:], strict=True))
    attr.edges = {(u, d): torch.zeros(len(attr.kept[d]), len(attr.kept[u])) for u, d in pairs}
    if not any(len(attr.kept[u]) and len(attr.kept[d]) for u, d in pairs):
        return
    if max_pairs is not None and max_pairs < len(batch):
        # Edges cost one segment backward per kept downstream node: estimate them on a
        # seeded subset of pairs (an unbiased estimate of the mean over pairs).
        g = torch.Generator().manual_seed(0)
        batch = batch.select(torch.randperm(len(batch), generator=g)[:max_pairs].sort().values)
    for idx in tqdm(chunks(batch, batch_size), desc="edges", disable=not progress):
        sub = batch.select(idx).to(model.cfg.device)
        b, s = sub.clean.shape
        clean: dict = {}
        corrupt: dict = {}
        with torch.no_grad():
            metric(model, task, sub, sub.corrupt,
                   [(h, record_hook(sae, corrupt)) for h, sae in sset.items()])
        ref = reference(attr.patch, corrupt, attr.means, b, s)
        with torch.enable_grad():
            hooks = [(h, leaf_hook(sae, clean, attached=True))
                     for h, sae in sset.items()]
            m = metric(model, task, sub, sub.clean, hooks).sum() / len(batch)
            grads = leaf_grads(m, clean, sset.hooks, retain=True)
            for up, down in pairs:
                k_up, k_down = attr.kept[up].to(m.device), attr.kept[down].to(m.device)
                if not len(k_up) or not len(k_down):
                    continue
                y = _pick(_node_values(grads[down], clean[down], b, s), k_down)
                jc, je = _vjp(y, [clean[up]["c"], clean[up]["e"]], block)
                with torch.no_grad():
                    dc = clean[up]["c"] - ref[up]["c"]
                    de = clean[up]["e"] - ref[up]["e"]
                    w = torch.cat([jc * dc, (je * de).sum(-1, keepdim=True)], -1)
                    w = w.view(len(k_down), b, s, -1).sum(1)
                    attr.edges[(up, down)] += torch.stack([_pick(r, k_up) for r in w]).cpu()
        del clean, grads, m
