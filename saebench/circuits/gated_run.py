"""Gated forwards over template groups: the whole set of pairs in one batch, with a gate on
every SAE node (saebench.circuits.splice.gated_hook). The learned mask trains through it
(saebench.circuits.mask), and hard 0/1 gates score circuits with it, under either ablation:
a closed node takes its template-group mean at its position, or its value on the pair's
corrupt prompt.

All groups run in one right-padded batch, which is exact: attention is causal, and the metric
reads each prompt's last real token. The forward starts at the first hook's block, from the
clean residual stream cached once: nothing before the first hook is gated.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from saebench.circuits import positional as P
from saebench.circuits.saes import SAESet
from saebench.circuits.splice import gated_hook, record_hook
from saebench.tasks import TaskBatch

ABLATIONS = ("mean", "corrupt")


def first_layer(hooks: list[str]) -> int:
    """The block of the first hook (`blocks.L.…`); 0 for hooks before the blocks."""
    name = hooks[0]
    return int(name.split(".")[1]) if name.startswith("blocks.") else 0


def after_last(hooks: list[str]) -> int | None:
    """The block after the last hook: a forward may stop there (None: run them all)."""
    name = hooks[-1]
    return int(name.split(".")[1]) + 1 if name.startswith("blocks.") else None


def pad_rows(t: Tensor, width: int) -> Tensor:
    """[pos, d] zero-padded to [width, d]."""
    return torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[0]))


def gates_of(kept: dict[str, Tensor], rows: int, sizes: dict[str, int], *,
             invert: bool = False) -> dict[str, Tensor]:
    """Hard 0/1 gates [rows, d_sae + 1] per hook from kept (role or -1 for all, node)."""
    out = {}
    for h, k in kept.items():
        t = torch.zeros(rows, sizes[h] + 1)
        every = k[:, 0] < 0
        t[:, k[every, 1]] = 1
        t[k[~every, 0], k[~every, 1]] = 1
        out[h] = 1 - t if invert else t
    return out


class Runner:
    """One task's template groups, ready for gated forwards. Gates are [roles, d_sae + 1]
    per hook for per-position nodes (kind "role"), or [1, d_sae + 1] for nodes summed over
    positions (kind "summed")."""

    def __init__(self, model, sset: SAESet, task, g: P.Grouped, ablate: str = "mean"):
        self.model, self.sset, self.task, self.g = model, sset, task, g
        self.layer = first_layer(sset.hooks)
        self.sizes = {h: s.d_sae for h, s in sset.items()}
        dev = model.cfg.device
        width = max(grp.batch.clean.shape[1] for grp in g.groups)
        pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
        cat = lambda f: torch.cat([getattr(grp.batch, f) for grp in g.groups])  # noqa: E731
        tokens = torch.cat([pad(grp.batch.clean) for grp in g.groups]).to(dev)
        self.batch = TaskBatch(clean=tokens, corrupt=tokens, pos=cat("pos").to(dev),
                               answer=cat("answer").to(dev), wrong=cat("wrong").to(dev),
                               prompts=tuple(p for grp in g.groups for p in grp.batch.prompts))
        # Each pair's weight in the mean over all pairs (groups weigh by their size already).
        self.weight = torch.cat([torch.full((len(grp.batch),), grp.weight / len(grp.batch))
                                 for grp in g.groups]).to(dev)
        # Role index of every (pair, position); padding positions point at role 0, whose
        # gate they never need (nothing after the last real token reaches the metric).
        role = [torch.tensor([g.roles.index(r) for r in grp.roles]) for grp in g.groups]
        self.role = torch.cat([pad(r[None]).expand(len(grp.batch), -1)
                               for r, grp in zip(role, g.groups, strict=True)]).to(dev)
        if ablate == "corrupt":  # the values on each pair's corrupt prompt
            bad = torch.cat([pad(grp.batch.corrupt) for grp in g.groups]).to(dev)
            rec: dict = {}
            with torch.no_grad():
                model.run_with_hooks(bad, fwd_hooks=[(h, record_hook(sae, rec))
                                                     for h, sae in sset.items()],
                                     stop_at_layer=after_last(sset.hooks))
            self.means = {h: {k: v.view(len(bad), width, -1) for k, v in rec[h].items()}
                          for h in sset.hooks}
        else:  # each pair's own template group's means
            self.means = {h: {k: torch.cat([pad_rows(grp.attr.means[h][k], width)[None]
                                            .expand(len(grp.batch), -1, -1)
                                            for grp in g.groups]).to(dev)
                              for k in ("c", "e")} for h in sset.hooks}
        name = f"blocks.{self.layer}.hook_resid_pre"
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=name,
                                            stop_at_layer=self.layer + 1)
        self.prefix = cache[name]

    def metric(self, hooks: list, rows: Tensor | None = None) -> Tensor:
        """Per-pair metric under `hooks`, of the pairs `rows` (None: all)."""
        model, batch, x = self.model, self.batch, self.prefix
        if rows is not None:
            keep = rows.tolist()
            x, batch = x[rows], replace(
                batch, clean=batch.clean[rows], corrupt=batch.corrupt[rows], pos=batch.pos[rows],
                answer=batch.answer[rows], wrong=batch.wrong[rows],
                prompts=tuple(batch.prompts[i] for i in keep))
        with model.hooks(fwd_hooks=hooks):
            for block in model.blocks[self.layer :]:
                x = block(x)
        picked = x[torch.arange(len(batch.pos), device=x.device), batch.pos][:, None]
        final = getattr(model, "ln_final", None) or (lambda y: y)
        logits = model.unembed(final(picked))
        return self.task.metric(logits, replace(batch, pos=torch.zeros_like(batch.pos)))

    def per_pair(self, gates: dict[str, Tensor], kind: str,
                 rows: Tensor | None = None) -> Tensor:
        """Per-pair metric with `gates` per hook, of the pairs `rows` (None: all)."""
        role = self.role if rows is None else self.role[rows]
        hooks = []
        for h, sae in self.sset.items():
            gate = gates[h][0].expand(*role.shape, -1) if kind == "summed" else gates[h][role]
            means = self.means[h] if rows is None else {k: v[rows]
                                                        for k, v in self.means[h].items()}
            hooks.append((h, gated_hook(sae, gate, means)))
        return self.metric(hooks, rows)

    def gated(self, gates: dict[str, Tensor], kind: str) -> Tensor:
        """Mean metric over all pairs with `gates` per hook."""
        return (self.per_pair(gates, kind) * self.weight).sum()

    @torch.no_grad()
    def hard(self, kept: dict[str, Tensor] | None, kind: str, *, invert: bool = False) -> float:
        """Mean metric with every node outside `kept` (None: nothing) closed; `invert`
        closes only `kept`."""
        rows = 1 if kind == "summed" else len(self.g.roles)
        gates = ({h: torch.ones(rows, d + 1) for h, d in self.sizes.items()} if kept is None
                 else gates_of(kept, rows, self.sizes, invert=invert))
        dev = self.model.cfg.device
        return self.gated({h: t.to(dev) for h, t in gates.items()}, kind).item()

    def closed(self) -> dict[str, Tensor]:
        """The empty circuit, as kept nodes."""
        return {h: torch.zeros(0, 2, dtype=torch.long) for h in self.sset.hooks}
