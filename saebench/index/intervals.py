"""Pass 2: activation histograms and samples from activation-interval buckets.

Buckets split (0, max_act] into equal intervals; bucket b holds activations in
(b/B·max, (b+1)/B·max]. Each bucket keeps the first `per_bucket` activations met in store
order, which makes a resumed run identical to an uninterrupted one. Showing samples across
the whole range, not only the top, follows Bricken et al. 2023 ("Towards Monosemanticity",
feature browser: "subsample intervals").
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from saebench.index.batches import windows


def new_intervals(d_sae: int, bins: int, buckets: int, per: int, width: int) -> dict:
    return {
        "hist": torch.zeros(d_sae, bins, dtype=torch.int64),
        "iv_count": torch.zeros(d_sae, buckets, dtype=torch.int64),
        "iv_act": torch.zeros(d_sae, buckets, per),
        "iv_loc": torch.full((d_sae, buckets, per), -1, dtype=torch.int64),
        "iv_win": torch.zeros(d_sae, buckets, per, width, dtype=torch.float16),
    }


def bin_of(act: Tensor, max_act: Tensor, n_bins: int) -> Tensor:
    """Equal-width bin of (0, max] for each positive activation (max lands in the last bin)."""
    b = torch.ceil(act / max_act * n_bins).long() - 1
    return b.clamp(0, n_bins - 1)


def _first_per_key(key: Tensor, filled: Tensor, per: int) -> tuple[Tensor, Tensor]:
    """Indices (in original order) of entries that still fit in their key's `per` slots."""
    order = torch.argsort(key, stable=True)  # stable: store order within each key
    sorted_key = key[order]
    _, counts = torch.unique_consecutive(sorted_key, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(key), device=key.device) - starts.repeat_interleave(counts)
    slot = filled[sorted_key] + rank
    keep = slot < per
    return order[keep], slot[keep]


def update_intervals(
    iv: dict, codes: Float[Tensor, "seq ctx d_sae"], first_seq: int, max_act: Tensor, n: int
) -> None:
    """Add one batch to the histograms and to the not yet full interval buckets."""
    n_seq, ctx, d_sae = codes.shape
    flat = codes.reshape(-1, d_sae)
    row, latent = flat.nonzero(as_tuple=True)  # row-major: store order
    if not len(row):
        return
    act = flat[row, latent]
    top = max_act.to(codes.device)[latent]
    n_bins, (buckets, per) = iv["hist"].shape[1], iv["iv_act"].shape[1:]
    hist_key = (latent * n_bins + bin_of(act, top, n_bins)).cpu()
    iv["hist"].view(-1).index_add_(0, hist_key, torch.ones_like(hist_key))
    key = latent * buckets + bin_of(act, top, buckets)
    take, slot = _first_per_key(key, iv["iv_count"].view(-1).to(key.device), per)
    if not len(take):
        return
    lat, bucket, slot = latent[take].cpu(), (key[take] % buckets).cpu(), slot.cpu()
    iv["iv_act"][lat, bucket, slot] = act[take].cpu()
    iv["iv_loc"][lat, bucket, slot] = (row[take].cpu() + first_seq * ctx)
    win = windows(codes, row[take] // ctx, row[take] % ctx, latent[take], n)
    iv["iv_win"][lat, bucket, slot] = win.cpu().half()
    iv["iv_count"].view(-1).index_add_(0, key[take].cpu(), torch.ones_like(slot))
