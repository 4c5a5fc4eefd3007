"""Direct feature attribution (DFA) of an `attn.hook_z` latent to source positions
(Kissane et al. 2024, arXiv 2406.17759, "direct feature attribution"; section not at hand).

Per head h, the layer's output at destination d is z[d, h] = Σ_s A[h, d, s]·v[s, h]
(TransformerLens: `hook_pattern`, `hook_v`, `hook_z`). The SAE reads z flattened head-major,
and its pre-activation is affine in it: pre_f = (z − b_dec)·W_enc[:, f] + b_enc[f]. So with
the attention pattern held at its value on this context, source s contributes exactly

    dfa[s] = Σ_h A[h, d, s]·(v[s, h] · W_enc[h-block, f]),

and Σ_s dfa[s] = pre_f − (b_enc[f] − b_dec·W_enc[:, f]). The bias terms are left
unattributed (our choice): they are the same on every context, so they say nothing about
which source token made this one fire. Attributing through the pattern (rather than also
through the queries and keys that shape it) is the paper's linear decomposition.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from saebench.attn import hook_z_layer
from store.errors import UserError


@dataclass(frozen=True)
class SourceAttribution:
    """One latent's DFA on a batch of contexts, one destination position each."""

    dfa: Float[Tensor, "batch src"]
    """Per source position, its contribution to the pre-activation at the destination (0 at
    and after positions the destination cannot attend to)."""
    pre: Float[Tensor, " batch"]
    """The latent's pre-activation at the destination, from the same forward."""
    bias: float
    """The unattributed constant: b_enc[f] − b_dec·W_enc[:, f] (b_dec only where the SAE
    subtracts it from its input)."""


def expand_kv(v: Float[Tensor, "batch src kv d_head"], n_heads: int) -> Tensor:
    """Grouped-query attention keeps fewer value heads; each serves n_heads/kv query heads
    in order (TransformerLens repeat_interleave's them the same way)."""
    if v.shape[2] == n_heads:
        return v
    return v.repeat_interleave(n_heads // v.shape[2], dim=2)


def encoder_column(sae, latent: int) -> tuple[Float[Tensor, " d_in"], float]:
    """(W_enc[:, f], bias) of a latent; a one-line error for SAEs without an encoder."""
    W_enc = getattr(sae, "W_enc", None)
    if W_enc is None:
        raise UserError("direct feature attribution needs an SAE with an encoder (W_enc); "
                        "matching pursuit has none")
    if not 0 <= latent < W_enc.shape[1]:
        raise UserError(f"latent {latent} is out of range for d_sae {W_enc.shape[1]}")
    w = W_enc[:, latent].detach().float()
    bias = float(sae.b_enc.detach()[latent]) if getattr(sae, "b_enc", None) is not None else 0.0
    if getattr(sae, "apply_b_dec_to_input", True) and getattr(sae, "b_dec", None) is not None:
        bias -= float(sae.b_dec.detach().float() @ w)
    return w, bias


def source_dfa(
    pattern: Float[Tensor, "batch head dest src"], v: Float[Tensor, "batch src head d_head"],
    w: Float[Tensor, " d_in"], dest: Int[Tensor, " batch"],
) -> Float[Tensor, "batch src"]:
    """Σ_h A[h, d, s]·(v[s, h]·w[h-block]) for each context's destination d."""
    b, n_heads, _, n_src = pattern.shape
    w_heads = w.reshape(n_heads, -1)  # head-major, as the SAE's input is flattened
    v_proj = torch.einsum("bshd,hd->bsh", v.float(), w_heads)  # each source's value, read
    rows = pattern[torch.arange(b), :, dest].float()  # [batch, head, src]
    return torch.einsum("bhs,bsh->bs", rows, v_proj)


def attention_at(model, tokens: Int[Tensor, "batch pos"], layer: int) -> tuple[Tensor, Tensor,
                                                                               Tensor]:
    """(pattern, v expanded to every head, z) of one layer, the forward stopped after it."""
    names = [f"blocks.{layer}.attn.hook_{n}" for n in ("pattern", "v", "z")]
    saved: dict[str, Tensor] = {}

    def keep(act, hook):
        saved[hook.name.rsplit("_", 1)[1]] = act.detach()

    with torch.inference_mode():
        model.run_with_hooks(tokens, fwd_hooks=[(n, keep) for n in names],
                             stop_at_layer=layer + 1)
    return saved["pattern"], expand_kv(saved["v"], model.cfg.n_heads), saved["z"]


def direct_feature_attribution(
    model, sae, hook: str, tokens: Int[Tensor, "batch pos"], dest: Int[Tensor, " batch"],
    latent: int,
) -> SourceAttribution:
    """A latent's DFA by source position on each context, at one destination per context."""
    layer = hook_z_layer(hook)
    if layer is None:
        raise UserError(f"direct feature attribution needs an SAE at blocks.L.attn.hook_z, "
                        f"not {hook}")
    if tokens.shape[0] != dest.shape[0] or bool((dest >= tokens.shape[1]).any()):
        raise UserError("one destination position inside each context is needed")
    w, bias = encoder_column(sae, latent)
    pattern, v, z = attention_at(model, tokens, layer)
    dfa = source_dfa(pattern, v, w.to(v.device), dest)
    z_dest = z[torch.arange(len(dest)), dest].flatten(1).float()
    pre = z_dest @ w.to(z.device) + bias
    return SourceAttribution(dfa=dfa, pre=pre, bias=bias)
