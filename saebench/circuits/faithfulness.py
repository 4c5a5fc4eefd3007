"""Faithfulness and completeness of feature circuits (Marks et al. 2024, "Sparse Feature
Circuits", the evaluation of circuits).

Every node outside the circuit C (SAE latents and SAE errors alike) is mean-ablated: set to its
mean over the task's clean prompts at the same position. Then

    faithfulness(C) = (m(C) − m(∅)) / (m(M) − m(∅))
    completeness(C) = (m(M \\ C) − m(∅)) / (m(M) − m(∅))   (and the raw m(M \\ C))

with m(∅) the metric with every node ablated and m(M) the full model. The node threshold is
swept, and each circuit is compared with a random circuit of the same nodes-per-hook counts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor
from tqdm.auto import tqdm

from saebench.circuits.attribution import Attribution, chunks, kept_nodes
from saebench.circuits.saes import SAESet
from saebench.circuits.splice import ablate_hook, metric
from saebench.tasks import TaskBatch

TARGET = 0.8
"""The faithfulness that the headline score asks for: nodes needed to reach 80%."""


@dataclass(frozen=True)
class SweepRow:
    """One node threshold: circuit size, its faithfulness and completeness, and a random
    control's faithfulness."""

    threshold: float
    n_nodes: int
    faithfulness: float
    random_faithfulness: float
    metric: float
    random_metric: float
    completeness: float
    """Normalised m with only this circuit ablated (near 0: nothing important is left out)."""
    completeness_metric: float


Keep = dict[str, Bool[Tensor, "pos node"] | None]


def mask(kept: Int[Tensor, "K 2"], width: int, n_nodes: int) -> Bool[Tensor, "pos node"]:
    """Kept nodes (pos or -1 for every position, node) as a [pos, d_sae + 1] mask."""
    out = torch.zeros(width, n_nodes, dtype=torch.bool)
    every = kept[:, 0] < 0
    out[:, kept[every, 1]] = True
    out[kept[~every, 0], kept[~every, 1]] = True
    return out


def circuit_metric(model, sset: SAESet, task, batch: TaskBatch, attr: Attribution,
                   keep: Keep, batch_size: int = 32) -> float:
    """Mean metric with every node outside `keep` mean-ablated (None at a hook keeps all)."""
    total = 0.0
    means = {h: {k: v.to(model.cfg.device) for k, v in d.items()} for h, d in attr.means.items()}
    with torch.no_grad():
        for idx in chunks(batch, batch_size):
            sub = batch.select(idx).to(model.cfg.device)
            hooks = [(h, ablate_hook(sae, keep[h], means[h])) for h, sae in sset.items()]
            total += metric(model, task, sub, sub.clean, hooks).sum().item()
    return total / len(batch)


def _width(attr: Attribution) -> int:
    return next(iter(attr.means.values()))["c"].shape[0]


def keep_of(attr: Attribution, kept: dict[str, Tensor], *, invert: bool = False) -> Keep:
    """Masks per hook for a circuit given as kept nodes; `invert` gives the complement."""
    width = _width(attr)
    return {h: mask(k, width, attr.means[h]["c"].shape[1] + 1) ^ invert for h, k in kept.items()}


def random_kept(attr: Attribution, kept: dict[str, Tensor], g: torch.Generator) -> dict:
    """A random circuit with the same number of nodes at each hook (the control)."""
    width, out = _width(attr), {}
    for h, k in kept.items():
        n_nodes = attr.means[h]["c"].shape[1] + 1
        if attr.per_position:
            flat = torch.randperm(width * n_nodes, generator=g)[: len(k)]
            out[h] = torch.stack([flat // n_nodes, flat % n_nodes], 1)
        else:
            j = torch.randperm(n_nodes, generator=g)[: len(k)]
            out[h] = torch.stack([torch.full_like(j, -1), j], 1)
    return out


def nodes_for(rows: list[SweepRow], target: float = TARGET) -> float | None:
    """Nodes needed to reach `target` faithfulness, interpolated linearly in circuit size
    between the two sweep points around the first crossing; None if never reached."""
    prev = None
    for row in sorted(rows, key=lambda r: r.n_nodes):
        if row.faithfulness >= target:
            if prev is None or prev.faithfulness >= row.faithfulness:
                return float(row.n_nodes)
            frac = (target - prev.faithfulness) / (row.faithfulness - prev.faithfulness)
            return prev.n_nodes + frac * (row.n_nodes - prev.n_nodes)
        prev = row
    return None


def evaluate(model, sset: SAESet, task, batch: TaskBatch, attr: Attribution,
             thresholds: list[float], node_threshold: float, *, seed: int = 0,
             batch_size: int = 32, progress: bool = True, extend: int = 6) -> dict:
    """The sweep table, completeness of the chosen circuit and the headline summary.

    When no threshold reaches 80% faithfulness, up to `extend` more points follow, each a
    decade lower, so that the nodes-for-80% score exists whenever the circuit can reach it.
    """
    run = lambda keep: circuit_metric(model, sset, task, batch, attr, keep, batch_size)  # noqa: E731
    m_full = run({h: None for h in sset.hooks})
    m_empty = run(keep_of(attr, {h: torch.zeros(0, 2, dtype=torch.long) for h in sset.hooks}))
    span = m_full - m_empty
    norm = (lambda m: (m - m_empty) / span) if span != 0 else (lambda m: float("nan"))
    g = torch.Generator().manual_seed(seed)
    rows: list[SweepRow] = []

    def point(t: float) -> SweepRow:
        kept = {h: kept_nodes(attr.effects[h], t) for h in sset.hooks}
        m_c, m_r = run(keep_of(attr, kept)), run(keep_of(attr, random_kept(attr, kept, g)))
        m_rest = run(keep_of(attr, kept, invert=True))
        return SweepRow(t, sum(len(k) for k in kept.values()), norm(m_c), norm(m_r), m_c, m_r,
                        norm(m_rest), m_rest)

    bar = tqdm(sorted(thresholds, reverse=True), desc="faithfulness", disable=not progress)
    rows += [point(t) for t in bar]
    # The headline score needs a point at or past 80%: go on a decade at a time while the
    # circuit still grows (nodes with exactly zero effect never join).
    extra = 0
    while (rows and extra < extend and rows[-1].faithfulness < TARGET
           and rows[-1].threshold > 0 and (len(rows) < 2 or rows[-1].n_nodes > rows[-2].n_nodes)):
        rows.append(point(rows[-1].threshold / 10))
        extra += 1
    chosen = {h: kept_nodes(attr.effects[h], node_threshold) for h in sset.hooks}
    m_c = run(keep_of(attr, chosen))
    m_rest = run(keep_of(attr, chosen, invert=True))
    return {
        "m_full": m_full,
        "m_empty": m_empty,
        "sweep": [asdict(r) for r in rows],
        "circuit": {"n_nodes": sum(len(k) for k in chosen.values()), "metric": m_c,
                    "faithfulness": norm(m_c), "completeness_metric": m_rest,
                    "completeness": norm(m_rest)},
        "nodes_for_80": nodes_for(rows),
        "at_80": next((asdict(r) for r in sorted(rows, key=lambda r: r.n_nodes)
                       if r.faithfulness >= TARGET), None),
    }
