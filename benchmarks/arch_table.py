"""Train, evaluate and compare every architecture on one store: the issue-#5 six-way table.

    .venv/bin/python benchmarks/arch_table.py --store runs/g1/store.duckdb --tokens 950000

Each architecture is trained on its own (so its tokens/s is its own) with the same shape,
data order and schedule, through the real CLI (`saebench train`, then `saebench eval`); both
steps resume and are no-ops once done, so rerunning the command only rebuilds the table.
gsae needs a store cached with `--with-grads`. Prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

ARCHS = ("topk", "batchtopk", "mutual_choice", "feature_choice", "gsae", "mp")
COLUMNS = ("architecture", "mode", "L0", "explained var.", "CE rec. (zero)", "CE rec. (mean)",
           "ΔCE", "KL", "dead % eval (window)", "dead % training (window)", "dense % (>1%)",
           "train tok/s")


def _saebench(*args: str) -> None:
    cmd = [str(Path(sys.executable).with_name("saebench")), *args]
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def _modes(metrics: dict) -> dict[str, dict]:
    """Split flat metrics into inference modes: "name" is the default mode, "mode/name" others."""
    modes: dict[str, dict] = {"": {}}
    for key, value in metrics.items():
        mode, _, name = key.rpartition("/")
        modes.setdefault(mode, {})[name] = value
    return modes


def _row(arch: str, mode: str, m: dict, last: dict) -> list[str]:
    def f(key: str, fmt: str = "{:.3f}") -> str:
        return fmt.format(m[key]) if isinstance(m.get(key), int | float) else "–"

    dead = f"{f('pct_dead', '{:.1f}')} ({f('dead_window_tokens', '{:,.0f}')})"
    # The loop's own count at the end of training: no fire in the last `dead_window` tokens.
    train_dead = (f"{100 * last['dead_frac']:.1f} ({last['dead_window']:,.0f})"
                  if last and not mode else "–")
    tok_s = f"{last['tokens_per_s']:,.0f}" if last and not mode else "–"
    return [arch, mode or "default", f("l0", "{:.1f}"), f("explained_variance"),
            f("ce_recovered_vs_zero_ablation"), f("ce_recovered_vs_mean_ablation"),
            f("delta_ce"), f("kl_sae"), dead, train_dead, f("pct_dense_1pct", "{:.1f}"),
            tok_s]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--saes", type=Path, default=None,
                        help="folder for the SAEs (default: <store's folder>/saes)")
    parser.add_argument("--archs", nargs="+", default=list(ARCHS))
    parser.add_argument("--tokens", type=int, default=950_000)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--width", type=int, default=4608)
    parser.add_argument("--dead-window", type=int, default=200_000)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    saes = args.saes or args.store.parent / "saes"
    rows = []
    for arch in args.archs:
        folder = saes / f"{arch}-k{args.k}-w{args.width}"
        _saebench("train", "--store", str(args.store), "--out", str(folder), "--arch", arch,
                  "--k", str(args.k), "--width", str(args.width), "--tokens", str(args.tokens),
                  "--dead-window", str(args.dead_window), "--no-progress")
        if not (folder / "evals" / "core.json").exists():
            _saebench("eval", "--sae", str(folder))
        metrics = json.loads((folder / "evals" / "core.json").read_text())["metrics"]
        curves = pq.read_table(folder / "curves.parquet").to_pylist()
        for mode, m in _modes(metrics).items():
            rows.append(_row(arch, mode, m, curves[-1] if curves else {}))
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    table = "\n".join(lines)
    print(f"\nstore {args.store}; k {args.k}, d_sae {args.width}, {args.tokens:,} training "
          f"tokens; {os.cpu_count()} CPU cores\n\n{table}")
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
