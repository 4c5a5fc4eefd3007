"""Feature circuits collapsed to attention heads, to score them against head-level ground truth.

With SAEs at `blocks.L.attn.hook_z` (every head's output before W_O, flattened head-major, as
SAELens does for attention SAEs), each latent's decoder row is a direction across heads, and
attribution patching (Marks et al. 2024, eq. 3) is linear in it, so a node's effect splits
exactly into per-head parts:

    effect(j)   = Σ_t Δc_tj · W_dec[j]·g_t  =  Σ_h  Σ_t Δc_tj · W_dec[j, h]·g_t,h
    effect(err) = Σ_h  Σ_t Δe_t,h · g_t,h

with g = ∂m/∂z at the clean run, Δ = clean − patch (corrupt or mean), t over pairs and
positions. A head's score for a circuit C is Σ_{n ∈ C} |effect(n, h)|: how much of the
circuit's effect flows through that head. With every node in C it is per-head attribution
patching; a thresholded circuit keeps only what its latents and errors route through each
head.
"""

from __future__ import annotations

import re

import torch
from jaxtyping import Float, Int
from torch import Tensor

from saebench.circuits.attribution import chunks, clean_means, leaf_grads, reference
from saebench.circuits.heads import head_name
from saebench.circuits.saes import SAESet
from saebench.circuits.splice import last_logits, leaf_hook, metric, record_hook
from saebench.tasks import TaskBatch
from store.errors import UserError

_HOOK_Z = re.compile(r"^blocks\.(\d+)\.attn\.hook_z$")


def per_head(sset: SAESet) -> bool:
    """Whether every SAE of the set sits at an `attn.hook_z` (so the circuit collapses)."""
    return all(_HOOK_Z.match(hook) for hook in sset.hooks)


def head_layers(sset: SAESet) -> dict[str, int]:
    """hook -> layer for a set of `attn.hook_z` SAEs; anything else is a one-line error."""
    layers = {}
    for hook in sset.hooks:
        match = _HOOK_Z.match(hook)
        if not match:
            raise UserError(f"collapsing to heads needs SAEs at blocks.L.attn.hook_z; {hook} "
                            "is not a per-head hook")
        layers[hook] = int(match.group(1))
    return layers


def head_effects(
    model, sset: SAESet, task, batch: TaskBatch, *, patch: str = "mean",
    batch_size: int = 32,
) -> dict[str, Float[Tensor, "node heads"]]:
    """hook -> [d_sae + 1, heads]: each node's attribution effect split over heads (the last
    row is the error node). Rows sum over heads to the node effects of `node_effects` with
    the same `patch`."""
    head_layers(sset)
    n_heads, n = model.cfg.n_heads, len(batch)
    out = {h: torch.zeros(sae.d_sae + 1, n_heads) for h, sae in sset.items()}
    means = clean_means(model, sset, task, batch, batch_size) if patch == "mean" else {}
    for idx in chunks(batch, batch_size):
        sub = batch.select(idx).to(model.cfg.device)
        clean: dict = {}
        with torch.enable_grad():
            hooks = [(h, leaf_hook(sae, clean, attached=False)) for h, sae in sset.items()]
            logits, at0 = last_logits(model, sub, sub.clean, hooks)
            grads = leaf_grads(task.metric(logits, at0).sum() / n, clean, sset.hooks)
        corrupt: dict = {}
        with torch.no_grad():
            metric(model, task, sub, sub.corrupt,
                   [(h, record_hook(sae, corrupt)) for h, sae in sset.items()])
            ref = reference(patch, corrupt, means, *sub.clean.shape)
            for h, sae in sset.items():
                # The error leaf's gradient is ∂m/∂z itself (splice.leaf_hook).
                g = grads[h]["e"].view(-1, n_heads, sae.d_in // n_heads)
                dc = clean[h]["c"] - ref[h]["c"]
                de = (clean[h]["e"] - ref[h]["e"]).view_as(g)
                w = sae.W_dec.view(sae.d_sae, n_heads, -1)
                per_latent = torch.einsum("tj,jhd,thd->jh", dc, w, g)
                out[h] += torch.cat([per_latent, (de * g).sum((0, 2))[None]]).cpu()
    return out


def collapse(
    effects: dict[str, Float[Tensor, "node heads"]],
    sset: SAESet,
    kept: dict[str, Int[Tensor, "K 2"]] | None = None,
) -> dict[str, float]:
    """`layer.head` -> Σ over the circuit's nodes of |that node's effect through the head|.

    `kept`: the circuit as (pos or -1, node) per hook (attribution.kept_nodes); positions are
    ignored, since the effects are summed over them. None takes every node.
    """
    layers = head_layers(sset)
    scores = {}
    for hook, eff in effects.items():
        rows = eff if kept is None else eff[kept[hook][:, 1].unique()]
        for head, value in enumerate(rows.abs().sum(0).tolist()):
            scores[head_name(layers[hook], head)] = value
    return dict(sorted(scores.items(), key=lambda kv: -kv[1]))
