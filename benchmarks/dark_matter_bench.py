"""Dark matter vs SAE width and architecture: tables and a figure from `dark_matter` results.

Run: `.venv/bin/python benchmarks/dark_matter_bench.py [--run] [--pareto runs/p/pareto]
[--store runs/p/store.duckdb] [--figure benchmarks/figures/dark_matter_width.png]`

Reads `<pareto>/<sae>/evals/dark_matter.json` for the TopK k32 width sweep and the six k32
architectures (seed 0), prints two Markdown tables and draws linear-predictable and nonlinear
error (as shares of the variance of x) against width. `--run` first runs
`saebench eval --evals dark_matter` (default settings) on every SAE whose result is missing,
printing each run's wall time; `--force` reruns them all.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

WIDTHS = {1152: "topk-k32-w1152-s0", 2304: "topk-k32-w2304-s0", 4608: "topk-k32-s0",
          9216: "topk-k32-w9216-s0", 16384: "topk-k32-w16384-s0"}
ARCHS = ["topk-k32-s0", "batchtopk-k32-s0", "mutual_choice-k32-s0", "feature_choice-k32-s0",
         "gsae-k32-s0", "mp-k32-s0"]
COLUMNS = [("FVU", "fvu"), ("lin. share of ‖e‖²", "error_linear_share"),
           ("R² of ‖e‖", "error_norm_r2"), ("x: SAE", "x_share/sae"),
           ("x: lin. error", "x_share/linear_error"),
           ("x: nonlin. error", "x_share/nonlinear_error"),
           ("subset: SAE FVU", "sae/fvu"), ("subset: SAE lin. share", "sae/error_linear_share"),
           ("subset: gp lin. share", "gp/error_linear_share"),
           ("refit: error removed", "refit/error_removed"),
           ("gp: error removed", "gp/error_removed"),
           ("gp: nonlin. removed", "gp/nonlinear_removed"),
           ("gp: lin. removed", "gp/linear_removed"), ("gp won", "gp/chosen_frac")]


def result_path(pareto: Path, sae: str) -> Path:
    return pareto / sae / "evals" / "dark_matter.json"


def run_missing(pareto: Path, store: Path, saes: list[str], force: bool) -> None:
    exe = Path(sys.executable).with_name("saebench")
    for sae in saes:
        if not (pareto / sae).exists():
            print(f"skip {sae}: no such SAE folder", file=sys.stderr)
            continue
        if result_path(pareto, sae).exists() and not force:
            continue
        start = time.perf_counter()
        subprocess.run([str(exe), "eval", "--sae", str(pareto / sae), "--store", str(store),
                        "--device", "cpu", "--evals", "dark_matter"], check=True)
        print(f"{sae}: {time.perf_counter() - start:.0f} s wall", file=sys.stderr)


def load(pareto: Path, sae: str) -> dict | None:
    path = result_path(pareto, sae)
    return json.loads(path.read_text())["metrics"] if path.exists() else None


def table(rows: list[tuple[str, dict | None]]) -> str:
    head = "| SAE | " + " | ".join(c for c, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for name, m in rows:
        cells = ["–" if m is None or key not in m else f"{m[key]:.3f}" for _, key in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(points: list[tuple[int, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = [p[0] for p in points]
    ms = [p[1] for p in points]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 5.2))
    a.plot(w, [m["fvu"] for m in ms], "k-o", label="total error (FVU)")
    a.plot(w, [m["x_share/linear_error"] for m in ms], "C0-o", label="linearly predictable")
    a.plot(w, [m["x_share/nonlinear_error"] for m in ms], "C3-o", label="nonlinear")
    if all("gp/fvu" in m for m in ms):  # the pursuit sample is smaller: show both on it
        a.plot(w, [m["sae/fvu"] for m in ms], "--s", color="grey", label="SAE, pursuit sample")
        a.plot(w, [m["gp/fvu"] for m in ms], "k--s", label="gradient pursuit, pursuit sample")
    a.set(xscale="log", xlabel="d_sae (TopK, k=32)", ylabel="share of Var(x)",
          title="SAE error split by a linear map of x")
    b.plot(w, [m["error_linear_share"] for m in ms], "C0-o", label="linear share of ‖e‖²")
    b.plot(w, [m["error_norm_r2"] for m in ms], "C2-o", label="R² of ‖e‖ from x")
    if all("gp/nonlinear_removed" in m for m in ms):
        b.plot(w, [m["gp/nonlinear_removed"] for m in ms], "C3--s",
               label="nonlinear error removed by pursuit")
        b.plot(w, [m["gp/linear_removed"] for m in ms], "C0--s",
               label="linear error removed by pursuit")
    b.set(xscale="log", xlabel="d_sae (TopK, k=32)", ylim=(0, 1), title="held-out shares")
    for ax in (a, b):
        ax.set_xticks(w, [str(x) for x in w])
        ax.minorticks_off()
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    fig.suptitle("Dark matter (Engels et al. 2024) on SmolLM2-135M blocks.15.hook_resid_post")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pareto", type=Path, default=Path("runs/p/pareto"))
    p.add_argument("--store", type=Path, default=Path("runs/p/store.duckdb"))
    p.add_argument("--figure", type=Path, default=Path("benchmarks/figures/dark_matter_width.png"))
    p.add_argument("--run", action="store_true", help="run the eval where results are missing")
    p.add_argument("--force", action="store_true", help="with --run: rerun every SAE")
    args = p.parse_args()
    if args.run:
        run_missing(args.pareto, args.store, list(WIDTHS.values()) + ARCHS[1:], args.force)
    widths = [(w, load(args.pareto, sae)) for w, sae in WIDTHS.items()]
    print("### TopK k32 by width\n")
    print(table([(f"topk w{w}", m) for w, m in widths]))
    print("\n### k32 architectures (d_sae 4608, seed 0)\n")
    print(table([(sae, load(args.pareto, sae)) for sae in ARCHS]))
    points = [(w, m) for w, m in widths if m is not None]
    if len(points) >= 2:
        figure(points, args.figure)
        print(f"\nwrote {args.figure}")


if __name__ == "__main__":
    main()
