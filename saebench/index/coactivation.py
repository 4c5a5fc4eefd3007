"""Pearson correlation of latents' codes over tokens, from a hashed token subsample.

A full d_sae × d_sae running Gram matrix costs 1 GiB at 16k latents (and would be saved
after every chunk), so pass 1 keeps the sparse codes of about COACT_TOKENS tokens instead:
a token is kept when a multiplicative (Fibonacci) hash of its location falls in the lowest
1/stride of the range, which spreads the sample over positions and documents without
aliasing on the window length. When the index covers fewer tokens than that, every token is
used and the correlations are exact. The correlation itself is computed block by block
(sparse Xᵀ · dense block), so memory stays O(d_sae · block).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

_GOLDEN = 2654435761  # Knuth's multiplicative hash constant (2^32 / φ)


def stride_for(total_tokens: int, target: int) -> int:
    return max(1, total_tokens // target)


def new_sample() -> dict[str, Tensor]:
    return {
        "co_tokens": torch.zeros((), dtype=torch.int64),
        "co_loc": torch.zeros(0, dtype=torch.int64),
        "co_lat": torch.zeros(0, dtype=torch.int32),
        "co_val": torch.zeros(0),
    }


def update_sample(
    sample: dict[str, Tensor], codes: Float[Tensor, "seq ctx d_sae"], first_seq: int, stride: int
) -> None:
    """Keep the nonzero codes of this batch's subsampled tokens (BOS excluded)."""
    n_seq, ctx, d_sae = codes.shape
    loc = torch.arange(n_seq * ctx, device=codes.device) + first_seq * ctx
    keep = ((loc * _GOLDEN) % 2**32 < 2**32 // stride) & (loc % ctx != 0)
    rows = keep.nonzero(as_tuple=True)[0]
    sub = codes.reshape(-1, d_sae)[rows]
    r, c = sub.nonzero(as_tuple=True)
    sample["co_tokens"] += len(rows)
    sample["co_loc"] = torch.cat([sample["co_loc"], loc[rows][r].cpu()])
    sample["co_lat"] = torch.cat([sample["co_lat"], c.int().cpu()])
    sample["co_val"] = torch.cat([sample["co_val"], sub[r, c].float().cpu()])


def top_correlated(
    sample: dict[str, Tensor], d_sae: int, n: int, block: int = 1024
) -> tuple[Tensor, Tensor]:
    """(values, others) `[d_sae, n]`, most correlated first; -inf/-1 where undefined."""
    m = int(sample["co_tokens"])
    vals = torch.full((d_sae, n), -torch.inf)
    others = torch.full((d_sae, n), -1, dtype=torch.int64)
    if m < 2 or d_sae < 2 or not len(sample["co_val"]):
        return vals, others
    _, rows = torch.unique(sample["co_loc"], return_inverse=True)
    cols, x = sample["co_lat"].long(), sample["co_val"].double()
    n_rows = int(rows.max()) + 1
    xt = torch.sparse_coo_tensor(
        torch.stack([cols, rows]), x, (d_sae, n_rows), check_invariants=False
    ).coalesce()
    mean = torch.zeros(d_sae, dtype=torch.float64).index_add_(0, cols, x) / m
    sq = torch.zeros(d_sae, dtype=torch.float64).index_add_(0, cols, x * x) / m
    sd = (sq - mean**2).clamp_min(0).sqrt()
    k = min(n, d_sae - 1)
    for lo in range(0, d_sae, block):
        hi = min(d_sae, lo + block)
        inb = (cols >= lo) & (cols < hi)
        dense = torch.zeros(n_rows, hi - lo, dtype=torch.float64)
        dense[rows[inb], cols[inb] - lo] = x[inb]
        cov = torch.sparse.mm(xt, dense) / m - mean[:, None] * mean[None, lo:hi]  # [d, b]
        corr = cov / (sd[:, None] * sd[None, lo:hi])
        corr[~torch.isfinite(corr)] = -torch.inf  # a latent that never fires in the sample
        corr[torch.arange(lo, hi), torch.arange(hi - lo)] = -torch.inf  # not oneself
        corr[:, sd[lo:hi] == 0] = -torch.inf
        v, i = corr.topk(k, dim=0)
        vals[lo:hi, :k], others[lo:hi, :k] = v.T.float(), i.T
    others[~torch.isfinite(vals)] = -1
    return vals, others
