"""Matching-pursuit SAE (Costa et al. 2025, "From Flat to Hierarchical: Extracting Sparse
Representations with Matching Pursuit", arXiv 2506.03093).

No encoder matrix: the encoder unrolls T residual-guided greedy steps over the unit-norm
decoder atoms d_j (rows of W_dec), and training backpropagates through the steps:

    r₀ = x − b_dec;  i_t = argmax_j relu(⟨r_t, d_j⟩);  a_t = relu(⟨r_t, d_{i_t}⟩);
    r_{t+1} = r_t − a_t·d_{i_t};  codes[i_t] += a_t;  x̂ = codes·W_dec + b_dec

These are the semantics of SAELens's `matching_pursuit`, so our folders load there unchanged.

As the authors release it (`mpsae/MP-SAE`, `sae.py`): a token stops when a step leaves its
support unchanged (it re-picks an atom, or the best value is 0) or when ‖r‖ falls below
`residual_threshold`; there is no decoder bias (b_dec is then a zero buffer). Ours, as
options: a learned b_dec (`decoder_bias`), and the step count T = k as a cap (`cap_steps`;
the authors' code has none). With the cap off a token runs until a rule stops it, at most d_in
steps (SAELens's default bound) — the adaptive sparsity the paper advertises.

Speed: the textbook loop costs T dense [tokens, d_sae]×[d_sae, d_in] products. Here the
correlations c = r·W_decᵀ are computed once and updated through the Gram matrix
G = W_dec·W_decᵀ (c ← c − a_t·G[i_t]: d_sae per token-step), without grad, in token chunks that
stay in cache. The gradient then needs only the selected atoms (`_Unrolled`).
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from trainers import distributed
from trainers.mp_pursuit import (  # noqa: F401  (re-exported: MP's public names live here)
    ARGMAX_BLOCK,
    CHUNK,
    MPConfig,
    _apply_stops,
    _gram,
    pursue,
    steps,
)
from trainers.precision import fast_bf16
from trainers.protocol import LossOut
from trainers.sparse import decode_rows
from trainers.topk import TopKSAE, _fvu

# Above this width the Gram matrix (d_sae² floats) is not kept: rows are computed per step.
GRAM_MAX_D_SAE = 16384


class _Unrolled(torch.autograd.Function):
    """Σ_t a_t·d_{i_t} for the greedy indices, with the exact gradient of the unrolled loop.

    Forward takes the values from `pursue` (no grad). As u_t = ⟨r_t, d_{i_t}⟩
    = ⟨x_c, d_{i_t}⟩ − Σ_{s<t} a_s·⟨d_{i_s}, d_{i_t}⟩ and a_t = relu(u_t) (indices fixed, as
    SAELens's autograd sees them), backward is one reverse sweep over the T steps on
    [tokens, d_in] tensors, the residual r_t and Q_t = Σ_{s>t} ū_s·d_{i_s}, where ū = ∂L/∂u:
      ū_t = [a_t > 0]·(⟨g, d_{i_t}⟩ − Σ_{s>t} ū_s·⟨d_{i_s}, d_{i_t}⟩)
      ∂W[i_t] += ū_t·r_t + a_t·(g − Q_t);   ∂x_c = Σ_t ū_t·d_{i_t}
    The ⟨d_{i_s}, d_{i_t}⟩ come from G (`block`), so no [tokens, d_sae] tensor enters autograd
    and no batched [T, T]×[T, d_in] products are needed.
    """

    @staticmethod
    def forward(ctx: Any, x_c: Tensor, W: Tensor, idx: Tensor, vals: Tensor,
                block: Tensor) -> Tensor:
        x_hat_c = decode_rows(idx, vals, W.detach())
        ctx.save_for_backward(x_c, W, idx, vals, block, x_hat_c)
        return x_hat_c

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x_c, W, idx, vals, block, x_hat_c = ctx.saved_tensors
        g = g.float()
        T = idx.shape[1]
        u_bar = torch.zeros_like(vals)
        V = x_c.new_empty(T, *x_c.shape)  # step-major, so each V[t] is contiguous
        r = x_c - x_hat_c  # r_T, the residual after the last step
        Q = torch.zeros_like(x_c)
        for t in reversed(range(T)):
            w = W.index_select(0, idx[:, t])
            a_t = vals[:, t, None]
            r.addcmul_(w, a_t)  # r_t = r_{t+1} + a_t·d_{i_t}
            later = torch.linalg.vecdot(block[:, t + 1:, t], u_bar[:, t + 1:])
            ub = torch.where(vals[:, t] > 0, torch.linalg.vecdot(g, w) - later, 0.0)
            u_bar[:, t] = ub
            torch.mul(g - Q, a_t, out=V[t]).addcmul_(r, ub[:, None])
            Q.addcmul_(w, ub[:, None])
        gW = None
        if ctx.needs_input_grad[1]:
            # V is already one row per (token, step): a plain index_add, no outer products.
            gW = torch.zeros_like(W).index_add_(0, idx.T.reshape(-1), V.view(-1, x_c.shape[1]))
        return Q, gW, None, None, None


class MPSAE(nn.Module):
    """A matching-pursuit SAE (tied: no W_enc); satisfies trainers.protocol.SparseCoder."""

    # MP needs unit-norm atoms (a_t is then the projection and ‖r‖ can only shrink): the same
    # parallel-gradient removal during backward and renormalisation after each step as TopK.
    _remove_parallel_grad = TopKSAE._remove_parallel_grad
    after_step = TopKSAE.after_step

    def __init__(self, d_in: int, cfg: MPConfig, *, generator: torch.Generator | None = None):
        super().__init__()
        self.cfg, self.d_in, self.d_sae, self.k = cfg, d_in, cfg.d_sae, cfg.k
        W_dec = torch.randn(cfg.d_sae, d_in, generator=generator)
        self.W_dec = nn.Parameter(W_dec / W_dec.norm(dim=1, keepdim=True))
        if cfg.decoder_bias:
            self.b_dec = nn.Parameter(torch.zeros(d_in))
        else:  # the loop initialises and trains parameters only, so this stays 0
            self.register_buffer("b_dec", torch.zeros(d_in))
        self.W_dec.register_hook(self._remove_parallel_grad)
        self._gram: tuple[Any, Tensor] | None = None

    def gram(self, n_tokens: int, low_precision: bool = False) -> Tensor | None:
        """W_dec·W_decᵀ in fp32 (from a bf16 product if `low_precision`), cached while W_dec is
        unchanged; None where rows are cheaper."""
        W = self.W_dec.detach().float()
        key = (W.data_ptr(), self.W_dec._version, W.device, low_precision)
        if self._gram is not None and self._gram[0] == key:
            return self._gram[1]
        # One d_sae²·d_in product vs d_sae·d_in per token-step for rows computed on the fly.
        if self.d_sae > GRAM_MAX_D_SAE or self.d_sae > n_tokens * self.k:
            return None
        G = torch.mm(W.bfloat16(), W.bfloat16().T).float() if low_precision else _gram(W)
        self._gram = (key, G)
        return self._gram[1]

    def encode_sparse(
        self, x: Float[Tensor, "tokens d_in"]
    ) -> tuple[Float[Tensor, "tokens k"], Int[Tensor, "tokens k"]]:
        """Values (≥ 0) and atom indices of the T steps (an index may repeat; zeros pad)."""
        W = self.W_dec.detach().float()
        idx, vals, _ = pursue(x.float() - self.b_dec.detach(), W, self.gram(x.shape[0]),
                              self.cfg)
        return vals, idx

    def decode_sparse(
        self, vals: Float[Tensor, "tokens k"], idx: Int[Tensor, "tokens k"]
    ) -> Float[Tensor, "tokens d_in"]:
        """Reconstruct from `encode_sparse`'s output without forming dense codes."""
        return decode_rows(idx, vals, self.W_dec) + self.b_dec

    def encode(self, x: Float[Tensor, "tokens d_in"]) -> Float[Tensor, "tokens d_sae"]:
        vals, idx = self.encode_sparse(x)
        return vals.new_zeros(x.shape[0], self.d_sae).scatter_add_(1, idx, vals)

    def decode(self, codes: Float[Tensor, "tokens d_sae"]) -> Float[Tensor, "tokens d_in"]:
        return codes @ self.W_dec + self.b_dec

    def forward(self, x: Float[Tensor, "tokens d_in"]) -> Float[Tensor, "tokens d_in"]:
        return self.decode_sparse(*self.encode_sparse(x))

    def loss(self, x: Float[Tensor, "tokens d_in"], ctx: Any = None) -> LossOut:
        """Normalised MSE only: the paper trains MP-SAE on reconstruction alone, no aux loss;
        of `ctx` only the world is used (for the global FVU denominator)."""
        # fp32 values and gradients, even under autocast; only the picks may use bf16.
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            x_c = x - self.b_dec
            W = self.W_dec.float()
            cfg = self.cfg
            low = cfg.select_bf16 and fast_bf16(x.device)
            idx, vals, block = pursue(x_c.detach(), W.detach(), self.gram(x.shape[0], low),
                                      cfg, with_gram=True, low_precision=low)
            x_hat = _Unrolled.apply(x_c, W, idx, vals, block) + self.b_dec
            fvu = _fvu(x, x_hat, distributed.of(ctx))
        n, T = idx.shape
        rows = torch.arange(n, device=x.device).repeat_interleave(T)
        # Coalesced: a repeated atom is one code (the sum), as in SAELens's scatter_add.
        codes = torch.sparse_coo_tensor(
            torch.stack([rows, idx.reshape(-1)]), vals.reshape(-1), (n, self.d_sae),
            check_invariants=False,
        ).coalesce()
        return LossOut(total=fvu, parts={"fvu": fvu.detach()}, codes=codes)

    @torch.no_grad()
    def export_saelens(self, scale: float) -> tuple[str, dict, dict[str, Tensor]]:
        """SAELens `matching_pursuit` in raw units: MP is positively homogeneous, so b_dec and
        the residual threshold divide by `scale` and the codes come out divided by it too."""
        fields = {"residual_threshold": self.cfg.residual_threshold / scale,
                  "max_iterations": steps(self.cfg, self.d_in),
                  "stop_on_duplicate_support": self.cfg.stop_on_duplicate_support}
        tensors = {"W_dec": self.W_dec.detach().float().contiguous().clone(),
                   "b_dec": self.b_dec.detach().float() / scale}
        return "matching_pursuit", fields, tensors
