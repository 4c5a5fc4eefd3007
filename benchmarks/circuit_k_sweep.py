"""IOI circuit size against SAE sparsity, with what the error nodes carry (issue #15 item 6).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/circuit_k_sweep.py \\
        --runs runs/c4s/ksweep_k8.jsonl runs/c4s/ksweep_k16.jsonl runs/c4s/ksweep_k32.jsonl

Each --runs file is benchmarks/mask_circuits_bench.py's output for one four-depth SAE set
(--n 320 --batch-pairs 40 --heldout-n 320 --ablate mean). A sparser SAE needs fewer latents
per token, so its circuits have fewer nodes; but it also reconstructs less, and the error
node at each hook (one node, summed over positions) carries what it misses. So for every set
this prints, beside nodes for 80%:
- the faithfulness of the circuit made of the error nodes alone, on the fit and held-out
  pairs: how much of the behaviour needs no latent at all;
- nodes for 80% **of what the latents carry**: a circuit's faithfulness f rescaled as
  (f − f_err) / (1 − f_err), where f_err is the error nodes' alone, since every circuit here
  keeps the error nodes;
- each SAE's fraction of variance explained on its store's held-out tokens (the core eval's
  JSON, `<sae>/evals/core.json`, when it has been run).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from mask_circuits_bench import n80, scorer

from saebench.circuits import positional as P
from saebench.circuits.gated_run import Runner
from saebench.circuits.saes import load_set
from saebench.tasks import get_task


def fve(folder: str) -> float | None:
    """Held-out FVE from the core eval's JSON in the SAE folder, if it has run."""
    path = Path(folder) / "evals" / "core.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())["metrics"].get("explained_variance")


def errors_only(run: Runner) -> float:
    """Faithfulness of the circuit whose only nodes are the error nodes."""
    faith, _, _ = scorer(run)
    return faith({h: torch.tensor([[-1, d]]) for h, d in run.sizes.items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", type=Path, required=True)
    a = ap.parse_args()
    task = get_task("ioi")
    print("| SAEs | k | FVE per hook | error nodes alone: fit / held-out | nodes for 80%, "
          "attribution: fit / held-out | mask: fit / held-out | nodes for 80% of the latents' "
          "part, held-out: attribution / mask |")
    print("|---|---|---|---|---|---|---|")
    model = None
    for path in a.runs:
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        first = rows[0]
        sset, model = load_set(first["saes"], model, device="cpu")
        fit = P.template_groups(task, model.tokenizer, first["n"], 0)
        held = P.template_groups(task, model.tokenizer, first["heldout_n"], 1)
        err = [errors_only(Runner(model, sset, task,
                                  P.role_effects(model, sset, task, grs, progress=False)))
               for grs in (fit, held)]
        k = sset.saes[0].k if hasattr(sset.saes[0], "k") else "?"
        fves = [fve(f) for f in first["saes"]]
        fmt = lambda x: "not reached" if x is None else f"{x:,.0f}"  # noqa: E731
        for r in rows:
            r["latent_part"] = (r["heldout"] - err[1]) / (1 - err[1])
        cells, part = [], []
        for sel in ("attribution", "mask"):
            rs = [r for r in rows if r["select"] == sel]
            cells.append(f"{fmt(n80(rs, 'fit'))} / {fmt(n80(rs, 'heldout'))}")
            part.append(fmt(n80(rs, "latent_part")))
        print(f"| {Path(first['saes'][0]).parent} | {k} | "
              + " ".join("–" if v is None else f"{v:.2f}" for v in fves)
              + f" | {err[0]:.2f} / {err[1]:.2f} | {cells[0]} | {cells[1]} | "
              f"{part[0]} / {part[1]} |", flush=True)


if __name__ == "__main__":
    main()
