"""Matching pursuit's greedy encoder, without grad: the picks and values of each token's steps.

Split from trainers/mp.py (the SAE and its unrolled gradient), which re-exports these names.
See that module's docstring for the method (Costa et al. 2025) and the speed notes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from store.errors import UserError

# Token chunk of the greedy loop: its [chunk, d_sae] correlations stay in L2 across the T steps.
CHUNK = 256
ARGMAX_BLOCK = 64
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
