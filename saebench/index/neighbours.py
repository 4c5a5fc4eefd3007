"""Nearest latents by decoder cosine similarity (block by block, never d_sae² at once)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def decoder_neighbours(
    W_dec: Float[Tensor, "d_sae d_in"], n: int, block: int = 1024
) -> tuple[Tensor, Tensor]:
    """(cosines, others) `[d_sae, n]`: each latent's most similar decoder rows, self excluded."""
    d_sae = W_dec.shape[0]
    k = min(n, d_sae - 1)
    unit = W_dec.float() / W_dec.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    vals = torch.full((d_sae, n), -torch.inf)
    others = torch.full((d_sae, n), -1, dtype=torch.int64)
    if k < 1:
        return vals, others
    for lo in range(0, d_sae, block):
        hi = min(d_sae, lo + block)
        cos = unit[lo:hi] @ unit.T  # [b, d_sae]
        cos[torch.arange(hi - lo), torch.arange(lo, hi)] = -torch.inf
        v, i = cos.topk(k, dim=1)
        vals[lo:hi, :k], others[lo:hi, :k] = v.cpu(), i.cpu()
    return vals, others
