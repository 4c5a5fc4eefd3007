"""Any Hugging Face causal LM in a local folder, as a TransformerLens HookedTransformer.

Why HookedTransformer plus TransformerLens's own converters, not `TransformerBridge`
(measured on tiny random checkpoints, TransformerLens 3.9, transformers 5.24):
- both give HF's logits and HF's hidden states at `blocks.L.hook_resid_post` (no folding or
  centring): the bridge bit-exactly, as it runs HF's own modules; the converters within float
  noise (fp32 max |diff| 2e-6 to 1.5e-5 on logits of scale 3-9; SmolLM2-135M: 4e-5);
- but the bridge's `hook_resid_post` is an alias whose `hook.name` is `blocks.L.hook_out`,
  so every hook function that files activations under `hook.name` (caching, SAELens's
  splicing) would see names that are not SAELens's; and the rest of saebench (circuits,
  evals, the app) uses HookedTransformer's modules (`blocks`, `ln_final`, `unembed`).

The converters come with three gaps in 3.9, bridged here:
- `convert_hf_model_config` picks the architecture from the *path* when it contains "llama"
  or "gemma", then crashes; we hand it a copy of config.json in a neutrally named folder;
- its GPT-2 branch reads `n_ctx`, which transformers 5 no longer writes (`n_positions`);
- it knows Gemma only by hub name; `gemma_config` builds the config from the HF fields,
  and TransformerLens's own Gemma weight converter does the rest.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from store.errors import UserError

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

GEMMA = ("GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM")
# Causal LMs that TransformerLens 3.9 converts from an HF config alone (its
# convert_hf_model_config branches keyed on the config's architecture, each with a state-dict
# converter), plus the Gemma family via gemma_config. GPT-2, GPT-NeoX, Llama, Qwen2, Gemma 2
# and 3 are tested on tiny checkpoints (tests/test_hf_architectures.py); the rest matched HF
# within 2e-5 on tiny checkpoints by hand. Phi (1, 1.5, 2) is left out: TransformerLens reads
# `partial_rotary_factor`, which transformers 5 keeps only inside `rope_parameters`.
SUPPORTED = (
    "GPT2LMHeadModel", "GPTNeoForCausalLM", "GPTJForCausalLM", "GPTNeoXForCausalLM",
    "OPTForCausalLM", "BloomForCausalLM", "LlamaForCausalLM", "MistralForCausalLM",
    "MixtralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Phi3ForCausalLM",
    "ApertusForCausalLM", "Olmo3ForCausalLM", "OlmoeForCausalLM", "GptOssForCausalLM", *GEMMA,
)
# TransformerLens allocates rotary tables and a causal mask of n_ctx positions; long-context
# configs (128k) would need gigabytes for windows we never use. Its hub-name configs cap too.
MAX_CTX = 8192


def hf_architecture(path: Path) -> tuple[dict, str]:
    """The folder's config.json and its architecture, or a UserError saying what is wrong."""
    file = path / "config.json"
    if not file.is_file():
        raise UserError(f"{path}: no config.json, so not a Hugging Face checkpoint folder")
    raw = json.loads(file.read_text())
    arch = (raw.get("architectures") or ["(none given)"])[0]
    if arch not in SUPPORTED:
        raise UserError(
            f"{path}: architecture {arch} is not supported; TransformerLens 3.9 converts "
            f"these from a local folder: {', '.join(SUPPORTED)}"
        )
    return raw, arch


def gemma_config(hf_config, arch: str, n_ctx: int) -> dict:
    """A HookedTransformerConfig dict for a Gemma 1/2/3 text checkpoint, from its HF fields
    (the keys are those of TransformerLens's hub-name Gemma configs)."""
    c = hf_config
    layer_types = getattr(c, "layer_types", None) or ["full_attention"] * c.num_hidden_layers
    rope = getattr(c, "rope_parameters", None) or {}
    full, local = rope.get("full_attention", rope), rope.get("sliding_attention", rope)
    cfg = dict(
        d_model=c.hidden_size, d_head=c.head_dim, n_heads=c.num_attention_heads,
        n_key_value_heads=c.num_key_value_heads, d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers, n_ctx=n_ctx, eps=c.rms_norm_eps, d_vocab=c.vocab_size,
        act_fn=getattr(c, "hidden_activation", None) or c.hidden_act,
        normalization_type="RMS", positional_embedding_type="rotary", final_rms=True,
        gated_mlp=True, use_attn_scale=True,
        rotary_base=full.get("rope_theta", getattr(c, "rope_theta", 10000.0)),
        original_architecture=arch,
    )
    if arch == "GemmaForCausalLM":
        return cfg
    # HF scales attention scores by query_pre_attn_scalar ** -0.5, not always d_head ** -0.5.
    cfg.update(
        attn_scale=float(c.query_pre_attn_scalar) ** 0.5,
        use_normalization_before_and_after=True,
        use_local_attn=True,
        window_size=c.sliding_window,
        attn_types=["local" if t == "sliding_attention" else "global" for t in layer_types],
        attn_scores_soft_cap=getattr(c, "attn_logit_softcapping", None) or -1.0,
        output_logits_soft_cap=getattr(c, "final_logit_softcapping", None) or -1.0,
    )
    if arch == "Gemma3ForCausalLM":
        factor = (full.get("factor") if full.get("rope_type") == "linear" else None) or 1.0
        cfg.update(use_qk_norm=True, rotary_scaling_factor=float(factor),
                   rotary_base_local=local.get("rope_theta", 10000.0))
    return cfg


def hooked_config(
    neutral: Path, raw: dict, arch: str, hf_config, dtype
) -> HookedTransformerConfig:
    """TransformerLens's config for the checkpoint whose config.json is copied to `neutral`."""
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    n_pos = raw.get("max_position_embeddings") or raw.get("n_positions") or MAX_CTX
    if arch in GEMMA:
        cfg = gemma_config(hf_config, arch, min(n_pos, MAX_CTX))
        return HookedTransformerConfig.from_dict({**cfg, "dtype": dtype, "init_weights": False})
    return get_pretrained_model_config(
        str(neutral), hf_cfg=hf_config.to_dict(), fold_ln=False, dtype=dtype,
        n_ctx=MAX_CTX if n_pos > MAX_CTX else None,
    )


def load_hf_dir(path: Path, device: str) -> HookedTransformer:
    """Load a local HF checkpoint folder with HF-exact hook activations (see module doc)."""
    import torch
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import get_pretrained_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    raw, arch = hf_architecture(path)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with tempfile.TemporaryDirectory(prefix="saebench-hfcfg-") as tmp:
        neutral = Path(tmp) / "checkpoint"
        neutral.mkdir()
        # GPT-2's converter reads n_ctx; transformers 5 writes only n_positions.
        if "n_positions" in raw:
            raw = {"n_ctx": raw["n_positions"], **raw}
        (neutral / "config.json").write_text(json.dumps(raw))
        cfg = hooked_config(neutral, raw, arch, hf.config, torch.float32)
        cfg.model_name = path.name
        state = get_pretrained_state_dict(str(neutral), cfg, hf_model=hf)
    model = HookedTransformer(cfg, tokenizer=AutoTokenizer.from_pretrained(path),
                              move_to_device=False)
    # No folding or centring: hook activations then equal HF's hidden states exactly, which
    # keeps cached activations comparable with any HF-based tool.
    model.load_and_process_state_dict(
        state, fold_ln=False, center_writing_weights=False, center_unembed=False,
        fold_value_biases=False,
    )
    return model.to(device).eval()


def cached_snapshot(name: str) -> Path | None:
    """The HF-cache folder of hub model `name`, if its weights were downloaded before."""
    from huggingface_hub import snapshot_download

    try:  # local_files_only: never touches the network, so an offline machine answers at once
        folder = Path(snapshot_download(name, local_files_only=True))
    except Exception:  # an invalid repo id or an uncached one: the caller explains both
        return None
    has_weights = any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))
    return folder if has_weights and (folder / "config.json").is_file() else None
