"""Codes of the train split in sequence-aligned batches, BOS positions zeroed.

Batches hold whole windows so that a context (±N tokens around a position) never crosses a
batch: its activations are read from the same batch that found it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from store.shards import as_tensor


@dataclass(frozen=True)
class ChunkPlan:
    """One store chunk as the index reads it: its first `n_seq` windows."""

    chunk: object
    first_seq: int
    n_seq: int


def plan_chunks(store, tokens: int | None) -> list[ChunkPlan]:
    """The train chunks to read; a token limit is rounded up to whole windows."""
    per_seq = store.ctx - 1  # position 0 (BOS) is never indexed
    left = math.inf if tokens is None else math.ceil(tokens / per_seq)
    plans = []
    for chunk in store.split_chunks("train"):
        if left <= 0:
            break
        n = int(min(chunk.n_seq, left))
        plans.append(ChunkPlan(chunk, chunk.first_seq, n))
        left -= n
    return plans


def seqs_per_batch(ctx: int, batch_tokens: int) -> int:
    return max(1, batch_tokens // ctx)


def n_batches(plans: list[ChunkPlan], ctx: int, batch_tokens: int) -> int:
    per = seqs_per_batch(ctx, batch_tokens)
    return sum(math.ceil(p.n_seq / per) for p in plans)


@torch.no_grad()
def chunk_codes(
    store, sae, plan: ChunkPlan, batch_tokens: int, device: str
) -> Iterator[tuple[int, Float[Tensor, "seq ctx d_sae"]]]:
    """(first global seq, codes [seq, ctx, d_sae]) per batch; codes at position 0 are zero."""
    words = store.chunk_words(plan.chunk)
    ctx, per = store.ctx, seqs_per_batch(store.ctx, batch_tokens)
    for lo in range(0, plan.n_seq, per):
        hi = min(plan.n_seq, lo + per)
        x = as_tensor(np.array(words[lo * ctx : hi * ctx]), store.dtype).to(device)
        codes = sae.encode(x.float()).float().view(hi - lo, ctx, -1)
        codes[:, 0] = 0.0  # BOS: the SAE never trained on it and the store never serves it
        yield plan.first_seq + lo, codes


def windows(
    codes: Float[Tensor, "seq ctx d_sae"], seq: Tensor, pos: Tensor, latent: Tensor, n: int
) -> Float[Tensor, "entries window"]:
    """Each entry's latent activations on positions pos-n..pos+n of its sequence (0 outside)."""
    ctx = codes.shape[1]
    idx = pos[:, None] + torch.arange(-n, n + 1, device=pos.device)
    valid = (idx >= 0) & (idx < ctx)
    got = codes[seq[:, None], idx.clamp(0, ctx - 1), latent[:, None]]
    return torch.where(valid, got, torch.zeros((), device=got.device))
