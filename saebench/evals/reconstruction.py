"""Reconstruction metrics as a streaming accumulator over batches: no model, no I/O.

Definitions (DESIGN.md §5, binding):
- L0: mean number of nonzero codes per token (nonzero, not positive, so signed codes such as
  matching pursuit's coefficients count as used).
- MSE: E‖x - x̂‖², summed over d_in and averaged over tokens (SAELens's convention too).
- Explained variance: 1 - E‖x - x̂‖² / E‖x - E[x]‖² over the whole eval set, never averaged
  per token or per batch; FVU = 1 - explained variance.
- cosine: mean over tokens of cos(x, x̂); a zero vector has cosine 0 (torch's eps clamp).
- Relative reconstruction bias: E‖x̂‖² / E⟨x, x̂⟩ (Rajamanoharan et al. 2024, "Improving
  Dictionary Learning with Gated SAEs", eq. 10): 1 when unbiased, below 1 under shrinkage.
- L1: mean over tokens of Σ|codes| (abs, so signed codes cannot cancel; SAELens's `l1`).
- L2 norms and ratio: mean ‖x‖, mean ‖x̂‖ and mean per-token ‖x̂‖/‖x‖ (SAELens's and SAEBench
  core's `l2_norm_in`, `l2_norm_out`, `l2_ratio`; as there, a ‖x‖ below 1e-4 divides by 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor


class ReconstructionStats:
    """Running float64 sums from which every reconstruction metric is exact at the end."""

    def __init__(self, d_in: int):
        self.d_in = d_in
        self.n = 0
        # Sums of x - shift rather than x: the total variance is E‖x-c‖² - ‖E[x]-c‖², a
        # difference of two nearly equal numbers when activations have a large mean (the
        # residual stream does); centring on the first batch's mean removes most of it.
        self.shift: Tensor | None = None
        self.sum_dev = torch.zeros(d_in, dtype=torch.float64)
        self.sum_dev_sq = 0.0
        self.sum_err_sq = 0.0
        self.sum_l0 = 0.0
        self.sum_cos = 0.0
        self.sum_xhat_sq = 0.0
        self.sum_x_dot_xhat = 0.0
        self.sum_l1 = 0.0
        self.sum_norm_in = 0.0
        self.sum_norm_out = 0.0
        self.sum_l2_ratio = 0.0

    @torch.no_grad()
    def update(
        self,
        x: Float[Tensor, "tokens d_in"],
        x_hat: Float[Tensor, "tokens d_in"],
        codes: Float[Tensor, "tokens d_sae"],
    ) -> None:
        """Add one batch; any float dtype, any device (sums are kept on the CPU in float64)."""
        x, x_hat = x.double(), x_hat.double()
        if self.shift is None:
            self.shift = x.mean(dim=0)
        dev = x - self.shift.to(x.device)
        self.n += x.shape[0]
        self.sum_dev += dev.sum(dim=0).cpu()
        self.sum_dev_sq += float(dev.pow(2).sum())
        self.sum_err_sq += float((x - x_hat).pow(2).sum())
        self.sum_l0 += float((codes != 0).sum())
        self.sum_cos += float(F.cosine_similarity(x, x_hat, dim=-1).sum())
        self.sum_xhat_sq += float(x_hat.pow(2).sum())
        self.sum_x_dot_xhat += float((x * x_hat).sum())
        self.sum_l1 += float(codes.abs().sum())
        norm_in, norm_out = x.norm(dim=-1), x_hat.norm(dim=-1)
        self.sum_norm_in += float(norm_in.sum())
        self.sum_norm_out += float(norm_out.sum())
        self.sum_l2_ratio += float((norm_out / torch.where(norm_in < 1e-4, 1.0, norm_in)).sum())

    def total_variance(self) -> float:
        """E‖x - E[x]‖², summed over dimensions (population variance, divided by n)."""
        mean_dev = self.sum_dev / self.n
        return self.sum_dev_sq / self.n - float(mean_dev.pow(2).sum())

    def compute(self) -> dict[str, float]:
        """The metrics; NaN where a denominator is zero (e.g. constant activations)."""
        if self.n == 0:
            raise ValueError("no tokens were added")
        mse = self.sum_err_sq / self.n
        var = self.total_variance()
        ev = 1.0 - mse / var if var > 0 else math.nan
        bias = self.sum_xhat_sq / self.sum_x_dot_xhat if self.sum_x_dot_xhat != 0 else math.nan
        return {
            "n_tokens": float(self.n),
            "l0": self.sum_l0 / self.n,
            "mse": mse,
            "explained_variance": ev,
            "fvu": 1.0 - ev,
            "cosine_sim": self.sum_cos / self.n,
            "relative_reconstruction_bias": bias,
            "total_variance": var,
            "l1": self.sum_l1 / self.n,
            "l2_norm_in": self.sum_norm_in / self.n,
            "l2_norm_out": self.sum_norm_out / self.n,
            "l2_ratio": self.sum_l2_ratio / self.n,
        }
