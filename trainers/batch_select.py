"""Batch-coupled selection: allocate a budget of k·B token-latent matches over a whole batch.

BatchTopK (Bussmann et al. 2024) and mutual choice (Ayonrinde 2024, §3) keep the top k·B
pre-activations of the flattened [tokens, d_sae] matrix; feature choice (Ayonrinde 2024, §3)
also caps each latent at m tokens. Training is then coupled across the batch, so each selector
keeps a threshold EMA (a buffer) that becomes its batch-independent inference rule:
codes = ReLU(pre)·[pre > θ], SAELens's `jumprelu`.

The selection comes back as CSR rows (flat latent ids sorted by token, plus offsets), the form
that trainers/sparse.py's kernels take, so a step costs what a TopK step with the same number
of nonzeros costs (measured 0.95-1.05x at d_in 576, d_sae 4608, batch 2048, one CPU thread; a
dense masked decode costs 4x, padding each token to the busiest token's count 1.3-1.4x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from store.errors import UserError
from trainers import distributed
from trainers.distributed import SINGLE, World, global_cut
from trainers.protocol import LossOut
from trainers.sparse import decode_rows, selected_pre
from trainers.topk import TopKConfig, TopKSAE, _fvu


@dataclass
class Selection:
    """Chosen (token, latent) pairs in CSR order, and the threshold this batch implies."""

    feat: Int[Tensor, " nnz"]
    """Latent ids, grouped by token in token order."""
    vals: Float[Tensor, " nnz"]
    """Their pre-activations (no grad)."""
    offsets: Int[Tensor, " tokens"]
    """Where each token's run starts in `feat`."""
    theta: Tensor
    """The observed cut: a scalar (global) or [d_sae] (per latent)."""


def to_csr(
    tok: Int[Tensor, " nnz"], feat: Int[Tensor, " nnz"], vals: Float[Tensor, " nnz"], n_tokens: int
) -> tuple[Int[Tensor, " nnz"], Float[Tensor, " nnz"], Int[Tensor, " tokens"]]:
    """Sort (token, latent, value) triples by token: (latent ids, values, offsets)."""
    order = tok.argsort()
    counts = torch.bincount(tok, minlength=n_tokens)
    return feat[order], vals[order], torch.cumsum(counts, 0) - counts


def flat_topk(
    pre: Float[Tensor, "tokens d_sae"], n: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The n largest entries of `pre` overall: (token ids, latent ids, values, the n-th value).

    A topk over all tokens·d_sae entries is 5x slower on CPU than TopK's per-token topk. So we
    estimate a lower bound g from an even sample of 64k entries (aiming at 1.25·n entries ≥ g),
    and take the top n of the entries ≥ g. That is exact whenever at least n entries pass,
    which a miss of 5 standard deviations would prevent; then we fall back to the full topk.
    """
    flat = pre.reshape(-1)
    total, d_sae = flat.numel(), pre.shape[1]
    step = max(1, total // 65536)
    while math.gcd(step, d_sae) != 1:  # a stride sharing a factor with d_sae skips latents
        step += 1
    sample = flat[::step]
    n_sample = math.ceil(1.25 * n * sample.numel() / total) + 8
    cand = None
    if n_sample < sample.numel():
        g = sample.topk(n_sample, sorted=False).values.min()
        cand = (flat >= g).nonzero().squeeze(1)
        if cand.numel() < n:
            cand = None
    top = (flat if cand is None else flat[cand]).topk(n, sorted=False)
    ids = top.indices if cand is None else cand[top.indices]
    return ids // d_sae, ids % d_sae, top.values, top.values.min()


def global_flat_topk(
    pre: Float[Tensor, "tokens d_sae"], n: int, world: World
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """flat_topk's n largest over the global batch (every rank's slice), this rank's share.

    A rank's entries among the global top n are among its own top n, so each rank offers
    those and `global_cut` finds the global n-th value from them (one gather of n values per
    rank)."""
    if world.size == 1:
        return flat_topk(pre, n)
    tok, feat, vals, _ = flat_topk(pre, min(n, pre.numel()))
    keep, cut, _ = global_cut(vals[:, None], torch.tensor([n], device=pre.device), world)
    keep = keep.squeeze(1)
    return tok[keep], feat[keep], vals[keep], cut.squeeze(0)


def ema_(buf: Tensor, steps: Tensor, value: Tensor, decay: float) -> None:
    """buf ← running mean of `value` for the first 1/(1−decay) updates, an EMA after that.

    The running mean is the estimator of Bussmann et al. 2024 (§3: θ is the average over
    batches of the smallest kept activation); switching to an EMA lets θ follow the weights as
    they train. No host sync: the weight is computed on the device.
    """
    weight = (1.0 / (steps.float() + 1)).clamp_min(1 - decay)
    buf.lerp_(value.to(buf.dtype), weight)
    steps.add_(1)


def check_decay(name: str, value: float) -> None:
    """A one-line error unless 0 ≤ value < 1."""
    if not 0 <= value < 1:
        raise UserError(f"{name} ({value}) must be in [0, 1)")


class BatchCoupledSAE(TopKSAE):
    """TopK's parameters, init and decoder constraint, with a batch-level allocation.

    Subclasses give `_allocate(x_c, world)` (the training-time selection) and `_aux(...)` (the
    dead/under-used latents' loss). Inference is JumpReLU at the `threshold` buffer, which
    state_dict (hence checkpoints) carries.
    """

    def __init__(self, d_in: int, cfg: Any, *, generator: torch.Generator | None = None,
                 per_feature: bool = False) -> None:
        # k_aux is TopK's AuxK width; configs without one get TopK's default (d_in // 2).
        topk_cfg = TopKConfig(d_sae=cfg.d_sae, k=cfg.k, k_aux=getattr(cfg, "k_aux", None))
        super().__init__(d_in, topk_cfg, generator=generator)
        self.cfg = cfg
        self.register_buffer("threshold", torch.zeros(cfg.d_sae if per_feature else ()))
        self.register_buffer("threshold_steps", torch.zeros((), dtype=torch.int64))

    def _allocate(self, x_c: Tensor, world: World = SINGLE) -> Selection:
        """The training-time selection over the global batch (this rank's slice is x_c)."""
        raise NotImplementedError

    def _aux(self, x_c: Tensor, e: Tensor, ctx: Any, sel: Selection) -> tuple[str, Tensor | None]:
        raise NotImplementedError

    def encode(self, x: Float[Tensor, "tokens d_in"]) -> Float[Tensor, "tokens d_sae"]:
        """JumpReLU at the calibrated threshold: independent of the other tokens."""
        pre = self._pre(x.float() - self.b_dec).float()
        return torch.where(pre > self.threshold, pre.relu(), 0.0)

    def encode_sparse(
        self, x: Float[Tensor, "tokens d_in"]
    ) -> tuple[Float[Tensor, "tokens m"], Int[Tensor, "tokens m"]]:
        """`encode`'s nonzeros, zero-padded to the busiest token's count."""
        codes = self.encode(x)
        width = max(1, int((codes > 0).sum(1).max()))
        return codes.topk(width, dim=1, sorted=False)

    def forward(self, x: Float[Tensor, "tokens d_in"]) -> Float[Tensor, "tokens d_in"]:
        return self.decode(self.encode(x))

    def loss(self, x: Float[Tensor, "tokens d_in"], ctx: Any = None) -> LossOut:
        """Normalised MSE over the batch-level selection, plus the architecture's aux loss."""
        x = x.float()
        x_c = x - self.b_dec
        world = distributed.of(ctx)
        with torch.no_grad():
            sel = self._allocate(x_c, world)
            if self.training:  # like BatchNorm: calibration moves only while training
                ema_(self.threshold, self.threshold_steps, sel.theta, self.cfg.threshold_decay)
        vals = selected_pre(x_c, self.W_enc, self.b_enc, sel.feat, sel.vals, sel.offsets).relu()
        x_hat = decode_rows(sel.feat, vals, self.W_dec, sel.offsets) + self.b_dec
        fvu = _fvu(x, x_hat, world)
        total, parts = fvu, {"fvu": fvu.detach()}
        name, aux = self._aux(x_c, (x - x_hat).detach(), ctx, sel)
        if aux is not None:
            total = fvu + self.cfg.aux_coef * aux
            parts[name] = aux.detach()
        counts = torch.diff(sel.offsets, append=sel.offsets.new_tensor([sel.feat.numel()]))
        rows = torch.arange(x.shape[0], device=x.device).repeat_interleave(counts)
        codes = torch.sparse_coo_tensor(
            torch.stack([rows, sel.feat]), vals.detach(), (x.shape[0], self.d_sae),
            check_invariants=False,
        )
        return LossOut(total=total, parts=parts, codes=codes)

    def _batch_topk(self, x_c: Tensor, world: World = SINGLE) -> Selection:
        """The k·B largest pre-activations of the global batch (BatchTopK and mutual choice)."""
        n = self.k * x_c.shape[0] * world.size
        tok, feat, vals, cut = global_flat_topk(self._pre(x_c), n, world)
        # The smallest kept *positive* activation is θ (Bussmann et al. 2024, §3). A cut ≤ 0
        # means fewer than k·B entries were positive, and θ = 0 then keeps what training kept.
        return Selection(*to_csr(tok, feat, vals, x_c.shape[0]), cut.float().clamp_min(0))

    @torch.no_grad()
    def export_saelens(self, scale: float) -> tuple[str, dict, dict[str, Tensor]]:
        """SAELens `jumprelu` in raw units (SAELens saves its own BatchTopK the same way).

        pre-activations scale with the input, so θ divides by `scale` like b_enc (see
        TopKSAE.export_saelens); a global θ is broadcast to every latent.
        """
        _, _, tensors = super().export_saelens(scale)
        theta = self.threshold.float().expand(self.d_sae) / scale
        return "jumprelu", {}, {**tensors, "threshold": theta.contiguous().clone()}
