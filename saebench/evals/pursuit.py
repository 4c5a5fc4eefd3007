"""Inference-time code optimisation on a fixed decoder: support refit and gradient pursuit.

Engels, Riggs & Tegmark 2024 (arXiv 2410.14670) ask whether better encoding alone, with the
decoder held fixed, removes the SAE's "nonlinear" error; they optimise codes at inference with
gradient pursuit. Gradient pursuit is Blumensath & Davies 2008 ("Gradient Pursuits", IEEE TSP
56(6)): each iteration adds the atom most correlated with the residual to the support, then
takes one exact-line-search gradient step on the coefficients of the whole support.

Choices that are ours (the paper's exact settings were not at hand):
- the support size per token is the SAE's own L0 on that token (k for TopK), and atoms are
  distinct;
- codes stay nonnegative when the SAE's are (a projected step: clamp at 0), since the
  decoders were trained with nonnegative codes; atoms are chosen by correlation with the
  unit-normalised decoder row, so a row's norm does not bias the choice;
- a step is kept per token only if it does not increase that token's error, so every step
  is monotone even where the projection would undo the line search's guarantee;
- after the k selections, `steps` more projected-gradient steps polish the coefficients
  (`refit` is these steps alone, on the SAE's own support, starting from its codes).
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


def _decode(vals: Tensor, D: Tensor) -> Tensor:
    return torch.einsum("nt,ntd->nd", vals, D)


def _step(x_c: Tensor, D: Tensor, vals: Tensor, mask: Tensor, nonneg: bool) -> Tensor:
    """One monotone projected-gradient step on ½‖x_c − vals·D‖² with exact line search."""
    r = x_c - _decode(vals, D)
    g = torch.einsum("ntd,nd->nt", D, r) * mask  # minus the gradient
    if nonneg:  # a coefficient at 0 cannot move below it: drop that component
        g = torch.where((vals <= 0) & (g < 0), torch.zeros_like(g), g)
    Dg = _decode(g, D)
    tiny = torch.finfo(x_c.dtype).tiny
    alpha = g.pow(2).sum(1) / Dg.pow(2).sum(1).clamp_min(tiny)
    new = vals + alpha[:, None] * g
    if nonneg:
        new = new.clamp_min(0)
    better = (x_c - _decode(new, D)).pow(2).sum(1) <= r.pow(2).sum(1)
    return torch.where(better[:, None], new, vals)


def support_of(
    codes: Float[Tensor, "tokens d_sae"],
) -> tuple[Int[Tensor, "tokens t"], Float[Tensor, "tokens t"], Bool[Tensor, "tokens t"]]:
    """The nonzero codes as (index, value, mask) rows padded to the batch's largest L0."""
    width = max(int((codes != 0).sum(1).max()), 1)
    _, idx = codes.abs().topk(width, dim=1)
    vals = codes.gather(1, idx)
    return idx, vals, vals != 0


@torch.no_grad()
def refit(
    x: Float[Tensor, "tokens d_in"],
    W_dec: Float[Tensor, "d_sae d_in"],
    b_dec: Float[Tensor, " d_in"],
    codes: Float[Tensor, "tokens d_sae"],
    steps: int,
    nonneg: bool,
) -> Float[Tensor, "tokens d_in"]:
    """x̂ after `steps` monotone gradient steps on the SAE's own support, from its codes."""
    idx, vals, mask = support_of(codes)
    return _polish(x - b_dec, W_dec, idx, vals * mask, mask.to(x.dtype), steps, nonneg) + b_dec


def _polish(
    x_c: Tensor, W_dec: Tensor, idx: Tensor, vals: Tensor, mask: Tensor, steps: int,
    nonneg: bool, chunk: int = 256,
) -> Tensor:
    """`steps` monotone steps on fixed supports; the decoded x̂ − b_dec. In token chunks, each
    trimmed to its own largest support: [tokens, t, d_in] gathers of a batch-coupled SAE's
    rare L0-150 token would otherwise cost a gigabyte."""
    out = torch.empty_like(x_c)
    for lo in range(0, x_c.shape[0], chunk):
        sl = slice(lo, lo + chunk)
        width = max(int(mask[sl].sum(1).max()), 1)  # supports are left-aligned
        D, v, m = W_dec[idx[sl, :width]], vals[sl, :width], mask[sl, :width]
        for _ in range(steps):
            v = _step(x_c[sl], D, v, m, nonneg)
        out[sl] = _decode(v, D)
    return out


@torch.no_grad()
def gradient_pursuit(
    x: Float[Tensor, "tokens d_in"],
    W_dec: Float[Tensor, "d_sae d_in"],
    b_dec: Float[Tensor, " d_in"],
    k: Int[Tensor, " tokens"],
    steps: int,
    nonneg: bool,
) -> Float[Tensor, "tokens d_in"]:
    """x̂ of gradient pursuit with k[i] distinct atoms for token i, then `steps` polish steps."""
    n, k_max = x.shape[0], int(k.max()) if len(k) else 0
    unit = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    x_c = x - b_dec
    idx = torch.zeros(n, k_max, dtype=torch.long, device=x.device)
    vals = torch.zeros(n, k_max, dtype=x.dtype, device=x.device)
    mask = torch.zeros(n, k_max, dtype=x.dtype, device=x.device)
    r = x_c.clone()
    for t in range(k_max):
        # only tokens still short of their k: a batch-coupled SAE's few high-L0 tokens must
        # not make every token pay for k_max full-dictionary correlations
        act = (k > t).nonzero().squeeze(1)
        score = r[act] @ unit.T
        score = score if nonneg else score.abs()
        score.scatter_(1, idx[act, :t], float("-inf"))  # distinct atoms
        idx[act, t] = score.argmax(1)
        mask[act, t] = 1
        D = W_dec[idx[act, : t + 1]]
        v = _step(x_c[act], D, vals[act, : t + 1], mask[act, : t + 1], nonneg)
        vals[act, : t + 1] = v
        r[act] = x_c[act] - _decode(v, D)
    if k_max == 0:
        return b_dec.expand_as(x).clone()
    return _polish(x_c, W_dec, idx, vals, mask, steps, nonneg) + b_dec
