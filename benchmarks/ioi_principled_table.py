"""Markdown tables of the ioi_principled eval from SAE folders' evals/ioi_principled.json.

Usage: .venv/bin/python benchmarks/ioi_principled_table.py runs/p/pareto/topk-k32-s0 ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

APPROX = ("approx_sae_frac", "approx_supervised_frac", "approx_interpretable_frac",
          "approx_mean_ablated_frac", "approx_n_kept_latents", "site_fvu_sae", "site_l0")
INTERP = ("interp_io_f1", "interp_s_f1", "interp_pos_f1", "interp_io_precision",
          "interp_io_recall")


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.3g}"


def main(folders: list[str]) -> None:
    rows = [(Path(f).name, json.loads((Path(f) / "evals" / "ioi_principled.json").read_text()))
            for f in folders]
    for _, doc in rows:  # results written before site_* was called end_*
        m = doc["metrics"]
        m |= {"site" + k[3:]: v for k, v in list(m.items()) if k.startswith("end_")}
    m0 = rows[0][1]["metrics"]
    print(f"clean logit diff {m0['clean_logit_diff']:.3g} (accuracy {m0['clean_accuracy']:.2f}),"
          f" counterfactual: new IO − S {m0['cf_logit_diff']:.3g}, success {m0['cf_success']:.2f}")
    for title, keys in (("approximation", APPROX), ("interpretability", INTERP)):
        print(f"\n{title}\n\n| SAE | " + " | ".join(keys) + " |")
        print("|---" * (len(keys) + 1) + "|")
        for name, doc in rows:
            print(f"| {name} | " + " | ".join(_fmt(doc["metrics"].get(k)) for k in keys) + " |")
    budgets = sorted(int(k.split("_")[2]) for k in m0 if k.startswith("control_sae_")
                     and k.endswith("_score"))
    heads = ["patch_cf", "supervised", *(f"sae_{b}" for b in budgets)]
    print("\ncontrol: edit score / success (mean latents changed)\n\n| SAE | "
          + " | ".join(heads) + " |")
    print("|---" * (len(heads) + 1) + "|")
    for name, doc in rows:
        m = doc["metrics"]
        cells = []
        for h in heads:
            cell = f"{_fmt(m[f'control_{h}_score'])} / {_fmt(m[f'control_{h}_success'])}"
            if h.startswith("sae_"):
                cell += f" ({_fmt(m[f'control_{h}_latents'])})"
            cells.append(cell)
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
