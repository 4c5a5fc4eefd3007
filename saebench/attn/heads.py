"""Weight-based head attribution of `attn.hook_z` latents (Kissane et al. 2024, arXiv
2406.17759, "weight-based head attribution"; the paper's text is not at hand here, so its
section is not cited and the normalisation below is marked as ours).

An SAE at `blocks.L.attn.hook_z` reads every head's output before W_O, flattened head-major
(`[n_heads, d_head] -> n_heads·d_head`, as SAELens and store/caching.py flatten it), so a
decoder row splits into one `d_head` block per head. A latent's share of head h is that
block's share of the row's squared norm: the shares sum to one and need no data.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from store.errors import UserError


def head_shares(
    W_dec: Float[Tensor, "d_sae d_in"], n_heads: int
) -> Float[Tensor, "d_sae n_heads"]:
    """share[f, h] = ‖W_dec[f, h-block]‖² / ‖W_dec[f]‖²: each head's part of a decoder row.

    Squared norms (not norms) so the shares add up to one: the blocks are orthogonal parts
    of the row. Kissane et al. attribute a latent to heads by its per-head decoder weights;
    normalising into shares of the squared norm is our choice, so that latents of any norm
    compare on one scale. A zero row (never trained) gets zero shares rather than NaN.
    """
    d_sae, d_in = W_dec.shape
    if n_heads < 1 or d_in % n_heads:
        raise UserError(f"d_in {d_in} does not split into {n_heads} heads")
    blocks = W_dec.detach().float().reshape(d_sae, n_heads, d_in // n_heads)
    per_head = blocks.pow(2).sum(-1)
    return per_head / per_head.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)


def model_heads(hook: str, d_in: int, model) -> int:
    """n_heads of the model behind a hook_z SAE, checked against its d_in."""
    n_heads, d_head = int(model.cfg.n_heads), int(model.cfg.d_head)
    if n_heads * d_head != d_in:
        raise UserError(f"{hook}: d_in {d_in} != the model's n_heads·d_head "
                        f"({n_heads}·{d_head})")
    return n_heads
