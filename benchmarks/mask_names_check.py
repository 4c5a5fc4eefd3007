"""Is a learned IOI circuit specific to the names it was fitted on? (issue #15 item 6)

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/mask_names_check.py \\
        --circuits runs/c4s/mask_bench.mean.circuits.pt

Takes the circuits of a learned mask's λ path (written by benchmarks/mask_circuits_bench.py
with --out) and scores each on four pair sets that share the fitted pairs' templates:
- **fit**: the pairs the mask was fitted on (the same seed and n);
- **new fillers**: the same pairs with place and object drawn afresh, names kept;
- **new names**: the same pairs with the three names (IO, S and the corrupt C) drawn afresh,
  place and object kept;
- **held-out**: a fresh draw of everything (seed + 1).
If a circuit keeps its faithfulness under new fillers but loses it under new names, what it
keeps is the fitted prompts' name latents rather than a name-independent mechanism. Every
set is mean-ablated to its own template-group means; summed nodes.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
from mask_circuits_bench import scorer

from saebench.circuits import positional as P
from saebench.circuits.gated_run import Runner
from saebench.circuits.saes import load_set
from saebench.tasks import get_task
from saebench.tasks.base import need, single_tokens
from saebench.tasks.ioi import NAMES, OBJECTS, PLACES, template_groups


def groups(tokenizer, n: int, seed: int, redraw: str | None) -> list:
    """ioi.template_groups(n, seed), with the names or the fillers of every pair redrawn."""
    names = need(single_tokens(tokenizer, NAMES), 3, "ioi", "names")
    places = need(single_tokens(tokenizer, PLACES), 1, "ioi", "places")
    objects = need(single_tokens(tokenizer, OBJECTS), 1, "ioi", "objects")
    other = random.Random(f"redraw:{seed}")

    def edit(draw: tuple) -> tuple:
        io, s, c, place, obj = draw
        if redraw == "names":
            io, s, c = other.sample(names, 3)
        elif redraw == "fillers":
            place, obj = other.choice(places), other.choice(objects)
        return io, s, c, place, obj

    return template_groups(tokenizer, n, seed, edit if redraw else None)


def saved_path(doc: str):
    """(arguments, the saved λ path, its SAE set, the model) for the scripts that score a
    saved path (this one and circuit_name_latents.py): --circuits, --saes, --out."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--circuits", type=Path, required=True)
    ap.add_argument("--saes", nargs="+", help="default: the SAE folders beside the circuits file")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    saved = torch.load(a.circuits, weights_only=False)
    saes = a.saes or [str(a.circuits.parent / "saes" / f"L{h.split('.')[1]}-topk")
                      for h in saved["hooks"]]
    sset, model = load_set(saes, device="cpu")
    return a, saved, sset, model


def main() -> None:
    a, saved, sset, model = saved_path(__doc__)
    task = get_task("ioi")
    tok, n, seed = model.tokenizer, saved["n"], saved["seed"]
    sets = {"fit": groups(tok, n, seed, None), "new fillers": groups(tok, n, seed, "fillers"),
            "new names": groups(tok, n, seed, "names"),
            "held-out": groups(tok, 40, seed + 1, None)}
    scores = {}
    for name, grs in sets.items():
        faith, _, _ = scorer(Runner(model, sset, task,
                                    P.role_effects(model, sset, task, grs, progress=False)))
        scores[name] = [faith(k) for _, k in saved["path"].circuits]
    rows = []
    print("| λ | nodes | " + " | ".join(sets) + " |")
    print("|---|---|" + "---|" * len(sets))
    for i, (lam, k) in enumerate(saved["path"].circuits):
        row = {"lambda": lam, "n_nodes": sum(len(v) for v in k.values()),
               **{s: scores[s][i] for s in sets}}
        rows.append(row)
        print(f"| {lam:.2g} | {row['n_nodes']:,} | "
              + " | ".join(f"{scores[s][i]:.2f}" for s in sets) + " |")
    if a.out:
        a.out.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


if __name__ == "__main__":
    main()
