"""A Pareto sweep of every architecture on one store: k × seeds × architectures, at matched L0.

    .venv/bin/python benchmarks/arch_table.py --store runs/p/store.duckdb --tokens 384000

For each (architecture, k, seed) it trains an SAE (`saebench train`'s code, in this process),
calibrates the batch-coupled ones so their held-out inference L0 is k (`saebench calibrate`,
on the first half of the held-out split), and runs the core eval (`saebench eval`'s code; one
model for all, and the SAE-independent clean and ablated passes shared across SAEs). Every
step is skipped when its output exists, so rerunning the command resumes, then only rebuilds
the outputs: a Markdown table of mean ± std over seeds per (architecture, k, inference mode),
PNG Pareto plots (explained variance, CE recovered and KL against L0, one line per
architecture), and the latent-density distribution of every architecture at the middle k.
gsae needs a store cached with `--with-grads`. `--set ARCH.FIELD=VALUE` and `--tag` run
variants (e.g. a g-SAE β sweep) into their own folders.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
from spread import cpu, mean_std

ARCHS = ("topk", "batchtopk", "mutual_choice", "feature_choice", "gsae", "mp")
CALIBRATED = ("batchtopk", "mutual_choice", "feature_choice")
METRICS = (("L0", "l0", "{:.1f}"), ("EV", "explained_variance", "{:.3f}"),
           ("CE rec. (zero)", "ce_recovered_vs_zero_ablation", "{:.3f}"),
           ("CE rec. (mean)", "ce_recovered_vs_mean_ablation", "{:.3f}"),
           ("ΔCE", "delta_ce", "{:.3f}"), ("KL", "kl_sae", "{:.3f}"),
           ("dead % held-out", "pct_dead", "{:.1f}"), ("dense % >1%", "pct_dense_1pct", "{:.1f}"))
TRAIN_METRICS = (("dead % train", "dead_pct", "{:.1f}"), ("tok/s", "tokens_per_s", "{:,.0f}"))


def _folder(saes: Path, arch: str, tag: str, k: int, seed: int) -> Path:
    return saes / f"{arch}{tag}-k{k}-s{seed}"


def train(args, arch: str, k: int, seed: int, folder: Path) -> None:
    from saebench.commands import train as train_cmd
    from store.activation_store import open_store
    from trainers.config import TrainConfig

    if (folder / "cfg.json").exists():
        return
    sets = tuple(s for s in args.set if s.split(".", 1)[0] == arch)
    cfg = TrainConfig(tokens=args.tokens, batch_size=args.batch_size, seed=seed,
                      dead_window=args.dead_window, progress=False, device="cpu")
    targs = train_cmd.Args(store=args.store, out=folder, train=cfg, arch=(arch,), k=(k,),
                           width=(args.width,), set=sets)
    store = open_store(args.store)
    print(f"train {folder.name}", flush=True)
    train_cmd.run(targs, store.source("train"), store.meta)


def calibrate(args, folder: Path, n_heldout: int) -> None:
    from saebench.commands import calibrate as cal_cmd

    cal = cal_cmd.Args(sae=(folder,), store=args.store, tokens=min(args.calib_tokens, n_heldout))
    print(cal_cmd.calibrate_folder(folder, cal), flush=True)


def evaluate(args, folder: Path, model) -> None:
    from saebench.evals.configs import CoreConfig
    from saebench.evals.runner import open_context, run_evals

    if (folder / "evals" / "core.json").exists():
        return
    ctx = open_context(folder, args.store, "cpu")
    ctx.model_loader = lambda: model
    print(f"eval {folder.name}", flush=True)
    run_evals(ctx, folder, ("core",), {"core": CoreConfig(ce_tokens=args.ce_tokens)},
              echo=lambda _: None)


def _modes(metrics: dict) -> dict[str, dict]:
    """Split flat metrics into inference modes: "name" is the default mode, "mode/name" others."""
    modes: dict[str, dict] = {"": {}}
    for key, value in metrics.items():
        mode, _, name = key.rpartition("/")
        modes.setdefault(mode, {})[name] = value
    return modes


def collect(folder: Path) -> dict[str, dict]:
    """{mode: metrics} of one SAE, training-side figures added to the default mode."""
    metrics = json.loads((folder / "evals" / "core.json").read_text())["metrics"]
    modes = _modes(metrics)
    last = pq.read_table(folder / "curves.parquet").to_pylist()[-1]
    modes[""] |= {"dead_pct": 100 * last["dead_frac"], "tokens_per_s": last["tokens_per_s"]}
    return modes


def table(results: dict) -> str:
    """Markdown: one row per (architecture, k, mode), mean ± std over seeds."""
    cols = [c for c, _, _ in METRICS + TRAIN_METRICS]
    lines = ["| architecture | k | mode | seeds | " + " | ".join(cols) + " |",
             "|---|---|---|---|" + "---|" * len(cols)]
    for (arch, k, mode), runs in sorted(results.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        cells = [mean_std([r[key] for r in runs if key in r], fmt)
                 for _, key, fmt in METRICS + TRAIN_METRICS]
        lines.append(f"| {arch} | {k} | {mode or 'default'} | {len(runs)} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def pareto_plot(results: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("explained_variance", "explained variance"),
              ("ce_recovered_vs_mean_ablation", "CE recovered (vs mean ablation)"),
              ("kl_sae", "KL(clean ‖ spliced)"))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    lines = sorted({(arch, mode) for arch, _, mode in results})
    for arch, mode in lines:
        pts = sorted((k, runs) for (a, k, m), runs in results.items() if (a, m) == (arch, mode))
        for ax, (key, label) in zip(axes, panels, strict=True):
            xs = [statistics.fmean(r["l0"] for r in runs) for _, runs in pts]
            ys = [statistics.fmean(r[key] for r in runs) for _, runs in pts]
            err = [statistics.stdev(r[key] for r in runs) if len(runs) > 1 else 0
                   for _, runs in pts]
            line = ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3,
                               linestyle="--" if mode else "-",
                               label=arch + (f" ({mode})" if mode else ""))
            # Each seed at its own L0 too: MP's adaptive stopping spreads L0 across seeds.
            seeds = [(r["l0"], r[key]) for _, runs in pts for r in runs]
            ax.scatter(*zip(*seeds, strict=True), s=12, alpha=0.4,
                       color=line.lines[0].get_color())
            ax.set_xscale("log", base=2)
            ax.set_xlabel("L0 (held-out, inference rule)")
            ax.set_ylabel(label)
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title}: mean ± std over seeds (small dots: single seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def density_plot(folders: dict[str, Path], path: Path) -> str:
    """Latent firing densities on the held-out split, one histogram per architecture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 4.5))
    bins = np.logspace(-6, 0, 49)
    lines = []
    for arch, folder in folders.items():
        t = pq.read_table(folder / "features" / "fire_counts.parquet").to_pandas()
        t = t[t.tokens_seen == t.tokens_seen.max()]
        dens = (t.fires / t.tokens_seen).to_numpy()
        ax.hist(np.clip(dens, 1e-6, 1), bins=bins, histtype="step", label=arch, linewidth=1.5)
        lines.append(f"| {arch} | {100 * (dens > 0.01).mean():.1f} | "
                     f"{100 * (dens > 0.1).mean():.1f} | {np.median(dens):.2e} | "
                     f"{dens.max():.3f} |")
    ax.set_xscale("log")
    ax.set_xlabel("latent density (fraction of held-out tokens)")
    ax.set_ylabel("latents")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    head = ["| architecture | % latents >1% | % >10% | median density | max density |",
            "|---|---|---|---|---|"]
    return "\n".join(head + lines)


def machine() -> str:
    import torch

    model, avx = cpu()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return (f"{model}, {' '.join(avx) or 'no AVX-512'}; torch "
            f"{torch.__version__}; commit {commit}; {time.strftime('%Y-%m-%d')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--saes", type=Path, default=None,
                        help="folder for the SAEs (default: <store's folder>/pareto)")
    parser.add_argument("--archs", nargs="+", default=list(ARCHS))
    parser.add_argument("--ks", nargs="+", type=int, default=[16, 32, 64])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--tokens", type=int, default=384_000)
    parser.add_argument("--width", type=int, default=4608)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--dead-window", type=int, default=100_000)
    parser.add_argument("--ce-tokens", type=int, default=4096)
    parser.add_argument("--calib-tokens", type=int, default=8192)
    parser.add_argument("--set", nargs="*", default=[], help="ARCH.FIELD=VALUE, as train --set")
    parser.add_argument("--tag", default="", help="folder and row suffix for a variant")
    parser.add_argument("--figures", type=Path, default=Path("benchmarks/figures"))
    parser.add_argument("--out", type=Path, default=None, help="also write the tables here")
    args = parser.parse_args()
    from saebench.evals.downstream import shared_baselines
    from store.activation_store import open_store
    from store.models import load_model

    saes = args.saes or args.store.parent / "pareto"
    store = open_store(args.store)
    n_heldout = store.n_tokens("heldout")
    model, t0 = None, time.perf_counter()
    results: dict[tuple, list[dict]] = {}
    with shared_baselines():
        for k in args.ks:
            for seed in args.seeds:
                for arch in args.archs:
                    folder = _folder(saes, arch, args.tag, k, seed)
                    train(args, arch, k, seed, folder)
                    if arch in CALIBRATED:
                        calibrate(args, folder, n_heldout)
                    if not (folder / "evals" / "core.json").exists() and model is None:
                        model = load_model(str(store.meta["model"]), "cpu")
                    evaluate(args, folder, model)
                    for mode, m in collect(folder).items():
                        results.setdefault((arch + args.tag, k, mode), []).append(m)
    tag = args.tag or "all"
    args.figures.mkdir(parents=True, exist_ok=True)
    title = f"{store.meta['model']} {store.meta['hook']}, d_sae {args.width}"
    pareto_plot(results, args.figures / f"pareto-{tag}.png", title)
    mid = sorted(args.ks)[len(args.ks) // 2]
    dens = density_plot({a: _folder(saes, a, args.tag, mid, args.seeds[0]) for a in args.archs},
                        args.figures / f"density-{tag}-k{mid}.png")
    text = (f"store {args.store}; d_sae {args.width}; {args.tokens:,} training tokens in "
            f"batches of {args.batch_size}; "
            f"k {args.ks}; seeds {args.seeds}; CE/KL on {args.ce_tokens} held-out tokens; "
            f"{time.perf_counter() - t0:.0f} s this run\n{machine()}\n\n{table(results)}\n\n"
            f"Latent densities at k {mid}, seed {args.seeds[0]}:\n\n{dens}\n")
    print("\n" + text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
