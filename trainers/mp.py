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

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from store.errors import UserError
from trainers import distributed
from trainers.precision import fast_bf16
from trainers.protocol import LossOut
from trainers.sparse import decode_rows
from trainers.topk import TopKSAE, _fvu

# Token chunk of the greedy loop: its [chunk, d_sae] correlations stay in L2 across the T steps.
CHUNK = 256
ARGMAX_BLOCK = 64
# Above this width the Gram matrix (d_sae² floats) is not kept: rows are computed per step.
GRAM_MAX_D_SAE = 16384


@dataclass(frozen=True)
class MPConfig:
    """Hyperparameters of one matching-pursuit SAE."""

    d_sae: int = 4608
    """Number of latents (dictionary atoms)."""
    k: int = 32
    """Pursuit steps T: a token takes at most T steps (see `cap_steps`)."""
    residual_threshold: float = 0.0
    """Stop a token once its residual norm falls below this (in training units, where the mean
    ‖x‖ is √d_in; 0 = never), in training and at inference, as the authors' code and SAELens do.
    Their toy value, 0.05, never triggers at our scale, so the default is off."""
    stop_on_duplicate_support: bool = True
    """Stop a token when a step leaves its support unchanged (a re-picked atom, or a zero
    value): always on in the authors' released code, SAELens's default."""
    decoder_bias: bool = False
    """Learn a decoder bias b_dec (ours; initialised at the geometric median). Off as in both
    official implementations: b_dec is then a zero buffer."""
    cap_steps: bool = True
    """Cap the steps at T = k. Off: at most d_in steps, stopped only by the two rules above."""
    select_bf16: bool = True
    """In training, pick atoms from bf16 correlations where bf16 is fast (a weak-MP step: the
    atom is best up to bf16 rounding); values and stopping rules stay exact. Inference is
    always exact fp32 MP."""

    def __post_init__(self) -> None:
        if self.d_sae < 1 or self.k < 1:
            raise UserError(f"--k ({self.k}) and --width ({self.d_sae}) must be positive")
        if not self.residual_threshold >= 0:
            raise UserError(f"--residual-threshold ({self.residual_threshold}) must be >= 0")
        if not (self.cap_steps or self.stop_on_duplicate_support or self.residual_threshold > 0):
            raise UserError("matching pursuit with cap_steps off needs a stopping rule: "
                            "stop_on_duplicate_support or a residual_threshold > 0")


@torch.no_grad()
def pursue(
    x_c: Float[Tensor, "tokens d_in"], W: Float[Tensor, "d_sae d_in"], gram: Tensor | None,
    cfg: MPConfig, *, with_gram: bool = False, low_precision: bool = False,
) -> tuple[Int[Tensor, "tokens k"], Float[Tensor, "tokens k"], Tensor | None]:
    """Greedy MP without grad: indices, values (0 after a token stops) and, if asked, the
    selected atoms' Gram block [tokens, k, k] (entry [t, s] = ⟨d_{i_t}, d_{i_s}⟩ for s < t).

    `low_precision`: correlations from a bf16 product, so each pick is the best atom up to bf16
    rounding (weak MP); values and block are then recomputed exactly, and the stopping rules
    applied to the exact values afterwards (`_apply_stops`)."""
    n, T = x_c.shape[0], steps(cfg, x_c.shape[1])
    idx = torch.zeros(n, T, dtype=torch.long, device=x_c.device)
    vals = x_c.new_zeros(n, T)
    block = x_c.new_zeros(n, T, T) if with_gram else None
    # Chunks keep a [chunk, d_sae] slab in a CPU core's cache; a GPU takes every token at once.
    chunk = CHUNK if x_c.device.type == "cpu" else max(n, 1)
    # Scratch reused by every chunk (fresh MB-sized buffers would page-fault on each step):
    # the correlations, padded with -inf to whole blocks for _argmax, and gathered Gram rows.
    d_sae = W.shape[0]
    padded = x_c.new_full((min(chunk, n), -(-d_sae // ARGMAX_BLOCK) * ARGMAX_BLOCK), -torch.inf)
    rows = x_c.new_empty(min(chunk, n), d_sae)
    for lo in range(0, n, chunk):
        sl = slice(lo, lo + chunk)
        part = None if block is None else block[sl]
        m = idx[sl].shape[0]
        # In low precision the block is recomputed exactly afterwards, not gathered from G.
        _pursue_chunk(x_c[sl], W, gram, cfg, idx[sl], vals[sl], None if low_precision else part,
                      padded[:m], rows[:m], low_precision)
        if low_precision:
            _exact_values(x_c[sl], W, idx[sl], vals[sl], part)
            _apply_stops(x_c[sl], idx[sl], vals[sl], cfg)
    return idx, vals, block


def steps(cfg: MPConfig, d_in: int) -> int:
    """The most steps a token may take: T = k, or d_in with the cap off (SAELens's bound)."""
    return cfg.k if cfg.cap_steps else max(d_in, cfg.k)


def _apply_stops(x_c: Tensor, idx: Tensor, vals: Tensor, cfg: MPConfig) -> None:
    """Zero every step after the one where a stopping rule fires, from exact values alone.

    The picks before a token stops do not depend on the rules, so running all steps and
    truncating gives the sequential loop's codes. With unit-norm atoms and a_t = ⟨r_t, d_{i_t}⟩,
    ‖r_{t+1}‖² = ‖r_t‖² − a_t², so the residual norms need no residual."""
    stop = torch.zeros_like(vals, dtype=torch.bool)
    if cfg.stop_on_duplicate_support:
        T = idx.shape[1]
        earlier = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril(-1)
        again = (idx[:, :, None] == idx[:, None, :]) & earlier & (vals[:, None, :] > 0)
        stop |= again.any(dim=2) | (vals == 0)
    if cfg.residual_threshold > 0:
        norm2 = x_c.pow(2).sum(1, keepdim=True) - vals.pow(2).cumsum(1)
        stop |= norm2 < cfg.residual_threshold**2
    # A step is kept when no earlier step stopped the token (the stopping step itself counts).
    stopped_before = (stop.cumsum(1) - stop.long()) > 0
    vals.masked_fill_(stopped_before, 0.0)


def _exact_values(x_c: Tensor, W: Tensor, idx: Tensor, vals: Tensor,
                  block: Tensor | None) -> None:
    """MP's values for given picks, in fp32: a_t = relu(⟨x_c, d_{i_t}⟩ − Σ_{s<t} a_s⟨d_{i_s},
    d_{i_t}⟩), i.e. ⟨r_t, d_{i_t}⟩ with r_t the exact residual, and the exact Gram block."""
    n, T = idx.shape
    atoms = W.index_select(0, idx.reshape(-1)).view(n, T, -1)
    c0 = torch.bmm(atoms, x_c[:, :, None]).squeeze(2)
    gram = torch.bmm(atoms, atoms.transpose(1, 2))
    for t in range(T):
        vals[:, t] = (c0[:, t] - torch.linalg.vecdot(gram[:, t, :t], vals[:, :t])).clamp_min(0)
    if block is not None:
        block.copy_(gram.tril(-1))


def _argmax(c: Tensor, block: int) -> Tensor:
    # torch's argmax over a row of d_sae floats is ~4x slower than amax on CPU, so: the max of
    # each block of `block` columns (one vectorised pass), then argmax within the best block.
    # Ties resolve to the first index, as a plain argmax does.
    n = c.shape[0]
    blocks = c.view(n, -1, block)
    best = blocks.amax(dim=2).argmax(dim=1, keepdim=True)
    within = blocks.gather(1, best[:, :, None].expand(n, 1, block)).squeeze(1)
    return best.squeeze(1) * block + within.argmax(dim=1)


def _pursue_chunk(r: Tensor, W: Tensor, gram: Tensor | None, cfg: MPConfig, idx: Tensor,
                  vals: Tensor, block: Tensor | None, padded: Tensor, rows: Tensor,
                  low_precision: bool = False) -> None:
    n, d_sae = r.shape[0], W.shape[0]
    c = padded[:, :d_sae]
    if low_precision:
        c.copy_(torch.mm(r.bfloat16(), W.bfloat16().T))
    else:
        c.copy_(r @ W.T)
    r = r.clone()
    live = torch.ones(n, dtype=torch.bool, device=r.device)
    # In low precision the values are recomputed exactly afterwards and the stopping rules
    # applied to them (`_apply_stops`): tracking the residual here would be wasted work.
    stops = (cfg.stop_on_duplicate_support or cfg.residual_threshold > 0) and not low_precision
    for t in range(idx.shape[1]):
        # argmax of c equals SAELens's argmax of relu(c) whenever the max is positive; when it
        # is not, both add a zero value, so the codes agree.
        i = _argmax(padded, ARGMAX_BLOCK)
        a = c.gather(1, i[:, None]).squeeze(1).clamp_min(0)
        if stops:
            a *= live
        idx[:, t], vals[:, t] = i, a
        if gram is not None:
            torch.index_select(gram, 0, i, out=rows)
        else:
            torch.mm(W.index_select(0, i), W.T, out=rows)
        if block is not None and t:
            block[:, t, :t] = rows.gather(1, idx[:, :t])
        c.addcmul_(rows, a[:, None], value=-1)
        if not stops:
            continue
        # The residual itself costs d_in per token-step (c costs d_sae): kept exactly, so the
        # stopping rule reads the same norm SAELens does.
        r.addcmul_(W.index_select(0, i), a[:, None], value=-1)
        done = torch.zeros_like(live)
        if cfg.stop_on_duplicate_support:
            seen = ((idx[:, :t] == i[:, None]) & (vals[:, :t] > 0)).any(dim=1)
            done |= (a == 0) | seen
        if cfg.residual_threshold > 0:
            done |= r.norm(dim=1) < cfg.residual_threshold
        live &= ~done
        if not live.any():
            break


def _gram(W: Float[Tensor, "d_sae d_in"], strips: int = 4) -> Float[Tensor, "d_sae d_sae"]:
    """W·Wᵀ from its upper triangle: row strips of the upper part, mirrored (~25% faster)."""
    d_sae = W.shape[0]
    G, step = W.new_empty(d_sae, d_sae), -(-d_sae // strips)
    for lo in range(0, d_sae, step):
        hi = lo + step
        G[lo:hi, lo:] = W[lo:hi] @ W[lo:].T
        G[hi:, lo:hi] = G[lo:hi, hi:].T
    return G


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
