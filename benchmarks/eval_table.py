"""SAEBench's metrics across the six architectures: one table, with the time each eval took.

    .venv/bin/python benchmarks/eval_table.py --store runs/p/store.duckdb \\
        --saes runs/p/pareto/{topk,batchtopk,mutual_choice,feature_choice,gsae,mp-bias}-k32-s0 \\
        --evals meta_structure mdl autointerp

Each eval runs in this process through the same `run_evals` as `saebench eval` (so each SAE
folder gets its evals/*.json, catalog rows and SAEBench-schema files), timed per SAE. The
table reports each eval's headline metric, as named in its module, and the seconds it took;
an eval that skips (absorption's gates) shows its one-line reason. Setup that later SAEs reuse
(sparse probing's eval stores) shows up as a longer first row.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch

from saebench.commands.eval import Args
from saebench.evals.runner import open_context, run_evals

HEADLINE = {
    "core": ("l0", "explained_variance", "l2_ratio", "ce_recovered_vs_mean_ablation"),
    "meta_structure": ("decoder_fraction_variance_explained",),
    "mdl": ("description_length_bits", "num_bins"),
    "autointerp": ("lexical_detection_accuracy", "all_silent_accuracy"),
    "sparse_probing": ("llm_test_accuracy", "sae_top_1_test_accuracy",
                       "sae_top_5_test_accuracy"),
    "absorption": ("mean_absorption_fraction_score", "mean_full_absorption_score"),
    "scr": ("scr_metric_threshold_2", "scr_metric_threshold_20"),
    "tpp": ("tpp_threshold_2_total_metric", "tpp_threshold_20_total_metric"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--saes", type=Path, nargs="+", required=True)
    p.add_argument("--evals", nargs="+", default=["meta_structure", "mdl", "autointerp"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--probing-datasets", nargs="*", default=None,
                   help="sparse_probing datasets (default: the eval's own set)")
    p.add_argument("--probing-n", type=int, nargs=2, default=None, metavar=("TRAIN", "TEST"),
                   help="sparse_probing texts per dataset (default: the eval's)")
    args = p.parse_args()
    defaults = Args(sae=args.saes[0])
    configs = {name: getattr(defaults, name) for name in args.evals}
    if "sparse_probing" in configs:
        probing = configs["sparse_probing"]
        if args.probing_datasets:
            probing = replace(probing, datasets=tuple(args.probing_datasets))
        if args.probing_n:
            probing = replace(probing, n_train=args.probing_n[0], n_test=args.probing_n[1])
        configs["sparse_probing"] = probing
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, store {args.store}")
    rows = []
    for sae in args.saes:
        ctx = open_context(sae, args.store, args.device)
        for name in args.evals:
            t0 = time.perf_counter()
            result = run_evals(ctx, sae, (name,), configs, echo=lambda _: None)[name]
            seconds = time.perf_counter() - t0
            shown = {k: result.metrics.get(k) for k in HEADLINE.get(name, ())}
            note = result.notes.get("skipped", "") if result.metrics.get("skipped") else ""
            rows.append((sae.name, name, shown, seconds, note))
            print(f"{sae.name} {name}: {seconds:.1f} s {shown} {note}", flush=True)
    print("\n| SAE | eval | headline metrics | seconds |\n|---|---|---|---|")
    for sae, name, shown, seconds, note in rows:
        text = note or ", ".join(f"{k} {v:.4g}" for k, v in shown.items() if v is not None)
        print(f"| {sae} | {name} | {text} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
