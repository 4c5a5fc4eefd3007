"""The default model: TransformerLens numerics match HF transformers; loads are cached."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_spec

from store.caching import cache
from store.models import load_model, smollm2_dir
from store.reader import open_store


@pytest.fixture(scope="module")
def hf_model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_dir(), dtype=torch.float32).eval()


def test_logits_match_hf(hf_model):
    model = load_model("smollm2-135m")
    tokens = model.to_tokens(["When Mary and John went to the store, John gave a drink to"])
    with torch.no_grad():
        ours, theirs = model(tokens), hf_model(tokens).logits
    assert (ours - theirs).abs().max() < 1e-3
    assert model.cfg.n_layers == 30 and model.cfg.d_model == 576


def test_dequantized_checkpoint_is_cached_plainly():
    folder = smollm2_dir()
    cfg = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["architectures"] == ["LlamaForCausalLM"]
    assert "llama" not in str(folder).lower()  # TransformerLens 3.9 mishandles such paths
    assert smollm2_dir() == folder


def test_cache_real_model_matches_hf_hidden_states(tmp_path, hf_model):
    """Integration: a few thousand tokens of the default model and corpus, with gradients."""
    spec = tiny_spec(model="smollm2-135m", hook="blocks.3.hook_resid_post", ctx=64,
                     n_tokens=1024, n_heldout_tokens=256, with_grads=True)
    path = tmp_path / "real.duckdb"
    cache(spec, path, progress=False)
    s = open_store(path)
    windows = s.token_windows("train")[:4]
    with torch.no_grad():
        hidden = hf_model(windows, output_hidden_states=True).hidden_states[4]
    stored = s.read_chunk(s.chunks[0], drop_bos=False).view(-1, 64, 576)[:4].float()
    # fp16 storage: relative error up to 2^-11 of each value, plus TL-vs-HF float noise.
    torch.testing.assert_close(stored, hidden, rtol=2e-3, atol=2e-3)
    grads = s.read_chunk(s.chunks[0], grads=True, drop_bos=False)
    assert torch.isfinite(grads.float()).all() and grads.float().abs().sum() > 0
    assert s.meta["n_tokens"] == {"train": 1024, "heldout": 256}
