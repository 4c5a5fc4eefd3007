"""Splicing SAEs into a TransformerLens model: x = x̂ + err at each hook, and the metric.

Marks et al. 2024 (§2, "Sparse Feature Circuits") rewrite the model so that each hooked
activation is the SAE reconstruction plus an error term, err = x − x̂, computed on the same run;
the output is then the clean model's exactly, while every latent and every error is a node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from jaxtyping import Float
from torch import Tensor

from saebench.tasks import TaskBatch


def tokens_of(x: Tensor) -> Float[Tensor, "tokens d_in"]:
    """[batch, pos, d] or [batch, pos, heads, d_head] (`attn.hook_z`) as one row per token.

    Per-head hooks are flattened head-major, as SAELens does for `hook_z` SAEs, so latent
    decoder rows split into per-head slices (saebench.circuits.collapse relies on this).
    """
    return x.reshape(x.shape[0] * x.shape[1], -1)


def encode_split(sae, x: Float[Tensor, "tokens d_in"]) -> tuple[Tensor, Tensor]:
    """(codes, err) with err = x − x̂: the hook's nodes (Marks et al. 2024, §2)."""
    codes = sae.encode(x)
    return codes, x - sae.decode(codes)


def last_logits(
    model, batch: TaskBatch, tokens: Tensor, fwd_hooks: list
) -> tuple[Float[Tensor, "pairs 1 vocab"], TaskBatch]:
    """Logits at each pair's `pos` only under `fwd_hooks`, and the batch re-pointed at them."""
    resid = model.run_with_hooks(tokens, fwd_hooks=fwd_hooks, stop_at_layer=model.cfg.n_layers)
    # Only the metric position is read: unembedding every position (vocab 49k) costs ~20%.
    picked = resid[torch.arange(len(batch), device=resid.device), batch.pos]
    # Models without normalisation (normalization_type=None) have no ln_final.
    final = getattr(model, "ln_final", None) or (lambda x: x)
    logits = model.unembed(final(picked[:, None]))
    return logits, replace(batch, pos=torch.zeros_like(batch.pos))


def metric(model, task, batch: TaskBatch, tokens: Tensor, fwd_hooks: list) -> Tensor:
    """The task's per-pair metric under `fwd_hooks`."""
    return task.metric(*last_logits(model, batch, tokens, fwd_hooks))


def leaf_hook(sae, rec: dict, *, attached: bool) -> Callable:
    """A hook making the codes and error differentiable leaves while leaving x unchanged.

    x' = x + (dec(c) − dec(c)ᵍ) + (e − eᵍ) (ᵍ: detached) equals x exactly, passes the clean
    gradient to x (so upstream nodes get total derivatives, downstream errors recomputing as in
    an activation patch), and gives ∂m/∂c = W_dec·∂m/∂x, ∂m/∂e = ∂m/∂x. With `attached`, the
    codes and error as functions of x are kept too (`c_att`, `e_att`) for edge VJPs.
    """

    def fn(x: Tensor, hook) -> Tensor:
        flat = tokens_of(x)
        with torch.set_grad_enabled(attached and flat.requires_grad):
            c_att, e_att = encode_split(sae, flat)
        c = c_att.detach().requires_grad_()
        e = e_att.detach().requires_grad_()
        x_hat = c @ sae.W_dec
        out = flat + (x_hat - x_hat.detach()) + (e - e.detach())
        rec[hook.name] = {"c": c, "e": e, "c_att": c_att, "e_att": e_att}
        return out.reshape(x.shape)

    return fn


def record_hook(sae, rec: dict) -> Callable:
    """A hook that stores the codes and error (no grad) and leaves x unchanged."""

    def fn(x: Tensor, hook) -> Tensor:
        c, e = encode_split(sae, tokens_of(x))
        rec[hook.name] = {"c": c.detach(), "e": e.detach()}
        return x

    return fn


def interp_hook(sae, clean: dict, corrupt: dict, alpha: float, rec: dict) -> Callable:
    """Integrated gradients (Marks et al. 2024, eq. 4): this hook's nodes set to a point on
    the line clean → corrupt, as leaves; later hooks compute normally (x̂ + err = x)."""

    def fn(x: Tensor, hook) -> Tensor:
        c = torch.lerp(clean["c"], corrupt["c"], alpha).requires_grad_()
        e = torch.lerp(clean["e"], corrupt["e"], alpha).requires_grad_()
        rec[hook.name] = {"c": c, "e": e}
        return (sae.decode(c) + e).reshape(x.shape)

    return fn


def gated_hook(sae, gate: Tensor, mean: dict) -> Callable:
    """Each node moved towards its ablation value by (1 − gate): gate 1 keeps it, 0 ablates it
    (Marks et al. 2024, circuit evaluation; soft gates for saebench.circuits.mask).

    gate: [pairs or 1, pos, d_sae + 1] (the last column is the error node); mean: {"c":
    [pairs or 1, pos, d_sae], "e": [pairs or 1, pos, d_in]}, one value per pair or one for
    all. Written as x + (values − actual) on the ablated part, so all-open gates give x."""

    def fn(x: Tensor, hook) -> Tensor:
        (b, s), flat = x.shape[:2], tokens_of(x)
        d = flat.shape[1]
        c, e = encode_split(sae, flat)
        drop = 1 - gate[:, :s].to(x.device)
        dc = (mean["c"][:, :s] - c.view(b, s, -1)) * drop[..., :-1]
        de = (mean["e"][:, :s] - e.view(b, s, d)) * drop[..., -1:]
        return (flat.view(b, s, d) + (dc.reshape(b * s, -1) @ sae.W_dec).view(b, s, d)
                + de).reshape(x.shape)

    return fn


def ablate_hook(sae, keep: Tensor | None, mean: dict) -> Callable:
    """Mean-ablate every node outside `keep`: gated_hook with hard gates shared by all pairs.

    keep: Bool [pos, d_sae + 1] (the last column is the error node); None keeps everything.
    mean: {"c": [pos, d_sae], "e": [pos, d_in]}.
    """
    if keep is None:
        return lambda x, hook: x
    return gated_hook(sae, keep.float()[None], {k: v[None] for k, v in mean.items()})
