"""Sparse probing (SAEBench `sparse_probing`): can k latents linearly read off a text's label?

Per dataset: the texts' activations at the SAE's hook come from an eval store
(store/eval_store.py), built by one model pass on first use and reused by every later SAE.
The SAE encodes every kept token; codes are mean-pooled per text, as SAEBench does. Then
saebench/evals/probing.py trains the probes: top-k latents by class-mean difference for each
k, plus two baselines, all SAE latents and the mean-pooled residual stream itself ("llm").

Metrics: `<dataset>/<probe>` per dataset and `<probe>` averaged over datasets, where probe is
llm_test_accuracy, llm_top_{k}_test_accuracy, sae_test_accuracy, sae_top_{k}_test_accuracy.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from saebench.evals.context import EvalContext, EvalResult
from saebench.evals.probing import binary_tasks, probe_features
from saebench.evals.sparse_probing_config import SparseProbingConfig
from store import eval_store, probe_datasets
from store.errors import UserError


def resolve_datasets(cfg: SparseProbingConfig) -> tuple[list[str], str]:
    """The datasets that can run now (the corpus sets stand in without the wheel), and a note
    on any skipped."""
    return probe_datasets.resolve("sparse_probing", cfg.datasets, list(probe_datasets.CORPUS_SETS))


def store_dir(ctx: EvalContext, cfg: SparseProbingConfig) -> Path:
    if cfg.store_dir is not None:
        return Path(cfg.store_dir)
    if not ctx.store_path or "://" in ctx.store_path:
        raise UserError("sparse_probing: pass --sparse-probing.store-dir (no local workspace)")
    return Path(ctx.store_path).parent / "eval_stores"


def check(ctx: EvalContext, cfg: SparseProbingConfig) -> None:
    """Validate the inputs cheaply, before any eval runs."""
    resolve_datasets(cfg)
    store_dir(ctx, cfg)


def eval_store_for(ctx: EvalContext, cfg: SparseProbingConfig, name: str) -> Path:
    """The dataset's eval store at the SAE's hook, built (one model pass) unless it exists."""
    data = probe_datasets.probe_set(name, cfg.n_train, cfg.n_test, cfg.seed)
    model_name = str(ctx.store.meta["model"])
    path = eval_store.store_path(store_dir(ctx, cfg), name, model_name, ctx.hook,
                                 eval_store.fingerprint(data.texts, data.labels, data.splits))

    def load_model():
        print(f"sparse_probing: building {path} ({len(data.texts)} texts)", file=sys.stderr)
        return ctx.model()

    eval_store.build(path, data.texts, data.labels, data.splits, load_model, model_name,
                     ctx.hook, cfg.max_tokens, cfg.batch_texts)
    return path


@runtime_checkable
class TokenSource(Protocol):
    """What `sae_mean_codes` reads: EvalStoreReader, or an in-memory stand-in in tests."""

    def iter_token_acts(self, batch_texts: int) -> Iterator[tuple[torch.Tensor, np.ndarray]]: ...


@torch.inference_mode()
def sae_mean_codes(ctx: EvalContext, reader: TokenSource, batch_texts: int) -> np.ndarray:
    """[n_texts, d_sae]: each text's SAE codes averaged over its kept tokens (as SAEBench)."""
    out = []
    for x, lengths in reader.iter_token_acts(batch_texts):
        codes = ctx.sae.encode(x.to(ctx.device, ctx.sae_dtype())).float()
        owner = torch.repeat_interleave(torch.arange(len(lengths)), torch.from_numpy(lengths))
        sums = torch.zeros(len(lengths), codes.shape[1], device=codes.device)
        sums.index_add_(0, owner.to(codes.device), codes)
        counts = torch.from_numpy(np.maximum(lengths, 1)).to(codes.device)[:, None]
        out.append((sums / counts).cpu().numpy())
    return np.concatenate(out)


def probe_dataset(
    resid: np.ndarray, codes: np.ndarray, labels: np.ndarray, splits: np.ndarray,
    cfg: SparseProbingConfig,
) -> dict[str, float]:
    """Every probe on one dataset's mean-pooled features (no model: tests call this directly)."""
    tasks = binary_tasks(labels, splits, cfg.seed)
    llm = probe_features(resid, tasks, cfg.k_values, "llm", seed=cfg.seed)
    return llm | probe_features(codes, tasks, cfg.k_values, "sae", seed=cfg.seed)


def run(ctx: EvalContext, cfg: SparseProbingConfig) -> EvalResult:
    """Probe every dataset; per-dataset and averaged test accuracies."""
    names, skipped = resolve_datasets(cfg)
    if skipped:
        print(f"sparse_probing: {skipped}", file=sys.stderr)
    metrics: dict[str, float] = {}
    per_dataset = []
    for name in names:
        reader = eval_store.EvalStoreReader(eval_store_for(ctx, cfg, name))
        try:
            if reader.d_in != ctx.sae.d_in:
                raise UserError(f"{reader.path} holds d_in {reader.d_in}, the SAE {ctx.sae.d_in}")
            table = reader.labels()
            found = probe_dataset(reader.mean_acts(), sae_mean_codes(ctx, reader, cfg.batch_texts),
                                  table["label"], table["split"], cfg)
        finally:
            reader.close()
        per_dataset.append(found)
        metrics |= {f"{name}/{k}": v for k, v in found.items()}
    for key in per_dataset[0]:
        metrics[key] = float(np.mean([d[key] for d in per_dataset]))
    notes = {
        "datasets": ", ".join(names),
        "pooling": "SAE codes and residual vectors mean-pooled over each text's tokens, BOS, "
                   "EOS and PAD excluded (SAEBench's mask)",
        "tasks": "multi-class sets: one balanced one-vs-rest task per class, accuracy averaged",
        "probes": "logistic regression; top-k by |class-mean difference| on the train split; "
                  "full-width baselines on standardised features",
        "sizes": f"up to {cfg.n_train} train + {cfg.n_test} test texts per dataset, "
                 f"<= {cfg.max_tokens} tokens each",
    }
    if skipped:
        notes["skipped"] = skipped
    return EvalResult(metrics=metrics, notes=notes)
