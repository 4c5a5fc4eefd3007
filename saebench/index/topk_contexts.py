"""Pass 1: fire counts, maxima and a running top-k of activating tokens per latent.

Each batch's top-k per latent (torch.topk over tokens) is merged into the running top-k, so
memory is O(d_sae · k) whatever the data size. Locations are global token indices
`seq · ctx + pos`. Pass 2 then fills in each top context's window of activations.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from saebench.index.batches import windows


def new_stats(d_sae: int, top: int, width: int) -> dict[str, Tensor]:
    """The pass-1 state (and the top windows that pass 2 fills)."""
    return {
        "fires": torch.zeros(d_sae, dtype=torch.int64),
        "act_sum": torch.zeros(d_sae, dtype=torch.float64),
        "max_act": torch.zeros(d_sae),
        "top_act": torch.zeros(d_sae, top),
        "top_loc": torch.full((d_sae, top), -1, dtype=torch.int64),
        "top_win": torch.zeros(d_sae, top, width, dtype=torch.float16),
    }


def update_stats(
    stats: dict[str, Tensor], codes: Float[Tensor, "seq ctx d_sae"], first_seq: int
) -> None:
    """Merge one batch into the counts, sums, maxima and running top-k."""
    n_seq, ctx, d_sae = codes.shape
    flat = codes.reshape(-1, d_sae)
    stats["fires"] += (flat > 0).sum(0).cpu()
    stats["act_sum"] += flat.sum(0, dtype=torch.float64).cpu()
    stats["max_act"] = torch.maximum(stats["max_act"], flat.max(0).values.cpu())
    top = stats["top_act"].shape[1]
    act, row = flat.topk(min(top, len(flat)), dim=0)  # [k, d_sae]
    loc = row.cpu().T + first_seq * ctx
    acts = torch.cat([stats["top_act"], act.cpu().T], dim=1)
    locs = torch.cat([stats["top_loc"], loc], dim=1)
    best, pick = acts.topk(top, dim=1)
    stats["top_act"], stats["top_loc"] = best, locs.gather(1, pick)


def fill_top_windows(
    stats: dict[str, Tensor], codes: Float[Tensor, "seq ctx d_sae"], first_seq: int, n: int
) -> None:
    """Pass 2: record the ±n window of activations of every top entry inside this batch."""
    n_seq, ctx, _ = codes.shape
    loc, act = stats["top_loc"], stats["top_act"]
    seq = torch.div(loc, ctx, rounding_mode="floor")
    inside = (act > 0) & (seq >= first_seq) & (seq < first_seq + n_seq)
    latent, slot = inside.nonzero(as_tuple=True)
    if not len(latent):
        return
    where = loc[latent, slot]
    dev = codes.device
    win = windows(
        codes,
        (torch.div(where, ctx, rounding_mode="floor") - first_seq).to(dev),
        (where % ctx).to(dev),
        latent.to(dev),
        n,
    )
    stats["top_win"][latent, slot] = win.cpu().half()
