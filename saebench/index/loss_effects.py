"""Loss effect of each top context's tokens: how much worse the model predicts the next token
when the latent is ablated (SAEDashboard's per-token "loss contribution", here by ablation).

For a top context (latent f, sequence s) the model runs on s up to the window's end with f's
decoder contribution removed at the SAE's hook, at every position but BOS (whose codes the
index zeroes too): x ← x − codes_f · W_dec[f]. The rest of x, the other latents and the SAE's
error term, is kept, so only f's own contribution moves (SAELens's `use_error_term=True`).
The value at window position q is CE_ablated − CE_clean of predicting token q+1 from q:
positive where the latent helped predict the next token; NaN where there is no next token.

Cost: one model run per top context (d_sae · top runs, whatever the number of indexed tokens)
plus one clean run per distinct sequence, with the unembedding only at window positions from
the latent's first firing on. That is far more than the index's own passes (which only
encode stored activations): on the tiny test workspace (64 latents x 20 contexts, a 2-layer
model with SmolLM2's 49k vocabulary) 0.8 s became 25-38 s on 2 CPU cores, and a 16k-latent
SmolLM2 SAE over 10M tokens would be ~16x its index. So by default it runs only when it is
cheap in absolute terms or next to the passes (write.loss_effects_on).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Int
from torch import Tensor

# Floats per intermediate (logits, codes) in one batch: bounds memory whatever the vocabulary.
BUDGET = 1 << 24


def estimated_flops(model, n_contexts: int, mean_len: float, width: int) -> float:
    """FLOPs of the ablated runs: the blocks over each prefix, the unembedding per window."""
    block_params = sum(p.numel() for p in model.blocks.parameters())
    per_run = mean_len * block_params + width * model.cfg.d_model * model.cfg.d_vocab
    return 2.0 * n_contexts * per_run


def runs_on(hook: str) -> bool:
    """Whether the residual after the last block still depends on this hook's activation."""
    return hook.startswith(("blocks.", "hook_embed", "hook_pos_embed"))


def _nll(model, resid: Tensor, target: Tensor) -> Tensor:
    """-log p(target) from residuals after the last block, `resid [..., d_model]`."""
    # log_softmax then a gather: on CPU it ran 1.7x faster than logsumexp (fused kernel).
    logp = model.unembed(model.ln_final(resid)).float().log_softmax(-1)
    return -logp.gather(-1, target[..., None]).squeeze(-1)


def _ablate_hook(sae, latents: Tensor, first: dict):
    """A hook removing latent `latents[b]`'s contribution from row b at positions >= 1; it
    records in `first["pos"]` where each row's latent first fires (earlier positions cannot
    change: attention is causal)."""
    W_dec = sae.W_dec.detach()

    def hook(act: Tensor, hook) -> Tensor:  # TransformerLens passes the HookPoint as `hook`
        d_in = W_dec.shape[1]
        flat = act.flatten(2) if act.ndim == 4 and act.shape[-1] != d_in else act
        b, n = flat.shape[0], flat.shape[1] - 1
        codes = sae.encode(flat[:, 1:].reshape(-1, d_in).to(W_dec.dtype)).float()
        a = codes.view(b, n, -1)[torch.arange(b)[:, None], torch.arange(n)[None], latents[:, None]]
        fires = torch.cat([torch.zeros_like(a[:, :1]), a], 1) > 0
        first["pos"] = torch.where(fires.any(1), fires.int().argmax(1), flat.shape[1])
        out = flat.clone()
        out[:, 1:] -= (a[..., None] * W_dec[latents].float()[:, None, :]).to(out.dtype)
        return out.reshape(act.shape)

    return hook


def _batches(lengths: Tensor, floats_per_row: Callable[[int], int]) -> list[Tensor]:
    """Indices by decreasing length, cut so that each batch's largest tensor fits BUDGET."""
    order = torch.argsort(lengths, descending=True, stable=True)
    out, i = [], 0
    while i < len(order):
        size = max(1, BUDGET // max(floats_per_row(int(lengths[order[i]])), 1))
        out.append(order[i : i + size])
        i += size
    return out


@torch.no_grad()
def top_loss_effects(
    model, sae, hook: str, tokens: Int[Tensor, "seq ctx"], first_seq: int, stats: dict, n: int,
    device: str = "cpu",
) -> Tensor:
    """[d_sae, top, 2n+1] float16: ΔCE per window position of every top context (NaN: none)."""
    top_act, top_loc = stats["top_act"], stats["top_loc"]
    d_sae, top = top_act.shape
    ctx, width = tokens.shape[1], 2 * n + 1
    out = torch.full((d_sae, top, width), float("nan"), dtype=torch.float16)
    latent, slot = (top_act > 0).nonzero(as_tuple=True)
    if not len(latent):
        return out
    loc = top_loc[latent, slot]
    seq, pos = torch.div(loc, ctx, rounding_mode="floor") - first_seq, loc % ctx
    where = pos[:, None] + torch.arange(-n, n + 1)  # [E, W] store positions of each window
    valid = (where >= 0) & (where < ctx - 1)  # the last position predicts nothing
    length = (pos + n + 2).clamp(max=ctx)  # tokens a run needs: targets up to pos + n + 1
    tokens = tokens.to(device)
    vocab = int(model.cfg.d_vocab)
    clean = torch.zeros(len(latent), width)
    uniq, inv = torch.unique(seq, return_inverse=True)
    seq_len = torch.zeros(len(uniq), dtype=torch.long).scatter_reduce(0, inv, length, "amax")
    for part in _batches(seq_len, lambda L: L * vocab):  # clean: once per distinct sequence
        toks = tokens[uniq[part], : int(seq_len[part].max())]
        resid = model(toks, stop_at_layer=model.cfg.n_layers)
        nll = _nll(model, resid[:, :-1], toks[:, 1:]).cpu()  # [B, L - 1]
        local = torch.full((len(uniq),), -1, dtype=torch.long)
        local[part] = torch.arange(len(part))
        mine = (local[inv] >= 0).nonzero(as_tuple=True)[0]
        at = where[mine].clamp(0, nll.shape[1] - 1)
        clean[mine] = nll[local[inv[mine]][:, None], at]
    for part in _batches(length, lambda L: max(L * d_sae, width * vocab)):
        toks = tokens[seq[part], : int(length[part].max())]
        first: dict = {}
        fwd = [(hook, _ablate_hook(sae, latent[part].to(device), first))]
        resid = model.run_with_hooks(toks, fwd_hooks=fwd, stop_at_layer=model.cfg.n_layers)
        w = where[part]
        moved = valid[part] & (w >= first["pos"].cpu()[:, None])  # the rest is exactly 0
        row, col = moved.nonzero(as_tuple=True)
        q = w[row, col].to(device)
        ablated = _nll(model, resid[row.to(device), q], toks[row.to(device), q + 1]).cpu()
        diff = torch.where(valid[part], 0.0, float("nan"))
        diff[row, col] = ablated - clean[part][row, col]
        out[latent[part], slot[part]] = diff.half()
    return out
