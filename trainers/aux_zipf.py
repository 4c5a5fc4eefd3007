"""aux_zipf_loss (Ayonrinde 2024, "Adaptive Sparse Allocation with Mutual Choice & Feature Choice
Sparse Autoencoders", arXiv 2411.02124): AuxK generalised from dead to under-used latents.

Ayonrinde observes that latent densities, sorted, follow a Zipf law except at the low end,
where latents are dying. We fit the Zipf law log u = a − α·log rank to the head of the observed
densities, read off each latent's target density at its rank, and give every latent below its
target an auxiliary allocation in proportion to the shortfall: latent i may match its
round(B·(target_i − u_i)) best tokens of the batch. Those auxiliary codes reconstruct the
residual x − x̂, as in AuxK (Gao et al. 2024, App. A.2); a dead latent's shortfall is its whole
target, so AuxK is the special case of a flat target over the dead latents.

Densities are an EMA of the training-time fire rate, kept as a buffer for exact resume.

Caveat: only the paper's abstract and its public reviews were at hand when this was written
(the Zipf fit and "dead and under-used" are theirs); the shortfall-proportional allocation is
our construction of a loss with those properties, not a transcription of the paper's formula.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from store.errors import UserError
from trainers.batch_select import BatchCoupledSAE, Selection, check_decay, ema_, to_csr
from trainers.sparse import decode_rows, selected_pre
from trainers.topk import TopKConfig


@dataclass(frozen=True)
class ZipfAuxConfig:
    """Hyperparameters shared by the mutual and feature choice SAEs."""

    d_sae: int = 4608
    """Number of latents (the SAE's width)."""
    k: int = 32
    """Average active latents per token: the batch's budget is k·B matches (Ayonrinde, §3)."""
    aux_coef: float = 1 / 32
    """Weight of aux_zipf_loss (AuxK's weight, Gao et al. 2024, App. A.2)."""
    aux_features: int | None = None
    """At most this many under-used latents per step, the most short first; None: d_in // 2."""
    zipf_fit_frac: float = 0.5
    """The Zipf law is fitted to this most-used fraction of latents (the tail is what it judges)."""
    usage_decay: float = 0.99
    """EMA decay of each latent's fire rate."""
    threshold_decay: float = 0.95
    """θ: running mean of each batch's cut, then an EMA this slow (SAELens: 0.99). Faster, so θ
    tracks the weights within the loop's final LR decay even on runs of a few hundred steps."""

    def __post_init__(self) -> None:
        TopKConfig.__post_init__(self)  # type: ignore[arg-type]  # reads only d_sae and k
        check_decay("usage_decay", self.usage_decay)
        check_decay("threshold_decay", self.threshold_decay)
        if not 0 < self.zipf_fit_frac <= 1:
            raise UserError(f"zipf_fit_frac ({self.zipf_fit_frac}) must be in (0, 1]")
        if self.aux_features is not None and self.aux_features < 1:
            raise UserError(f"aux_features ({self.aux_features}) must be positive")


def zipf_target(usage: Float[Tensor, " d_sae"], fit_frac: float = 0.5) -> Float[Tensor, " d_sae"]:
    """Each latent's density under a Zipf law fitted to the most-used `fit_frac` of latents.

    Least squares on log density against log rank (1-based), over the head's nonzero
    densities; all zeros (no data yet) gives all zeros. The exponent is clamped at ≥ 0 so a
    rising fit cannot ask the tail for more than the head.
    """
    sorted_u, order = usage.float().sort(descending=True)
    rank = torch.arange(1, usage.numel() + 1, device=usage.device, dtype=torch.float32)
    n_fit = max(2, int(fit_frac * usage.numel()))
    head = sorted_u[:n_fit] > 0
    if int(head.sum()) < 2:
        return torch.zeros_like(usage, dtype=torch.float32)
    lx, ly = rank[:n_fit][head].log(), sorted_u[:n_fit][head].log()
    lx_c = lx - lx.mean()
    slope = ((lx_c * (ly - ly.mean())).sum() / lx_c.pow(2).sum().clamp_min(1e-12)).clamp_max(0)
    target_sorted = (ly.mean() + slope * (rank.log() - lx.mean())).exp()
    return torch.empty_like(target_sorted).scatter_(0, order, target_sorted)


def aux_allocation(
    usage: Float[Tensor, " d_sae"], n_tokens: int, fit_frac: float, max_features: int
) -> tuple[Int[Tensor, " n"], Int[Tensor, " n"]]:
    """(under-used latents, how many tokens each may take this batch), most short first."""
    short = (zipf_target(usage, fit_frac) - usage.float()).clamp_min(0)
    n = (short * n_tokens).round().clamp_max(n_tokens).long()
    top = n.topk(min(max_features, n.numel())).indices
    top = top[n[top] > 0]
    return top, n[top]


def aux_zipf_loss(
    x_c: Float[Tensor, "tokens d_in"], e: Float[Tensor, "tokens d_in"],
    W_enc: Float[Tensor, "d_in d_sae"], b_enc: Float[Tensor, " d_sae"],
    W_dec: Float[Tensor, "d_sae d_in"], latents: Int[Tensor, " n"], n_tok: Int[Tensor, " n"],
) -> Tensor | None:
    """Normalised MSE of the residual `e` predicted by `latents`, latent i at its n_tok[i] best
    tokens (feature-choice style, Ayonrinde 2024, §3); None when no latent is under-used.

    One dense no-grad product over the chosen columns finds the tokens; the codes then carry
    gradient through the sparse kernels, like the main path (3x cheaper than AuxK's dense one).
    """
    if latents.numel() == 0:
        return None
    with torch.no_grad():
        pre = torch.addmm(b_enc.index_select(0, latents), x_c, W_enc.index_select(1, latents))
        order = pre.topk(int(n_tok.max()), dim=0).indices  # [max n_tok, n], best first
        rank = torch.arange(order.shape[0], device=pre.device)[:, None]
        ok = rank < n_tok[None, :]
        col = torch.arange(latents.numel(), device=pre.device).expand_as(order)[ok]
        tok = order[ok]
        feat, vals, offsets = to_csr(tok, latents[col], pre[tok, col], x_c.shape[0])
    codes = selected_pre(x_c, W_enc, b_enc, feat, vals, offsets).relu()
    e_hat = decode_rows(feat, codes, W_dec, offsets)  # no b_dec: it is in x_hat
    return (e_hat - e).pow(2).sum() / e.pow(2).sum().clamp_min(1e-12)


class ZipfAuxSAE(BatchCoupledSAE):
    """A batch-coupled SAE whose aux loss is aux_zipf_loss; `usage` is a state_dict buffer."""

    def __init__(self, d_in: int, cfg: Any, *, generator: torch.Generator | None = None,
                 per_feature: bool = False) -> None:
        super().__init__(d_in, cfg, generator=generator, per_feature=per_feature)
        self.aux_features = cfg.aux_features if cfg.aux_features is not None else d_in // 2
        self.register_buffer("usage", torch.zeros(cfg.d_sae))
        self.register_buffer("usage_steps", torch.zeros((), dtype=torch.int64))

    def _aux(self, x_c: Tensor, e: Tensor, ctx: Any, sel: Selection) -> tuple[str, Tensor | None]:
        n_tokens = x_c.shape[0]
        with torch.no_grad():
            if self.training:
                fired = torch.zeros_like(self.usage).index_add_(0, sel.feat, (sel.vals > 0).float())
                ema_(self.usage, self.usage_steps, fired / n_tokens, self.cfg.usage_decay)
            latents, n_tok = aux_allocation(self.usage, n_tokens, self.cfg.zipf_fit_frac,
                                            self.aux_features)
        loss = aux_zipf_loss(x_c, e, self.W_enc, self.b_enc, self.W_dec, latents, n_tok)
        return "aux_zipf", loss
