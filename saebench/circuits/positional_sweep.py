"""The faithfulness sweep and the `saebench circuits --by-template` run for per-position
circuits over template groups (saebench.circuits.positional).

The sweep is the one of saebench.circuits.faithfulness (Marks et al. 2024, the evaluation of
circuits): faithfulness (m(C) − m(∅)) / (m(M) − m(∅)), completeness with only C ablated, a
random circuit of the same nodes-per-hook count as the control, and the nodes needed for
80%; only the ablation is per template group (positional.grouped_metric).
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from tqdm.auto import tqdm

from saebench.circuits import positional as P
from saebench.circuits.faithfulness import TARGET, SweepRow, nodes_for
from saebench.circuits.saes import SAESet


def evaluate(model, sset: SAESet, task, g: P.Grouped, kind: str, thresholds: list[float],
             node_threshold: float, *, seed: int = 0, batch_size: int = 32,
             progress: bool = True, extend: int = 6) -> dict:
    """The sweep table, the chosen circuit and the summary, shaped like faithfulness.evaluate."""
    def run(k, invert: bool = False) -> float:
        return P.grouped_metric(model, sset, task, g, k, batch_size, invert=invert)

    empty = {h: torch.zeros(0, 2, dtype=torch.long) for h in sset.hooks}
    m_full, m_empty = run(None), run(empty)
    span = m_full - m_empty
    norm = (lambda m: (m - m_empty) / span) if span != 0 else (lambda m: float("nan"))
    gen = torch.Generator().manual_seed(seed)

    def point(t: float) -> SweepRow:
        k = P.kept(g, kind, t)
        m_c, m_r = run(k), run(P.random_like(g, k, kind, gen))
        m_rest = run(k, invert=True)
        return SweepRow(t, sum(len(v) for v in k.values()), norm(m_c), norm(m_r), m_c, m_r,
                        norm(m_rest), m_rest)

    bar = tqdm(sorted(thresholds, reverse=True), desc=f"faithfulness ({kind})",
               disable=not progress)
    rows = [point(t) for t in bar]
    extra = 0  # as in faithfulness.evaluate: go on a decade at a time until 80% is reached
    while (rows and extra < extend and rows[-1].faithfulness < TARGET
           and rows[-1].threshold > 0 and (len(rows) < 2 or rows[-1].n_nodes > rows[-2].n_nodes)):
        rows.append(point(rows[-1].threshold / 10))
        extra += 1
    chosen = P.kept(g, kind, node_threshold)
    m_c, m_rest = run(chosen), run(chosen, invert=True)
    return {
        "m_full": m_full, "m_empty": m_empty, "sweep": [asdict(r) for r in rows],
        "circuit": {"n_nodes": sum(len(v) for v in chosen.values()), "metric": m_c,
                    "faithfulness": norm(m_c), "completeness_metric": m_rest,
                    "completeness": norm(m_rest)},
        "nodes_for_80": nodes_for(rows),
        "at_80": next((asdict(r) for r in sorted(rows, key=lambda r: r.n_nodes)
                       if r.faithfulness >= TARGET), None),
    }


def default_thresholds(effects: dict) -> list[float]:
    """8 thresholds from half the largest |effect| down 10^4 (as `saebench circuits`)."""
    top = max(e.abs().max().item() for e in effects.values())
    return (top * torch.logspace(-0.3, -4, 8)).tolist()


def discover(model, sset: SAESet, task, args) -> tuple:
    """`saebench circuits --by-template`: (Attribution for the record, faithfulness dict,
    extra record fields). `args` is the command's Args.

    With `--method mask` the node effects on record are attribution's (one
    forward+backward), and the sweep is over the circuits of the learned mask's λ path
    (saebench.circuits.mask) instead of effect thresholds."""
    groups = P.template_groups(task, model.tokenizer, args.n, args.seed)
    kw = {"batch_size": args.batch_size, "progress": True}
    learned = args.method == "mask"
    g = P.role_effects(model, sset, task, groups, method="attrib" if learned else args.method,
                       patch=args.patch, **kw)
    kind = "role" if args.per_position else "summed"
    attr = P.as_attribution(g, kind, list(sset.hooks))
    extra: dict = {"roles": g.roles, "templates": [list(grp.roles) for grp in g.groups],
                   "node_kind": kind}
    if learned:
        from saebench.circuits import mask

        settings = mask.MaskSettings(steps=args.mask_steps, seed=args.seed,
                                     batch_pairs=args.mask_batch)
        path = mask.learn(model, sset, task, g, kind, settings, ablate=args.ablate)
        faith = mask.evaluate_path(model, sset, task, g, kind, path.circuits,
                                   ablate=args.ablate, seed=args.seed)
        attr.kept = path.circuits[faith.pop("chosen")][1]
        extra |= {"thresholds": [lam for lam, _ in path.circuits], "mask": path.history}
    else:
        extra["thresholds"] = list(args.thresholds) or default_thresholds(attr.effects)
        attr.kept = P.kept(g, kind, args.node_threshold)
        faith = evaluate(model, sset, task, g, kind, extra["thresholds"], args.node_threshold,
                         seed=args.seed, **kw)
    if args.edges:
        P.role_edges(model, sset, task, g, attr, max_pairs=args.edge_pairs, **kw)
    return attr, faith, extra


def label_roles(rec: dict, roles: list[str]) -> dict:
    """Give each node and edge end its role name (`role`, None when summed over positions)."""
    ends = [e[s] for e in rec["edges"] for s in ("up", "down")]
    for n in [*rec["nodes"], *ends]:
        n["role"] = None if n["pos"] is None else roles[n["pos"]]
    return rec
