"""Sparse kernels for k-sparse codes: work proportional to tokens·k·d_in, not tokens·d_sae·d_in.

A TopK SAE's codes have k nonzeros per token, so of the six dense matmuls of an SAE step only
the encoder's forward needs to be dense: the decode, and every gradient, touch only the k
selected latents per token (Gao et al. 2024 write custom sparse kernels for the same reason).

`embedding_bag(idx, W, per_sample_weights=vals, mode="sum")` computes Σ_j vals[t,j]·W[idx[t,j]]
without materialising the [tokens, k, d_in] gather, and its autograd gives both the row-sparse
gradient of W and the gradient of vals; we reuse it for the encoder's backward as well.

Batch-coupled selectors (BatchTopK, mutual/feature choice) give each token a variable number of
latents. Every function here then takes flat 1-D `idx`/`vals` sorted by token plus `offsets`
[tokens] (where each token's run starts, as in embedding_bag): no padding, the same cost per
nonzero as the fixed-width case.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor


def decode_rows(
    idx: Int[Tensor, "*m"], vals: Float[Tensor, "*m"], W: Float[Tensor, "n d"],
    offsets: Int[Tensor, " tokens"] | None = None,
) -> Float[Tensor, "tokens d"]:
    """Σ_j vals[t, j] · W[idx[t, j]]: a sparse decode, differentiable in vals and W.

    idx and vals are [tokens, m], or flat and sorted by token with `offsets` (CSR rows).
    """
    return F.embedding_bag(idx, W, offsets, per_sample_weights=vals, mode="sum")


def scatter_rows(
    idx: Int[Tensor, "*m"], coef: Float[Tensor, "*m"], v: Float[Tensor, "tokens d"],
    like: Float[Tensor, "n d"], offsets: Int[Tensor, " tokens"] | None = None,
) -> Float[Tensor, "n d"]:
    """out[i] = Σ_{t,j: idx[t,j]=i} coef[t,j]·v[t], shaped like `like` (whose values are unused)."""
    # This is exactly the weight-gradient of embedding_bag, whose native kernels (CPU and CUDA)
    # beat index_add on a materialised [tokens·m, d] outer product by 6x on CPU. Its forward
    # costs a fraction of that, and any tensor of the right shape serves as the leaf.
    leaf = like.detach().requires_grad_()
    with torch.enable_grad():
        out = F.embedding_bag(idx, leaf, offsets, per_sample_weights=coef.detach(), mode="sum")
        (grad,) = torch.autograd.grad(out, leaf, grad_outputs=v.detach())
    return grad


class _SelectedPre(torch.autograd.Function):
    """Pre-activations at chosen latents, whose backward touches only those latents.

    Forward takes values already gathered from a dense (no-grad) encoder matmul, so the dense
    pre-activations never enter autograd; the backward is the exact gradient of
    `pre[t, idx[t, j]] = x_c[t] · W_enc[:, idx[t, j]] + b_enc[idx[t, j]]`.
    """

    @staticmethod
    def forward(
        ctx: Any, x_c: Tensor, W_enc: Tensor, b_enc: Tensor, idx: Tensor, values: Tensor,
        offsets: Tensor | None,
    ) -> Tensor:
        ctx.save_for_backward(x_c, W_enc, idx, offsets)
        return values.to(torch.float32, copy=True)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x_c, W_enc, idx, offsets = ctx.saved_tensors
        grad = grad.float()
        # W_enc is stored column-major, so its transpose is a free, contiguous [d_sae, d_in] view
        # whose rows are the latents' encoder vectors.
        rows = W_enc.t()
        gx = decode_rows(idx, grad, rows, offsets) if ctx.needs_input_grad[0] else None
        gW = scatter_rows(idx, grad, x_c, rows, offsets).t() if ctx.needs_input_grad[1] else None
        gb = None
        if ctx.needs_input_grad[2]:
            gb = grad.new_zeros(rows.shape[0]).index_add_(0, idx.reshape(-1), grad.reshape(-1))
        return gx, gW, gb, None, None, None


def selected_pre(
    x_c: Float[Tensor, "tokens d_in"],
    W_enc: Float[Tensor, "d_in d_sae"],
    b_enc: Float[Tensor, " d_sae"],
    idx: Int[Tensor, "*m"],
    values: Tensor,
    offsets: Int[Tensor, " tokens"] | None = None,
) -> Float[Tensor, "*m"]:
    """`values` (= pre.gather(1, idx), computed without grad) with the sparse encoder gradient.

    With `offsets`, idx and values are flat and sorted by token (see decode_rows).
    """
    return _SelectedPre.apply(x_c, W_enc, b_enc, idx, values, offsets)
