"""Contexts for autointerp: which latents to explain and the token windows shown for each.

Two encode passes over the held-out split: the first counts fires of every latent (a latent is
alive with at least `min_fires`, SAEBench's rule), the second keeps the codes of the sampled
latents only, laid out as the store's windows, so that memory is tokens × n_latents rather than
tokens × d_sae. The sampling of contexts follows SAEBench's autointerp (Karvonen et al. 2025,
arXiv 2503.09532, §autointerp; itself after Bills et al. 2023 and Paulo et al. 2024): top
contexts with no two overlapping, importance-sampled contexts (probability ∝ activation) from
below the top, and uniformly random contexts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from saebench.evals.autointerp_config import AutointerpConfig
from saebench.evals.context import HELDOUT, EvalContext


@dataclass(frozen=True)
class Context:
    """One token window of the held-out split and one latent's activations on it."""

    tokens: tuple[int, ...]
    acts: tuple[float, ...]
    kind: str
    """'top', 'iw' (importance-sampled) or 'random'."""

    def fires(self, threshold: float) -> bool:
        """Whether the latent fires on this context: the detection test's ground truth."""
        return max(self.acts, default=0.0) > threshold


@dataclass(frozen=True)
class LatentContexts:
    """What the explainer sees and what the detection test asks about, for one latent."""

    latent: int
    explain: list[Context]
    """Top then importance-sampled contexts, strongest first."""
    score: list[Context]
    """Top, importance-sampled and random contexts, shuffled (seeded)."""
    threshold: float
    """Activations above this count as firing (act_threshold_frac × the top activation)."""


def plan_tokens(ctx: EvalContext, cfg: AutointerpConfig) -> int:
    held = ctx.n_heldout
    return held if cfg.n_tokens is None else min(cfg.n_tokens, held)


@torch.inference_mode()
def fire_counts(ctx: EvalContext, cfg: AutointerpConfig, n_tokens: int) -> Int[Tensor, " d_sae"]:
    """Pass 1: how many of the first `n_tokens` held-out tokens each latent fires on."""
    counts = torch.zeros(int(ctx.sae.d_sae), dtype=torch.int64)
    seen = 0
    for x in ctx.store.iter_activations(HELDOUT, cfg.batch_tokens, limit=n_tokens):
        x = x[: n_tokens - seen].to(ctx.device, ctx.sae_dtype())
        counts += (ctx.sae.encode(x) > 0).sum(0).cpu()
        seen += len(x)
        if seen >= n_tokens:
            break
    return counts


def sample_latents(counts: Tensor, cfg: AutointerpConfig) -> list[int]:
    """A seeded sample of alive latents, in increasing order."""
    alive = torch.nonzero(counts >= cfg.min_fires).flatten()
    g = torch.Generator().manual_seed(cfg.seed)
    pick = alive[torch.randperm(len(alive), generator=g)[: cfg.n_latents]]
    return sorted(pick.tolist())


@torch.inference_mode()
def latent_grid(
    ctx: EvalContext, cfg: AutointerpConfig, latents: list[int], n_tokens: int
) -> tuple[Int[Tensor, "seq ctx"], Float[Tensor, "seq ctx n"]]:
    """Pass 2: the held-out windows and the sampled latents' codes at every position.

    The store serves positions 1..ctx-1 of each window in order, so row r is window
    r // (ctx-1), position 1 + r % (ctx-1); position 0 (BOS) keeps a zero code."""
    seq_len = int(ctx.store.meta["ctx"])
    per = seq_len - 1
    n_seq = -(-n_tokens // per)
    tokens = ctx.store.token_windows(HELDOUT)[:n_seq].long()
    grid = torch.zeros(n_seq * per, len(latents))
    index = torch.tensor(latents, dtype=torch.long, device=ctx.device)
    seen = 0
    for x in ctx.store.iter_activations(HELDOUT, cfg.batch_tokens, limit=n_tokens):
        x = x[: n_tokens - seen].to(ctx.device, ctx.sae_dtype())
        grid[seen : seen + len(x)] = ctx.sae.encode(x).index_select(1, index).float().cpu()
        seen += len(x)
        if seen >= n_tokens:
            break
    acts = torch.zeros(n_seq, seq_len, len(latents))
    acts[:, 1:] = grid.view(n_seq, per, len(latents))
    return tokens, acts


def _window(tokens: Tensor, acts: Tensor, seq: int, pos: int, buffer: int, kind: str) -> Context:
    lo, hi = max(1, pos - buffer), min(tokens.shape[1], pos + buffer + 1)  # BOS never shown
    return Context(tuple(tokens[seq, lo:hi].tolist()), tuple(acts[seq, lo:hi].tolist()), kind)


def top_positions(acts: Float[Tensor, "seq ctx"], k: int, buffer: int) -> list[tuple[int, int]]:
    """The k strongest (seq, pos), skipping any within `buffer` of one already taken in the
    same window, so that the top contexts are distinct texts (SAEBench's no_overlap)."""
    flat = acts.flatten()
    firing = torch.nonzero(flat > 0).flatten()
    order = firing[torch.argsort(flat[firing], descending=True, stable=True)]
    ctx, taken = acts.shape[1], []
    for i in order.tolist():
        seq, pos = divmod(i, ctx)
        if all(s != seq or abs(p - pos) > buffer for s, p in taken):
            taken.append((seq, pos))
            if len(taken) == k:
                break
    return taken


def importance_positions(
    acts: Float[Tensor, "seq ctx"], below: float, k: int, g: torch.Generator
) -> list[tuple[int, int]]:
    """Up to k (seq, pos) drawn without replacement with probability ∝ activation, among the
    activations below the weakest top context's (so they are disjoint from the top ones)."""
    flat = acts.flatten()
    weights = torch.where(flat < below, flat.clamp(min=0), torch.zeros(()))
    n = min(k, int((weights > 0).sum()))
    if n == 0:
        return []
    picks = torch.multinomial(weights.double(), n, replacement=False, generator=g)
    return [divmod(int(i), acts.shape[1]) for i in picks]


def latent_contexts(
    latent: int, tokens: Tensor, acts: Float[Tensor, "seq ctx"], cfg: AutointerpConfig
) -> LatentContexts | None:
    """The explainer's and the detection test's contexts for one latent (None: too few
    distinct top contexts to hold some out for scoring)."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + latent)  # independent of the sample
    top = top_positions(acts, cfg.n_top_explain + cfg.n_top_score, cfg.buffer)
    if len(top) <= cfg.n_top_score:
        return None
    below = min(float(acts[s, p]) for s, p in top)
    iw = importance_positions(acts, below, cfg.n_iw_explain + cfg.n_iw_score, g)
    # Which top and importance-sampled contexts are held out for scoring is itself random,
    # as in SAEBench, so the explainer does not always see the very strongest.
    top = [top[i] for i in torch.randperm(len(top), generator=g).tolist()]
    iw = [iw[i] for i in torch.randperm(len(iw), generator=g).tolist()]
    n_seq, seq_len = acts.shape
    rand = zip(
        torch.randint(0, n_seq, (cfg.n_random_score,), generator=g).tolist(),
        torch.randint(1, seq_len, (cfg.n_random_score,), generator=g).tolist(),
        strict=True,
    )

    def win(where, kind):
        return [_window(tokens, acts, s, p, cfg.buffer, kind) for s, p in where]

    explain = win(top[cfg.n_top_score :], "top") + win(iw[cfg.n_iw_score :], "iw")
    explain.sort(key=lambda c: -max(c.acts))
    score = win(top[: cfg.n_top_score], "top") + win(iw[: cfg.n_iw_score], "iw")
    score += win(rand, "random")
    score = [score[i] for i in torch.randperm(len(score), generator=g).tolist()]
    threshold = cfg.act_threshold_frac * float(acts.max())
    return LatentContexts(latent, explain, score, threshold)
