"""Logit lens of each latent: the tokens its decoder direction promotes and suppresses.

`W_dec[f] · W_U` (nostalgebraist 2020; Bricken et al. 2023, "logit weights") is only
meaningful when the SAE writes into the residual stream the unembedding reads: the residual
hooks, and the attention and MLP outputs that are added to it. At an attention layer's
`hook_z` (per-head values mixed by the pattern, before W_O) a decoder row reaches the residual
through W_O, so its direct logit effect is `W_dec[f] · W_O · W_U` (Kissane et al. 2024,
arXiv 2406.17759, read attention-output latents the same way). Other hooks are skipped with a
note. Layer norms before the unembedding are ignored, as in the plain logit lens.
"""

from __future__ import annotations

import re

import torch
from jaxtyping import Float
from torch import Tensor

_RESIDUAL = re.compile(r"(^|\.)hook_(resid_(pre|mid|post)|attn_out|mlp_out)$")
_HOOK_Z = re.compile(r"^blocks\.(\d+)\.attn\.hook_z$")


def unembed_for(store_meta: dict, d_in: int, device: str) -> tuple[Tensor | None, str | None]:
    """(W_U [d_model, d_vocab], None), or (None, why the logit lens is skipped)."""
    hook = str(store_meta.get("hook", ""))
    z = _HOOK_Z.match(hook)
    if not _RESIDUAL.search(hook) and z is None:
        return None, f"logit lens skipped: hook {hook!r} is not on the residual stream"
    if not store_meta.get("model"):
        return None, "logit lens skipped: the store does not record its model"
    from store.models import load_model

    model = load_model(store_meta["model"], device)
    W_U = model.W_U.detach().float()
    if z is not None:  # [n_heads, d_head, d_model] stacked to [n_heads * d_head, d_model]
        W_O = model.W_O[int(z[1])].detach().float()
        W_O = W_O.reshape(-1, W_O.shape[-1])
        if W_O.shape[0] != d_in:
            return None, f"logit lens skipped: d_in {d_in} != n_heads × d_head {W_O.shape[0]}"
        return W_O @ W_U, None
    if model.cfg.d_model != d_in:
        return None, f"logit lens skipped: d_in {d_in} != the model's d_model {model.cfg.d_model}"
    return W_U, None


def logit_effects(
    W_dec: Float[Tensor, "d_sae d_in"], W_U: Float[Tensor, "d_in d_vocab"], n: int,
    block: int = 1024,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(top values, top ids, bottom values, bottom ids), each `[d_sae, n]`."""
    d_sae = W_dec.shape[0]
    k = min(n, W_U.shape[1])
    out = [torch.empty(d_sae, k), torch.empty(d_sae, k, dtype=torch.int64)] * 2
    out = [t.clone() for t in out]
    W_U = W_U.to(W_dec.device).float()
    for lo in range(0, d_sae, block):
        effects = W_dec[lo : lo + block].float() @ W_U  # [b, d_vocab]
        top, top_id = effects.topk(k, dim=1)
        bot, bot_id = effects.topk(k, dim=1, largest=False)
        for t, v in zip(out, (top, top_id, bot, bot_id), strict=True):
            t[lo : lo + block] = v.cpu()
    return out[0], out[1], out[2], out[3]
