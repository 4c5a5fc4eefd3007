"""Train-time reconstructions with gradients, for losses computed outside the SAE (e2e).

An architecture's `loss(x, ctx)` builds its reconstruction x̂ internally and returns only the
local loss. End-to-end training (Braun et al. 2024, arXiv 2405.12241) needs x̂ itself, with
gradients, to splice into the model. This module reproduces each architecture's
training-time selection (not its inference rule) so that any architecture's sparsity
mechanism can stand in for the paper's L1 penalty:
- TopK and g-SAE: the per-token top k (`_select`; g-SAE falls back to plain TopK when no
  gradient is in the context, which is the case in e2e training: ours);
- BatchTopK, mutual choice, feature choice: the batch-level allocation (`_allocate`), with
  the inference threshold's EMA updated as in their own loss;
- matching pursuit: the greedy pursuit, differentiated through its unrolled steps.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from store.errors import UserError
from trainers import distributed
from trainers.batch_select import BatchCoupledSAE, ema_
from trainers.mp import MPSAE, _Unrolled, pursue
from trainers.sparse import decode_rows, selected_pre
from trainers.topk import TopKSAE


def _sparse_codes(rows: Tensor, feat: Tensor, vals: Tensor, shape: tuple[int, int]) -> Tensor:
    """Detached [tokens, d_sae] sparse codes, for the loop's dead counters and L0."""
    return torch.sparse_coo_tensor(torch.stack([rows, feat]), vals.detach(), shape,
                                   check_invariants=False)


def _batch_coupled(sae: BatchCoupledSAE, x_c: Tensor, ctx: Any) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        sel = sae._allocate(x_c, distributed.of(ctx))
        if sae.training:  # as in BatchCoupledSAE.loss: calibration moves only while training
            ema_(sae.threshold, sae.threshold_steps, sel.theta, sae.cfg.threshold_decay)
    vals = selected_pre(x_c, sae.W_enc, sae.b_enc, sel.feat, sel.vals, sel.offsets).relu()
    x_hat_c = decode_rows(sel.feat, vals, sae.W_dec, sel.offsets)
    counts = torch.diff(sel.offsets, append=sel.offsets.new_tensor([sel.feat.numel()]))
    rows = torch.arange(x_c.shape[0], device=x_c.device).repeat_interleave(counts)
    return x_hat_c, _sparse_codes(rows, sel.feat, vals, (x_c.shape[0], sae.d_sae))


def _topk(sae: TopKSAE, x_c: Tensor, ctx: Any) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        pre = sae._pre(x_c)
        idx = sae._select(pre, ctx)
        picked = pre.gather(1, idx)
        del pre
    vals = selected_pre(x_c, sae.W_enc, sae.b_enc, idx, picked).relu()
    rows = torch.arange(x_c.shape[0], device=x_c.device).repeat_interleave(sae.k)
    codes = _sparse_codes(rows, idx.reshape(-1), vals.reshape(-1), (x_c.shape[0], sae.d_sae))
    return decode_rows(idx, vals, sae.W_dec), codes


def _mp(sae: MPSAE, x_c: Tensor) -> tuple[Tensor, Tensor]:
    W = sae.W_dec.float()
    idx, vals, block = pursue(x_c.detach(), W.detach(), sae.gram(x_c.shape[0]), sae.cfg,
                              with_gram=True)
    n, T = idx.shape
    rows = torch.arange(n, device=x_c.device).repeat_interleave(T)
    codes = _sparse_codes(rows, idx.reshape(-1), vals.reshape(-1), (n, sae.d_sae)).coalesce()
    return _Unrolled.apply(x_c, W, idx, vals, block), codes


def train_reconstruction(
    sae: nn.Module, x: Float[Tensor, "tokens d_in"], ctx: Any = None
) -> tuple[Float[Tensor, "tokens d_in"], Tensor]:
    """(x̂ with gradients to the SAE's parameters, detached sparse codes) under the
    architecture's training-time selection."""
    x = x.float()
    x_c = x - sae.b_dec
    if isinstance(sae, BatchCoupledSAE):
        x_hat_c, codes = _batch_coupled(sae, x_c, ctx)
    elif isinstance(sae, TopKSAE):
        x_hat_c, codes = _topk(sae, x_c, ctx)
    elif isinstance(sae, MPSAE):
        x_hat_c, codes = _mp(sae, x_c)
    else:
        raise UserError(f"{type(sae).__name__} has no train-time reconstruction for e2e training")
    return x_hat_c + sae.b_dec, codes
