"""aux_zipf_loss (Ayonrinde 2024, "Adaptive Sparse Allocation with Mutual Choice & Feature
Choice Sparse Autoencoders", arXiv 2411.02124): AuxK generalised from dead to dying latents.

Two groups of latents predict the residual e = x − x̂ (as AuxK does, Gao et al. 2024, App. A.2):
- **dead** latents (silent for the loop's dead window) get AuxK exactly: on every token of the
  batch, that token's top-k_aux dead latents;
- **dying** latents, alive but far below the Zipf law that latent densities follow (Ayonrinde
  observes the sorted densities are Zipfian except at the low end), each take their n_i best
  tokens of the batch, n_i = ⌈B·(target_i − u_i)⌉ ≥ 1 — a ceiling, so no allocation rounds to 0.

The loss is ‖ê_dead + ê_dying − e‖² / ‖e‖²: with no dying latent it *is* AuxK (the same code,
`trainers.topk.auxk_reconstruction`), and with neither group it is off (None: the total loss is
then the reconstruction alone).

What is ours (only the paper's abstract and public reviews were at hand): the Zipf fit
(least squares on log density against log rank over the most-used half), the definition of
dying as "below `dying_ratio` × the fitted density" (a least-squares line has half the head
below it, so "below the law" alone would flag hundreds of healthy latents every step), and the
shortfall-proportional token allocation. Densities are an EMA of the training-time fire rate,
kept as a buffer for exact resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from store.errors import UserError
from trainers import distributed
from trainers.batch_select import BatchCoupledSAE, Selection, check_decay, ema_, to_csr
from trainers.distributed import SINGLE, World, global_cut, ratio
from trainers.sparse import decode_rows, selected_pre
from trainers.topk import TopKConfig, auxk_reconstruction


@dataclass(frozen=True)
class ZipfAuxConfig:
    """Hyperparameters shared by the mutual and feature choice SAEs."""

    d_sae: int = 4608
    """Number of latents (the SAE's width)."""
    k: int = 32
    """Average active latents per token: the batch's budget is k·B matches (Ayonrinde, §3)."""
    aux_coef: float = 1 / 32
    """Weight of aux_zipf_loss (AuxK's weight, Gao et al. 2024, App. A.2)."""
    k_aux: int | None = None
    """Dead latents per token in the AuxK part; None means d_in // 2 (Gao et al., App. A.2)."""
    aux_features: int | None = None
    """At most this many dying latents per step, the furthest below the law first; None:
    d_in // 2."""
    zipf_fit_frac: float = 0.5
    """The Zipf law is fitted to this most-used fraction of latents (the tail is what it judges)."""
    dying_ratio: float = 0.1
    """A live latent is dying when its density is below this fraction of the fitted Zipf law's
    density at its rank (ours: a tenfold shortfall, clear of the fit's scatter); 0 disables."""
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
        if not 0 <= self.dying_ratio <= 1:
            raise UserError(f"dying_ratio ({self.dying_ratio}) must be in [0, 1]")
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


def dying_allocation(
    usage: Float[Tensor, " d_sae"], dead: Bool[Tensor, " d_sae"] | None, n_tokens: int,
    fit_frac: float, dying_ratio: float, max_features: int,
) -> tuple[Int[Tensor, " n"], Int[Tensor, " n"]]:
    """(dying latents, how many tokens each takes this batch), the furthest below the law first.

    Dying: not dead, and density below `dying_ratio` × the fitted Zipf density at its rank.
    Each takes ⌈n_tokens·(target − usage)⌉ tokens, at least 1 and at most n_tokens.
    """
    target = zipf_target(usage, fit_frac)
    u = usage.float()
    dying = (u < dying_ratio * target) & (target > 0)
    if dead is not None:
        dying &= ~dead
    ids = dying.nonzero().squeeze(1)
    if ids.numel() > max_features:  # the lowest usage/target ratio first
        ratio = u[ids] / target[ids]
        ids = ids[ratio.topk(max_features, largest=False).indices]
    n = ((target[ids] - u[ids]) * n_tokens).ceil().clamp(1, n_tokens).long()
    return ids, n


def aux_zipf_loss(
    x_c: Float[Tensor, "tokens d_in"], e: Float[Tensor, "tokens d_in"],
    W_enc: Float[Tensor, "d_in d_sae"], b_enc: Float[Tensor, " d_sae"],
    W_dec: Float[Tensor, "d_sae d_in"], dead_idx: Int[Tensor, " n_dead"], k_aux: int,
    dying: Int[Tensor, " n"], n_tok: Int[Tensor, " n"], world: World = SINGLE,
) -> Tensor | None:
    """Normalised MSE of the residual `e` predicted by AuxK over `dead_idx` plus each dying
    latent at its n_tok best tokens of the global batch; None when both groups are empty.

    The dying part: one dense no-grad product over the chosen columns finds the tokens; the
    codes then carry gradient through the sparse kernels, like the main path.
    """
    if dead_idx.numel() == 0 and dying.numel() == 0:
        return None
    e_hat = 0.0
    if dead_idx.numel():
        e_hat = auxk_reconstruction(x_c, W_enc, b_enc, W_dec, dead_idx, k_aux).float()
    if dying.numel():
        with torch.no_grad():
            pre = torch.addmm(b_enc.index_select(0, dying), x_c, W_enc.index_select(1, dying))
            top = pre.topk(min(int(n_tok.max()), pre.shape[0]), dim=0)  # [max n_tok, n], best
            order = top.indices
            if world.size == 1:
                rank = torch.arange(order.shape[0], device=pre.device)[:, None]
                ok = rank < n_tok[None, :]
            else:  # latent i's n_tok[i] best tokens of all ranks' slices
                ok, _, _ = global_cut(top.values, n_tok, world)
            col = torch.arange(dying.numel(), device=pre.device).expand_as(order)[ok]
            tok = order[ok]
            feat, vals, offsets = to_csr(tok, dying[col], pre[tok, col], x_c.shape[0])
        codes = selected_pre(x_c, W_enc, b_enc, feat, vals, offsets).relu()
        e_hat = e_hat + decode_rows(feat, codes, W_dec, offsets)  # no b_dec: it is in x_hat
    return ratio((e_hat - e).pow(2).sum(), e.pow(2).sum(), world)


class ZipfAuxSAE(BatchCoupledSAE):
    """A batch-coupled SAE whose aux loss is aux_zipf_loss; `usage` is a state_dict buffer.

    `ctx.dead_mask` (the loop's dead counters, as for AuxK) names the dead latents."""

    def __init__(self, d_in: int, cfg: Any, *, generator: torch.Generator | None = None,
                 per_feature: bool = False) -> None:
        super().__init__(d_in, cfg, generator=generator, per_feature=per_feature)
        self.aux_features = cfg.aux_features if cfg.aux_features is not None else d_in // 2
        self.register_buffer("usage", torch.zeros(cfg.d_sae))
        self.register_buffer("usage_steps", torch.zeros((), dtype=torch.int64))

    def _aux(self, x_c: Tensor, e: Tensor, ctx: Any, sel: Selection) -> tuple[str, Tensor | None]:
        world = distributed.of(ctx)
        n_tokens = x_c.shape[0] * world.size  # the global batch: usage is the same everywhere
        dead = getattr(ctx, "dead_mask", None)
        with torch.no_grad():
            if self.training:
                fired = torch.zeros_like(self.usage).index_add_(0, sel.feat, (sel.vals > 0).float())
                world.sum(fired)
                ema_(self.usage, self.usage_steps, fired / n_tokens, self.cfg.usage_decay)
            dying, n_tok = dying_allocation(self.usage, dead, n_tokens, self.cfg.zipf_fit_frac,
                                            self.cfg.dying_ratio, self.aux_features)
            dead_idx = (dead.nonzero().squeeze(1) if dead is not None
                        else torch.zeros(0, dtype=torch.long, device=x_c.device))
        loss = aux_zipf_loss(x_c, e, self.W_enc, self.b_enc, self.W_dec, dead_idx, self.k_aux,
                             dying, n_tok, world)
        return "aux_zipf", loss
