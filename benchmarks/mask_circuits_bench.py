"""Learned node masks vs attribution for IOI circuits at four depths (issue #15 item 6).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/mask_circuits_bench.py \\
        --saes runs/c4s/saes/L{6,12,18,24}-topk --n 40 --ablate mean corrupt \\
        --out runs/c4s/mask_bench.jsonl

Pairs grouped by template, nodes summed over positions (saebench.circuits.positional). For
each ablation (closed nodes set to their template-group mean, or to their value on the
pair's corrupt prompt), two ways to choose circuits:
- **attribution**: the top-N nodes by |attribution effect| (patched to the same reference),
  N on a grid of powers of 2;
- **mask**: the circuits of the learned mask's λ path (saebench.circuits.mask).
Every circuit is scored on the pairs it was found on **and on held-out pairs** (another
seed, the same templates; their own group means or corrupt prompts). Both scores use the
mask's batched gated forward with hard 0/1 gates, which equals the reference ablation
(tests/test_sparse_circuits.py). Nodes for 80% interpolate linearly between grid points,
as `saebench circuits` does. `--out` appends one JSON row per circuit; `--table` prints the
summary table from such a file without running anything.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from saebench.circuits import mask as M
from saebench.circuits import positional as P
from saebench.circuits.attribution import kept_nodes
from saebench.circuits.faithfulness import SweepRow, nodes_for
from saebench.circuits.gated_run import Runner
from saebench.circuits.saes import load_set
from saebench.tasks import get_task


def scorer(run: Runner):
    """Faithfulness of a summed circuit under this runner's pairs and ablation, with the
    runner's m(M) and m(∅)."""
    full, empty = run.hard(None, "summed"), run.hard(run.closed(), "summed")
    return (lambda kept: (run.hard(kept, "summed") - empty) / (full - empty)), full, empty


def top_n(effects: dict, n: int) -> dict:
    """The n nodes with the largest |effect| over all hooks, as summed kept nodes."""
    flat = torch.cat([e.abs() for e in effects.values()])
    t = flat.sort(descending=True).values[min(n, len(flat) - 1)].item()
    return {h: kept_nodes(e, t) for h, e in effects.items()}


def n80(rows: list[dict], key: str) -> float | None:
    return nodes_for([SweepRow(r["label"], r["n_nodes"], r[key], 0, 0, 0, 0, 0) for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--saes", nargs="+")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--heldout-n", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heldout-seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20, help="Adam steps per λ stage")
    ap.add_argument("--ablate", nargs="+", default=["mean", "corrupt"])
    ap.add_argument("--lambda-from", type=float, default=1e-5, help="first λ; doubles per stage")
    ap.add_argument("--stages", type=int, default=12)
    ap.add_argument("--batch-pairs", type=int, default=None,
                    help="pairs per mask step, drawn from the --n fit pairs (default: all)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--table", type=Path, help="only print the table of this results file")
    a = ap.parse_args()
    if a.table:
        return table([json.loads(x) for x in a.table.read_text().splitlines()])
    task = get_task("ioi")
    sset, model = load_set(a.saes, device="cpu")
    fit_groups = P.template_groups(task, model.tokenizer, a.n, a.seed)
    held_groups = P.template_groups(task, model.tokenizer, a.heldout_n, a.heldout_seed)
    rows: list[dict] = []
    for ablate in a.ablate:
        patch = "corrupt" if ablate == "corrupt" else "mean"
        t0 = time.perf_counter()
        g = P.role_effects(model, sset, task, fit_groups, patch=patch, progress=False)
        g2 = P.role_effects(model, sset, task, held_groups, patch=patch, progress=False)
        t_attr = time.perf_counter() - t0
        fit, f_full, f_empty = scorer(Runner(model, sset, task, g, ablate))
        held, h_full, h_empty = scorer(Runner(model, sset, task, g2, ablate))
        base = {"ablate": ablate, "n": a.n, "heldout_n": a.heldout_n,
                "batch_pairs": a.batch_pairs, "steps": a.steps,
                "m_full": f_full, "m_empty": f_empty, "heldout_m_full": h_full,
                "heldout_m_empty": h_empty, "saes": a.saes}
        eff = P.summed(g)
        for n in [2 ** i for i in range(5, 15)]:
            k = top_n(eff, n)
            rows.append({**base, "select": "attribution", "label": n,
                         "n_nodes": sum(len(v) for v in k.values()),
                         "fit": fit(k), "heldout": held(k), "seconds": t_attr})
            print(json.dumps(rows[-1] | {"saes": None}), flush=True)
        t0 = time.perf_counter()
        path = M.learn(model, sset, task, g, "summed", M.MaskSettings(
            lambdas=tuple(a.lambda_from * 2.0 ** i for i in range(a.stages)), steps=a.steps,
            seed=a.seed, batch_pairs=a.batch_pairs),
                       progress=True, ablate=ablate)
        t_mask = time.perf_counter() - t0
        if a.out:  # the circuits themselves, for checks that need their nodes
            torch.save({"path": path, "hooks": list(sset.hooks), "n": a.n, "seed": a.seed},
                       a.out.with_name(f"{a.out.stem}.{ablate}.circuits.pt"))
        for (lam, k), hist in zip(path.circuits, path.history, strict=True):
            rows.append({**base, "select": "mask", "label": lam,
                         "n_nodes": sum(len(v) for v in k.values()),
                         "per_hook": {h: len(v) for h, v in k.items()},
                         "fit": fit(k), "heldout": held(k), "seconds": t_mask,
                         "stochastic_fit": hist["faithfulness"]})
            print(json.dumps(rows[-1] | {"saes": None}), flush=True)
        if a.out:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            with a.out.open("a") as fh:
                for r in rows:
                    if r["ablate"] == ablate:
                        fh.write(json.dumps(r) + "\n")
    table(rows)


def table(rows: list[dict]) -> None:
    print("| ablation | selection | nodes for 80%: fit pairs | held-out pairs | m(M) / m(∅) fit |"
          " seconds |")
    print("|---|---|---|---|---|---|")
    for ablate in dict.fromkeys(r["ablate"] for r in rows):
        for sel in ("attribution", "mask"):
            rs = [r for r in rows if r["ablate"] == ablate and r["select"] == sel]
            if not rs:
                continue
            fmt = lambda x: "not reached" if x is None else f"{x:,.0f}"  # noqa: E731
            print(f"| {ablate} | {sel} | {fmt(n80(rs, 'fit'))} | {fmt(n80(rs, 'heldout'))} | "
                  f"{rs[0]['m_full']:.2f} / {rs[0]['m_empty']:.2f} | {rs[0]['seconds']:.0f} |")


if __name__ == "__main__":
    main()
