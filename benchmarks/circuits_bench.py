"""Feature circuits on the default model with SAEs at 4 residual depths: the issue-#6 figures.

    .venv/bin/python benchmarks/circuits_bench.py --workspace runs/c4 --archs topk mp

One command, every step through the real CLI and each a no-op once done: cache the residual
streams at 4 depths in one model pass (`saebench cache --hook resid:4`), train one SAE per
depth and architecture (all architectures of a depth in one pass over its store), find the
IOI and SVA circuits of each architecture's SAE set (`saebench circuits`), then draw one PNG
per task (faithfulness against circuit size for every set, with the random-circuit controls)
and print a markdown table for BENCHMARKS.md. The headline score, nodes needed for 80%
faithfulness, compares the architectures at the same hooks. `--force` recomputes the
circuits (e.g. to re-time them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

COLUMNS = ("task", "SAEs", "patch", "pairs", "accuracy", "m clean / corrupt",
           "nodes for 80%", "first point ≥ 80%: nodes, faithfulness, random, completeness",
           "seconds")


def _saebench(*args: str) -> None:
    cmd = [str(Path(sys.executable).with_name("saebench")), *args]
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def _hooks(store: Path) -> list[tuple[str, Path]]:
    """(hook, store file) of the per-hook stores `saebench cache --hook resid:4` wrote."""
    stem = store.name.removesuffix(".duckdb")
    found = sorted(store.parent.glob(f"{stem}.blocks.*.duckdb"),
                   key=lambda p: int(p.name.split(".")[2]))
    return [(p.name[len(stem) + 1 : -len(".duckdb")], p) for p in found]


def _at_80(rec: dict) -> str:
    """The first sweep point at or past 80% faithfulness, with its random control and its
    completeness."""
    rows = sorted(rec["faithfulness"]["sweep"], key=lambda r: r["n_nodes"])
    row = next((r for r in rows if r["faithfulness"] >= 0.8), None)
    if row is None:
        return "–"
    return (f"{row['n_nodes']}, {row['faithfulness']:.3f}, {row['random_faithfulness']:.3f}, "
            f"{row['completeness']:.3f}")


def _row(rec: dict) -> list[str]:
    n80 = rec["summary"]["nodes_for_80"]
    arch = Path(rec["saes"][0]).name.split("-", 1)[1]
    return [rec["task"], arch, rec["settings"]["patch"], str(rec["settings"]["n"]),
            f"{rec['accuracy']:.2f}", f"{rec['clean_metric']:.2f} / {rec['corrupt_metric']:.2f}",
            "not reached" if n80 is None else f"{n80:.0f}", _at_80(rec),
            f"{rec['settings']['seconds']:.0f}"]


def plot(recs: dict[str, dict], path: Path) -> None:
    """Faithfulness against nodes (log scale) per SAE set, with its random control and its
    completeness (m with the circuit ablated, normalised; lower is more complete)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=110)
    for i, (arch, rec) in enumerate(recs.items()):
        colour = f"C{i}"
        sweep = sorted(rec["faithfulness"]["sweep"], key=lambda r: r["n_nodes"])
        n = [max(r["n_nodes"], 1) for r in sweep]
        ax.plot(n, [r["faithfulness"] for r in sweep], "o-", color=colour, label=arch)
        ax.plot(n, [r["random_faithfulness"] for r in sweep], ":", color=colour, alpha=0.7,
                label=f"{arch}: random circuit, same size per hook")
        ax.plot(n, [r["completeness"] for r in sweep], "x--", color=colour, alpha=0.7,
                label=f"{arch}: completeness (circuit ablated)")
    ax.axhline(0.8, color="black", lw=0.6, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("nodes in the circuit (latents + error nodes over 4 hooks)")
    ax.set_ylabel("faithfulness")
    first = next(iter(recs.values()))
    ax.set_title(f"{first['task']} on {first['model']}: SAEs at "
                 + ", ".join(h.split(".")[1] for h in first["hooks"]))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


SPARSE_KINDS = {"template-pos": ["--by-template", "--per-position"], "summed": [],
                "template-summed": ["--by-template"]}
"""The three node kinds of `--sparse`: today's (mixed templates, summed over positions),
template-grouped summed, and template-grouped per position (saebench.circuits.positional)."""


def _n80(rec: dict) -> str:
    n80 = rec["summary"]["nodes_for_80"]
    if n80 is None:
        best = max(rec["faithfulness"]["sweep"], key=lambda r: r["faithfulness"])
        return f"not reached (max {best['faithfulness']:.2f} at {best['n_nodes']})"
    return f"{n80:.0f}"


def sparse(sets: dict[str, list[str]], ws: Path, task: str, n: int, force: bool,
           figures: Path) -> None:
    """`--sparse`: nodes for 80% faithfulness per node kind and SAE set, a table and a figure
    (benchmarks/figures/sparse_<task>.png)."""
    recs: dict[str, dict[str, dict]] = {arch: {} for arch in sets}
    for kind, flags in SPARSE_KINDS.items():  # kind-major: the new kind first on every set
        for arch, folders in sets.items():
            out = ws / "circuits" / f"{task}-attrib-mean-{kind}-{arch}.json"
            if force or not out.exists():
                _saebench("circuits", "--saes", *folders, "--task", task, "--n", str(n),
                          *flags, "--out", str(out))
            recs[arch][kind] = json.loads(out.read_text())
    print("| SAEs | hooks | per position, by template | summed, mixed templates (today) | "
          "summed, by template | today / per position | seconds (per position, today, "
          "by template) |")
    print("|---|---|---|---|---|---|---|")
    for arch, by in recs.items():
        a = by["summed"]["summary"]["nodes_for_80"]
        b = by["template-pos"]["summary"]["nodes_for_80"]
        ratio = f"{a / b:.1f}×" if a and b else "–"
        secs = ", ".join(f"{by[k]['settings']['seconds']:.0f}" for k in SPARSE_KINDS)
        hooks = ", ".join(h.split(".")[1] for h in by["summed"]["hooks"])
        print(f"| {arch} | {hooks} | " + " | ".join(_n80(by[k]) for k in SPARSE_KINDS)
              + f" | {ratio} | {secs} |")
    _sparse_plot(recs, figures / f"sparse_{task}.png")


def _sparse_plot(recs: dict[str, dict[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=110)
    styles = {"summed": ":", "template-summed": "--", "template-pos": "-"}
    for i, (arch, by) in enumerate(recs.items()):
        for kind, rec in by.items():
            sweep = sorted(rec["faithfulness"]["sweep"], key=lambda r: r["n_nodes"])
            ax.plot([max(r["n_nodes"], 1) for r in sweep], [r["faithfulness"] for r in sweep],
                    marker="o", ms=3, ls=styles[kind], color=f"C{i}", label=f"{arch}, {kind}")
    ax.axhline(0.8, color="black", lw=0.6, ls="--")
    ax.set_xscale("log")
    ax.set_ylim(-0.2, 1.3)
    ax.set_xlabel("nodes in the circuit")
    ax.set_ylabel("faithfulness")
    first = next(iter(next(iter(recs.values())).values()))
    ax.set_title(f"{first['task']} on {first['model']}: summed vs per-position nodes")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path("runs/c4"))
    parser.add_argument("--cache-tokens", type=int, default=400_000)
    parser.add_argument("--heldout-tokens", type=int, default=16_384)
    parser.add_argument("--train-tokens", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--width", type=int, default=4608)
    parser.add_argument("--archs", nargs="+", default=["topk"])
    parser.add_argument("--tasks", nargs="+", default=["ioi", "sva"])
    parser.add_argument("--n", type=int, default=100, help="prompt pairs per task")
    parser.add_argument("--method", default="attrib", choices=["attrib", "ig"])
    parser.add_argument("--patch", default="mean", choices=["mean", "corrupt"])
    parser.add_argument("--figures", type=Path, default=Path("benchmarks/figures"))
    parser.add_argument("--force", action="store_true", help="recompute the circuits")
    parser.add_argument("--sparse", nargs="*", metavar="ARCH=DIR[,DIR]",
                        help="only the per-position comparison, on these SAE sets (default: "
                        "the sets this script trains): benchmarks/results/sparse_circuits.md")
    args = parser.parse_args()
    ws = args.workspace
    if args.sparse:
        sets = {spec.split("=", 1)[0]: spec.split("=", 1)[1].split(",") for spec in args.sparse}
        sparse(sets, ws, args.tasks[0], args.n, args.force, args.figures)
        return
    store = ws / "store.duckdb"
    _saebench("cache", "--hook", "resid:4", "--tokens", str(args.cache_tokens),
              "--heldout-tokens", str(args.heldout_tokens), "--store", str(store))
    sets: dict[str, list[str]] = {arch: [] for arch in args.archs}
    for hook, path in _hooks(store):
        # One pass over each depth's store trains every architecture (folders L<n>-<arch>).
        base = ws / "saes" / f"L{hook.split('.')[1]}"
        out = base if len(args.archs) > 1 else base.with_name(f"{base.name}-{args.archs[0]}")
        _saebench("train", "--store", str(path), "--out", str(out), "--arch", *args.archs,
                  "--k", str(args.k), "--width", str(args.width),
                  "--tokens", str(args.train_tokens), "--dead-window", "200000",
                  "--no-progress")
        for arch in args.archs:
            sets[arch].append(str(base.with_name(f"{base.name}-{arch}")))
    rows = []
    for task in args.tasks:
        recs = {}
        for arch, folders in sets.items():
            out = ws / "circuits" / f"{task}-{args.method}-{args.patch}-{arch}.json"
            if args.force or not out.exists():
                _saebench("circuits", "--saes", *folders, "--task", task, "--n", str(args.n),
                          "--method", args.method, "--patch", args.patch, "--out", str(out))
            recs[arch] = json.loads(out.read_text())
            rows.append(_row(recs[arch]))
        plot(recs, args.figures / f"circuits-{task}-{args.method}-{args.patch}.png")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
