"""Feature Choice SAE (Ayonrinde 2024, "Adaptive Sparse Allocation with Mutual Choice & Feature
Choice Sparse Autoencoders", arXiv 2411.02124).

Token-latent matching as resource allocation (§3) with a budget of k·B matches per batch and the
extra constraint that latent i matches at most m_i tokens: each latent picks its m_i best
tokens (as experts do in expert-choice routing, Zhou et al. 2022), so tokens get variable
counts and no latent can hog the budget or starve. The aux loss is aux_zipf_loss
(trainers/aux_zipf.py).

Caps (`caps`): by default Zipf-shaped over latents, as the paper's public reviews describe:
m at usage rank r ∝ r^(−zipf_exponent), Σ m_i = k·B exactly, each m_i ≥ 1 and ≤ B. Ranks come
from each latent's running density (the `usage` buffer), so a latent that is used more may take
more tokens. What is ours: the exponent (1, classic Zipf), ranking by running density, and the
"1 + Zipf share of the rest" rounding. `cap_dist="uniform"` gives every latent m = ⌈k·B/d_sae⌉,
as before. A capacity > 1 multiplies every cap and lets the best k·B candidates win.

Inference: a PER-LATENT threshold θ_i, the calibrated cut between the last token latent i kept
and the first it rejected (so it fires on about its training share of tokens), exported as
SAELens `jumprelu`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from store.errors import UserError
from trainers.aux_zipf import ZipfAuxConfig, ZipfAuxSAE
from trainers.batch_select import Selection, to_csr
from trainers.distributed import SINGLE, World, global_cut


@dataclass(frozen=True)
class FeatureChoiceConfig(ZipfAuxConfig):
    """Hyperparameters of one feature choice SAE."""

    cap_dist: Literal["zipf", "uniform"] = "zipf"
    """How the k·B budget is split into per-latent caps m_i: a Zipf law over latents ranked by
    running density (the paper, per its reviews), or one uniform cap ⌈k·B/d_sae⌉."""
    zipf_exponent: float = 1.0
    """Exponent α of the Zipf caps, m ∝ rank^(−α); 0 is uniform (ours: classic Zipf)."""
    capacity: float = 1.0
    """Caps are multiplied by this; above 1 the budget k·B, not the caps, binds (Ayonrinde, §3)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.capacity >= 1:
            raise UserError(f"capacity ({self.capacity}) must be at least 1")
        if self.cap_dist not in ("zipf", "uniform"):
            raise UserError(f"cap_dist ({self.cap_dist!r}) must be zipf or uniform")
        if not (math.isfinite(self.zipf_exponent) and self.zipf_exponent >= 0):
            raise UserError(f"zipf_exponent ({self.zipf_exponent}) must be a number >= 0")


def zipf_caps(n: int, total: int, exponent: float, max_cap: int) -> Int[Tensor, " n"]:
    """Integer caps by rank (rank 1 first): each ≥ 1 and ≤ max_cap, summing to `total`, the rest
    above 1 shared ∝ rank^(−exponent) (water-filling: a share over max_cap is spread on)."""
    if not n <= total <= n * max_cap:
        raise UserError(f"feature choice: a budget of {total} matches cannot give each of {n} "
                        f"latents between 1 and {max_cap} tokens")
    w = torch.arange(1, n + 1, dtype=torch.float64).pow(-exponent)
    share = torch.zeros(n, dtype=torch.float64)
    free, rest = torch.ones(n, dtype=torch.bool), float(total - n)
    room = float(max_cap - 1)
    while True:  # at most a few rounds: each one fixes the head latents at the cap
        share[free] = rest * w[free] / w[free].sum()
        over = free & (share > room)
        if not over.any():
            break
        share[over], free = room, free & ~over
        rest = float(total - n) - room * float((~free).sum())
    caps = share.floor()
    left = int(total - n - caps.sum())  # largest remainders get the leftover units
    if left:
        frac = torch.where(caps < room, share - caps, -1.0)
        caps[frac.topk(left).indices] += 1
    return (caps + 1).long()


def capped_topk(
    W_enc: Float[Tensor, "d_in d_sae"], b_enc: Float[Tensor, " d_sae"],
    x_c: Float[Tensor, "tokens d_in"], caps: Int[Tensor, " d_sae"], n: int,
    world: World = SINGLE,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Each latent i's caps[i] best tokens, then the n best of those, over the global batch
    (x_c is this rank's slice; caps and n count global tokens).

    Returns (tokens, latents, values, per-latent cut, global cut). Works on preᵀ [d_sae, tokens]:
    a topk along contiguous rows is 2x faster than along columns, and W_enc's column-major
    layout makes preᵀ the same GEMM as pre. Latents are grouped by cap into power-of-two
    widths, so the few Zipf head latents with caps near B cost a sort and the tail does not.
    """
    pre_t = torch.addmm(b_enc[:, None], W_enc.t(), x_c.t())
    n_latents, n_local = pre_t.shape
    n_tokens = n_local * world.size
    caps = caps.clamp(1, n_tokens)
    per_latent = pre_t.new_empty(n_latents)
    width = (caps + 1).clamp_max(n_tokens)
    group = torch.ceil(torch.log2(width.double())).long()
    toks, feats, vals = [], [], []
    for g in group.unique().tolist():
        ids = (group == g).nonzero().squeeze(1)
        m = caps[ids]
        v, t = pre_t.index_select(0, ids).topk(min(int(width[ids].max()), n_local), dim=1)
        # Each latent's cut is midway between its last kept and first rejected value. With m of
        # a few tokens, the m-th largest alone sits high: the calibrated latent then fires on
        # ~m − ½ tokens per batch (for exponential tails), 10-20% short of training's L0.
        if world.size == 1:
            last = v.gather(1, (m - 1)[:, None]).squeeze(1)
            nxt = v.gather(1, m.clamp_max(v.shape[1] - 1)[:, None]).squeeze(1)
            keep = torch.arange(v.shape[1], device=v.device)[None, :] < m[:, None]
        else:  # the m-th and (m+1)-th values of all ranks' slices
            keep, last, top = global_cut(v.t(), m, world)
            keep = keep.t()
            nxt = top.gather(0, m.clamp_max(top.shape[0] - 1)[None]).squeeze(0)
        per_latent[ids] = torch.where(m < n_tokens, (last + nxt) / 2, last)
        toks.append(t[keep])
        vals.append(v[keep])
        feats.append(ids[:, None].expand_as(keep)[keep])
    tok, feat, val = torch.cat(toks), torch.cat(feats), torch.cat(vals)
    cut = val.new_tensor(-math.inf)
    if world.size > 1:
        return (*_global_budget(tok, feat, val, n, world), per_latent)
    if val.numel() > n:  # capacity > 1: the budget binds before the caps do
        top = val.topk(n, sorted=False)
        cut, val = top.values.min(), top.values
        tok, feat = tok[top.indices], feat[top.indices]
    return tok, feat, val, per_latent, cut


def _global_budget(
    tok: Tensor, feat: Tensor, val: Tensor, n: int, world: World
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """capped_topk's budget over all ranks: the n best of every rank's capped picks."""
    cut = val.new_tensor(-math.inf)
    if int(world.sum(val.new_tensor([val.numel()]))) <= n:
        return tok, feat, val, cut
    # Each rank offers its own n best, padded to n so that every rank gathers the same shape.
    top = val.topk(min(n, val.numel()), sorted=False)
    offer = torch.cat([top.values, val.new_full((n - top.values.numel(),), -math.inf)])
    keep, cut, _ = global_cut(offer[:, None], torch.tensor([n], device=val.device), world)
    keep = keep.squeeze(1)[: top.values.numel()]
    ids = top.indices[keep]
    return tok[ids], feat[ids], val[ids], cut.squeeze(0)


class FeatureChoiceSAE(ZipfAuxSAE):
    """A feature choice sparse autoencoder; satisfies trainers.protocol.SparseCoder."""

    def __init__(
        self, d_in: int, cfg: FeatureChoiceConfig, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(d_in, cfg, generator=generator, per_feature=True)

    def cap(self, n_tokens: int) -> int:
        """The uniform cap m = ⌈capacity·k·B/d_sae⌉ (cap_dist="uniform")."""
        return min(n_tokens, math.ceil(self.cfg.capacity * self.k * n_tokens / self.d_sae))

    def caps(self, n_tokens: int) -> Int[Tensor, " d_sae"]:
        """m_i: the most tokens latent i may take from a batch of n_tokens."""
        device = self.usage.device
        if self.cfg.cap_dist == "uniform" or self.cfg.zipf_exponent == 0:
            return torch.full((self.d_sae,), self.cap(n_tokens), device=device)
        total = math.ceil(self.cfg.capacity * self.k * n_tokens)
        # A batch too small for one match per latent (k·B < d_sae) still gives each latent one.
        total = min(max(total, self.d_sae), self.d_sae * n_tokens)
        key = (total, n_tokens, device)
        if getattr(self, "_by_rank", (None,))[0] != key:  # the same every step: computed once
            self._by_rank = (key, zipf_caps(self.d_sae, total, self.cfg.zipf_exponent,
                                            n_tokens).to(device))
        by_rank = self._by_rank[1]
        # Stable, so ties (e.g. at the first step, when every usage is 0) rank by latent id.
        order = self.usage.argsort(descending=True, stable=True)
        return torch.empty_like(by_rank).scatter_(0, order, by_rank)

    def _allocate(self, x_c: Tensor, world: World = SINGLE) -> Selection:
        n_tokens = x_c.shape[0] * world.size  # caps and budget count the global batch
        tok, feat, vals, per_latent, cut = capped_topk(
            self.W_enc, self.b_enc, x_c, self.caps(n_tokens), self.k * n_tokens, world)
        feat, vals, offsets = to_csr(tok, feat, vals, x_c.shape[0])
        # Latent i kept the entries above both its own m-th value and the global cut; ≤ 0
        # means it fired on everything positive, which θ_i = 0 reproduces.
        return Selection(feat, vals, offsets, per_latent.float().clamp_min(cut).clamp_min(0))
