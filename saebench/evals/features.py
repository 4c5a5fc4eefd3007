"""Per-latent fire counts over nested token windows, and decoder-row similarity.

Fire counts are stored rather than conclusions: a row (latent, tokens_seen, fires) says "in
the first `tokens_seen` eval tokens this latent fired `fires` times". Counts are snapshotted
at nested windows (powers of ten, the dead window, and all tokens), so "dead in the first N
tokens" and "dense over N tokens" are one SQL filter for any stored N (DESIGN.md §5), e.g.:

    SELECT sae, tokens_seen, 100 * avg((fires = 0)::DOUBLE) AS pct_dead,
           100 * avg((fires > 0.01 * tokens_seen)::DOUBLE) AS pct_dense_1pct
    FROM feature_counts GROUP BY sae, tokens_seen ORDER BY sae, tokens_seen

A code counts as firing when it is nonzero (so fires / tokens_seen summed over latents is L0).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

DENSITY_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
DENSE_THRESHOLDS = {"1pct": 0.01, "10pct": 0.1}  # DESIGN.md §5: more than 1%, and than 10%
ENCODER_COLUMNS = ("encoder_norm", "encoder_bias", "enc_dec_cos", "max_enc_cos")


def count_windows(total: int, dead_window: int, smallest: int = 1000) -> list[int]:
    """Window sizes at which counts are kept: 10^3, 10^4, ... below `total`, the dead window
    if it is below `total`, and `total` itself."""
    windows = {total}
    size = smallest
    while size < total:
        windows.add(size)
        size *= 10
    if dead_window < total:
        windows.add(dead_window)
    return sorted(windows)


class FireCounter:
    """Counts tokens on which each latent's code is nonzero, snapshotting at fixed windows."""

    def __init__(self, d_sae: int, windows: list[int]):
        self.fires = torch.zeros(d_sae, dtype=torch.int64)
        self.seen = 0
        self.pending = sorted(windows)
        self.snapshots: dict[int, Tensor] = {}

    @torch.no_grad()
    def update(self, codes: Float[Tensor, "tokens d_sae"]) -> None:
        """Add one batch, split at any window boundary that falls inside it."""
        start = 0
        while start < codes.shape[0]:
            end = codes.shape[0]
            if self.pending and self.pending[0] < self.seen + end - start:
                end = start + self.pending[0] - self.seen
            self.fires += (codes[start:end] != 0).sum(dim=0).cpu()
            self.seen += end - start
            start = end
            while self.pending and self.pending[0] <= self.seen:
                self.snapshots[self.pending.pop(0)] = self.fires.clone()

    def window(self, tokens: int) -> Tensor:
        """Fire counts over the first `tokens` tokens (a stored window, or all seen)."""
        return self.fires if tokens >= self.seen else self.snapshots[tokens]


@torch.no_grad()
def decoder_max_cos(
    W_dec: Float[Tensor, "d_sae d_in"], block: int = 2048
) -> Float[Tensor, " d_sae"]:
    """Each latent's largest cosine similarity to any *other* decoder row (signed: an
    antipodal pair is not a duplicate). Computed in row blocks, so memory is O(block·d_sae)."""
    W = F.normalize(W_dec.detach().float(), dim=-1)  # zero rows stay zero: cosine 0
    d_sae = W.shape[0]
    out = torch.full((d_sae,), math.nan)
    if d_sae < 2:
        return out
    for lo in range(0, d_sae, block):
        sims = W[lo : lo + block] @ W.T
        rows = torch.arange(sims.shape[0], device=sims.device)
        sims[rows, rows + lo] = -math.inf
        out[lo : lo + block] = sims.max(dim=-1).values.cpu()
    return out


@torch.no_grad()
def encoder_stats(sae) -> dict[str, Tensor] | None:
    """Per-latent encoder statistics of SAEBench core's per-feature table (from SAELens's
    `get_featurewise_weight_based_metrics`): the encoder row's norm, its bias, its cosine with
    the latent's decoder row, and its largest cosine with another latent's encoder row.
    None for architectures without an encoder (matching pursuit codes by greedy search)."""
    W_enc = getattr(sae, "W_enc", None)
    if not isinstance(W_enc, Tensor):
        return None
    enc = W_enc.detach().float().T  # [d_sae, d_in]: latent i's encoder direction
    b_enc = getattr(sae, "b_enc", None)
    bias = b_enc.detach().float().cpu() if isinstance(b_enc, Tensor) else None
    return {
        "encoder_norm": enc.norm(dim=-1).cpu(),
        "encoder_bias": torch.full((enc.shape[0],), math.nan) if bias is None else bias,
        "enc_dec_cos": F.cosine_similarity(enc, sae.W_dec.detach().float(), dim=-1).cpu(),
        "max_enc_cos": decoder_max_cos(enc),  # the same chunked max, over encoder rows
    }


def encoder_metrics(enc: dict[str, Tensor] | None) -> dict[str, float]:
    """Means over latents of the encoder statistics (empty without an encoder)."""
    if enc is None:
        return {}
    out = {}
    for name in ("enc_dec_cos", "max_enc_cos", "encoder_norm"):
        finite = enc[name][~enc[name].isnan()]
        out[f"{name}_mean"] = float(finite.mean()) if finite.numel() else math.nan
    return out


def feature_metrics(counter: FireCounter, dead_window: int, max_cos: Tensor) -> dict[str, float]:
    """Dead and dense percentages, log10 density quantiles and max-cosine summaries."""
    total = counter.seen
    window = min(dead_window, total)
    dead = counter.window(window) == 0
    density = counter.fires.double() / max(total, 1)
    metrics = {
        "dead_window_tokens": float(window),
        "pct_dead": 100.0 * float(dead.double().mean()),
    }
    for name, threshold in DENSE_THRESHOLDS.items():
        metrics[f"pct_dense_{name}"] = 100.0 * float((density > threshold).double().mean())
    # Quantiles over latents that fired at all: a dead latent's log-density is -inf, and it
    # is already counted by pct_dead.
    alive = density[density > 0].numpy()
    for q in DENSITY_QUANTILES:
        value = float(np.quantile(np.log10(alive), q)) if alive.size else math.nan
        metrics[f"log10_density_p{round(q * 100):02d}"] = value
    finite = max_cos[~max_cos.isnan()].numpy()
    metrics["max_cos_mean"] = float(finite.mean()) if finite.size else math.nan
    metrics["max_cos_p90"] = float(np.quantile(finite, 0.9)) if finite.size else math.nan
    return metrics


def fire_count_table(
    counter: FireCounter, max_cos: Tensor, enc: dict[str, Tensor] | None = None
) -> dict[str, np.ndarray]:
    """Columns of `features/fire_counts.parquet`: one row per (latent, window); the weight
    statistics repeat on every window's row (NaN where the SAE has no encoder)."""
    windows = sorted({*counter.snapshots, counter.seen})
    d_sae = counter.fires.shape[0]
    fires = torch.stack([counter.window(w) for w in windows])  # [n_windows, d_sae]
    per_latent = {"max_cos": max_cos}
    for name in ENCODER_COLUMNS:
        per_latent[name] = torch.full((d_sae,), math.nan) if enc is None else enc[name]
    return {
        "latent": np.tile(np.arange(d_sae, dtype=np.int32), len(windows)),
        "tokens_seen": np.repeat(np.array(windows, dtype=np.int64), d_sae),
        "fires": fires.reshape(-1).numpy().astype(np.int64),
    } | {
        name: np.tile(v.numpy().astype(np.float32), len(windows)) for name, v in per_latent.items()
    }
