"""Streaming ridge regression of targets on an affine map of x, and its held-out score.

Used by the dark-matter eval (Engels, Riggs & Tegmark 2024, arXiv 2410.14670, which regresses
the SAE error, and its norm, on the activation x with a linear map). The fit keeps float64
moment sums, so any number of batches costs one [d_in, d_in] and one [d_in, d_out] matrix;
the intercept is ours (an affine map absorbs a constant error such as a b_dec offset, which a
purely linear map would have to fake through the mean of x).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor


@dataclass(frozen=True)
class AffineMap:
    """targets ≈ x W + b, fitted by ridge regression."""

    W: Float[Tensor, "d_in d_out"]
    b: Float[Tensor, " d_out"]

    def predict(self, x: Float[Tensor, "tokens d_in"]) -> Float[Tensor, "tokens d_out"]:
        return x.double().cpu() @ self.W + self.b


class MomentSums:
    """First and second moments of (x, targets), shifted by the first batch's means."""

    def __init__(self, d_in: int, d_out: int):
        self.n = 0
        # Shifting by the first batch's mean keeps E[xxᵀ] - E[x]E[x]ᵀ from cancelling badly:
        # the residual stream has a large mean (DESIGN §5 uses the same trick).
        self.shift_x: Tensor | None = None
        self.shift_t: Tensor | None = None
        self.sx = torch.zeros(d_in, dtype=torch.float64)
        self.st = torch.zeros(d_out, dtype=torch.float64)
        self.sxx = torch.zeros(d_in, d_in, dtype=torch.float64)
        self.sxt = torch.zeros(d_in, d_out, dtype=torch.float64)

    def update(
        self, x: Float[Tensor, "tokens d_in"], targets: Float[Tensor, "tokens d_out"]
    ) -> None:
        x, targets = x.double().cpu(), targets.double().cpu()
        if self.shift_x is None:
            self.shift_x, self.shift_t = x.mean(0), targets.mean(0)
        dx, dt = x - self.shift_x, targets - self.shift_t
        self.n += x.shape[0]
        self.sx += dx.sum(0)
        self.st += dt.sum(0)
        self.sxx += dx.T @ dx
        self.sxt += dx.T @ dt

    def solve(self, ridge: float) -> AffineMap:
        """Ridge solution; the penalty is `ridge` times the mean variance of a coordinate of x,
        and the intercept is unpenalised (it is the means' difference after centring)."""
        assert self.n > 0 and self.shift_x is not None and self.shift_t is not None
        mx, mt = self.sx / self.n, self.st / self.n
        cxx = self.sxx / self.n - torch.outer(mx, mx)
        cxt = self.sxt / self.n - torch.outer(mx, mt)
        lam = ridge * float(cxx.diagonal().mean().clamp_min(1e-30))
        eye = torch.eye(cxx.shape[0], dtype=torch.float64)
        W = torch.linalg.solve(cxx + lam * eye, cxt)
        b = (mt + self.shift_t) - (mx + self.shift_x) @ W
        return AffineMap(W=W, b=b)


class HeldOutScore:
    """Per-target-column sums on held-out tokens: residual of a map, energy, mean."""

    def __init__(self, d_out: int):
        self.n = 0
        self.resid = torch.zeros(d_out, dtype=torch.float64)
        self.sum = torch.zeros(d_out, dtype=torch.float64)
        self.sq = torch.zeros(d_out, dtype=torch.float64)

    def update(
        self, targets: Float[Tensor, "tokens d_out"], pred: Float[Tensor, "tokens d_out"]
    ) -> None:
        targets = targets.double().cpu()
        self.n += targets.shape[0]
        self.resid += (targets - pred.double().cpu()).pow(2).sum(0)
        self.sum += targets.sum(0)
        self.sq += targets.pow(2).sum(0)

    def group(self, cols: slice) -> dict[str, float]:
        """Summed over the columns in `cols`: mean residual, mean energy, mean centred energy
        (each per token), so 1 - resid/energy and 1 - resid/centred are the two R²s."""
        resid = float(self.resid[cols].sum()) / self.n
        energy = float(self.sq[cols].sum()) / self.n
        centred = energy - float((self.sum[cols] / self.n).pow(2).sum())
        return {"resid": resid, "energy": energy, "centred": centred}
