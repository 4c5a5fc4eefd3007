"""Exact matched L0: shift a JumpReLU SAE's thresholds so its inference L0 hits a target.

Batch-coupled SAEs (BatchTopK, mutual and feature choice) train with a batch-level budget and
infer with a threshold EMA, which lands a few percent off k (BENCHMARKS: L0 30.2–30.4 for
k = 32). Comparing them with TopK at k is then not "equal sparsity". After training, we move
every threshold by one common shift δ, θ_i ← θ_i + δ, chosen on held-out activations so that

    mean over tokens of #{i : pre_i > 0 and pre_i > θ_i + δ} = target L0.

The count falls as δ rises, and it is the number of (token, latent) margins pre − θ above δ
among positive pre-activations; so δ is the midpoint between the n-th and (n+1)-th largest
margin, n = round(target · tokens): exact on the calibration tokens, not a bisection. One
shift keeps a global threshold global (BatchTopK, mutual choice) and keeps feature choice's
per-latent thresholds in the same order relative to each other.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from store.errors import UserError


@dataclass(frozen=True)
class Calibration:
    """The outcome of one calibration."""

    shift: float
    """δ, added to every threshold."""
    l0_before: float
    """Mean L0 on the calibration tokens with the old thresholds."""
    l0_after: float
    """The same with the new thresholds (the target, up to ties)."""
    n_tokens: int
    """Calibration tokens."""


def _margins(pre: Float[Tensor, "tokens d_sae"], threshold: Tensor) -> Tensor:
    # Only positive pre-activations can fire (codes are ReLU(pre)·[pre > θ]).
    return (pre - threshold)[pre > 0].float()


@torch.no_grad()
def l0_shift(
    pre_batches: Iterable[Float[Tensor, "tokens d_sae"]], threshold: Tensor, target_l0: float
) -> Calibration:
    """The common threshold shift δ that gives mean L0 `target_l0` over `pre_batches`."""
    kept, n_tokens = [], 0
    for pre in pre_batches:
        kept.append(_margins(pre, threshold).cpu())
        n_tokens += pre.shape[0]
    if n_tokens == 0:
        raise UserError("calibration needs at least one held-out token")
    margins = torch.cat(kept)
    n = round(target_l0 * n_tokens)
    if not 0 < n < margins.numel():
        raise UserError(f"target L0 {target_l0} is out of reach: {margins.numel() / n_tokens:.2f} "
                        "latents per token have a positive pre-activation")
    top = margins.topk(n + 1).values  # sorted, largest first
    shift = float((top[n - 1] + top[n]) / 2)
    return Calibration(shift=shift, l0_before=float((margins > 0).sum()) / n_tokens,
                       l0_after=float((margins > shift).sum()) / n_tokens, n_tokens=n_tokens)


@torch.no_grad()
def measure_l0(pre_batches: Iterable[Tensor], threshold: Tensor) -> float:
    """Mean L0 of ReLU(pre)·[pre > threshold] over the batches."""
    fired, n_tokens = 0, 0
    for pre in pre_batches:
        fired += int(((pre > 0) & (pre > threshold)).sum())
        n_tokens += pre.shape[0]
    return fired / max(n_tokens, 1)
