"""Any HF causal LM from a local folder: HF-exact numerics and cache -> train -> eval, offline.

Tiny random checkpoints (2 layers, d_model 32) of six architectures are built once per session,
with a 512-token byte-level BPE trained on the corpus (a 49k vocabulary costs seconds per
model in tokenizer loads and vocabulary decodes). Weights are initialised with std 0.3, not
HF's 0.02, so attention is peaked enough for a wrong window, scale or soft cap to show.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_spec

from store.errors import UserError
from store.models import load_model

# Measured max |ours - HF| in fp32, logits of scale 3-9: 2e-6 (Gemma) to 1.1e-5 (Llama);
# a Gemma 2 window off by one, a d_head attention scale or a dropped soft cap gives 1 to 7.
ATOL = 1e-4
SHAPE = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=64, initializer_range=0.3)


def _configs(vocab: int, bos: int, eos: int) -> dict:
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        GPT2Config,
        GPTNeoXConfig,
        LlamaConfig,
        Qwen2Config,
    )

    ids = dict(vocab_size=vocab, bos_token_id=bos, eos_token_id=eos)
    gqa = dict(SHAPE, num_key_value_heads=2, **ids)
    # Gemma: a sliding window shorter than ctx, a query scale unlike d_head, soft caps that bite.
    gemma = dict(gqa, head_dim=8, sliding_window=8, query_pre_attn_scalar=16)
    return {
        "gpt2": GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=64,
                           initializer_range=0.3, **ids),
        "pythia": GPTNeoXConfig(**SHAPE, rotary_pct=0.25, **ids),
        # Folder names with "llama"/"gemma" in them trip TransformerLens 3.9's path sniffing.
        "llama": LlamaConfig(**gqa),
        "qwen2": Qwen2Config(**gqa),
        "gemma2": Gemma2Config(**gemma, attn_logit_softcapping=2.0, final_logit_softcapping=3.0),
        "gemma3": Gemma3TextConfig(**gemma, layer_types=["sliding_attention", "full_attention"]),
    }


ARCHS = ("gpt2", "pythia", "llama", "qwen2", "gemma2", "gemma3")


def _tokenizer():
    """A byte-level BPE of 512 tokens trained on a few Austen chapters: covers any text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from store.corpus import load_documents

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<|endoftext|>", "<|bos|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([d.text for d in load_documents("austen")[:20]], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>",
                                   eos_token="<|endoftext|>")


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    from transformers import AutoModelForCausalLM

    tokenizer = _tokenizer()
    root = tmp_path_factory.mktemp("hf")
    folders = {}
    configs = _configs(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    for name, config in configs.items():
        torch.manual_seed(0)
        folders[name] = root / name
        AutoModelForCausalLM.from_config(config).save_pretrained(folders[name])
        tokenizer.save_pretrained(folders[name])
    return folders


def _hf(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_and_resid_match_hf(checkpoints, arch, one_thread):
    model = load_model(str(checkpoints[arch]))
    text = ["It is a truth universally acknowledged, that a single man in possession of a good"
            " fortune, must be in want of a wife, and so on for a while."] * 2
    tokens = model.to_tokens(text, prepend_bos=True)[:, :32]
    assert tokens.shape[1] == 32  # longer than Gemma's sliding window of 8
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter="blocks.0.hook_resid_post")
        out = _hf(checkpoints[arch])(tokens, output_hidden_states=True)
    assert logits.abs().max() > 1.0  # not a trivially small model
    torch.testing.assert_close(logits, out.logits, atol=ATOL, rtol=0)
    # hidden_states[1] is after block 0 (the last entry has the final norm applied).
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], out.hidden_states[1],
                               atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_cache_train_eval(checkpoints, arch, tmp_path, one_thread):
    from saebench.cli import main
    from store.caching import cache
    from store.reader import open_store

    folder = checkpoints[arch]
    spec = tiny_spec(model=str(folder), n_tokens=2048, n_heldout_tokens=512)
    store_path, sae_dir = tmp_path / "store.duckdb", tmp_path / "saes" / arch
    meta = cache(spec, store_path, progress=False)
    assert meta["d_in"] == 32 and meta["n_layers"] == 2

    s = open_store(store_path)
    windows = s.token_windows("train")[:4]
    with torch.no_grad():
        hidden = _hf(folder)(windows, output_hidden_states=True).hidden_states[1]
    stored = s.read_chunk(s.chunks[0], drop_bos=False).view(-1, 32, 32)[:4].float()
    torch.testing.assert_close(stored, hidden, rtol=2e-3, atol=2e-3)  # fp16 storage

    train = ["train", "--store", str(store_path), "--out", str(sae_dir), "--k", "4",
             "--width", "64", "--tokens", "2048", "--batch-size", "256", "--warmup-steps", "2",
             "--device", "cpu", "--no-progress"]
    assert main(train) == 0
    assert main(["eval", "--sae", str(sae_dir), "--store", str(store_path), "--device", "cpu",
                 "--core.ce-tokens", "256"]) == 0
    metrics = json.loads((sae_dir / "evals" / "core.json").read_text())["metrics"]
    numbers = [v for v in metrics.values() if isinstance(v, float)]
    assert numbers and all(math.isfinite(v) for v in numbers)


def test_hub_name_with_cached_weights(checkpoints, tmp_path, monkeypatch):
    """A hub name not known to TransformerLens loads from the HF cache, offline."""
    import shutil

    import huggingface_hub.constants

    repo = tmp_path / "models--tiny-org--tiny-gpt2"
    shutil.copytree(checkpoints["gpt2"], repo / "snapshots" / "0123abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    tokens = torch.arange(1, 17)[None]
    with torch.no_grad():
        ours = load_model("tiny-org/tiny-gpt2")(tokens)
        folder = load_model(str(checkpoints["gpt2"]))(tokens)
    torch.testing.assert_close(ours, folder, atol=0, rtol=0)
    with pytest.raises(UserError, match="hub name in the HF cache"):
        load_model("tiny-org/not-downloaded")


def test_unsupported_architecture_is_a_one_line_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["MambaForCausalLM"]}))
    with pytest.raises(UserError) as err:
        load_model(str(tmp_path))
    message = str(err.value)
    assert "\n" not in message
    assert "MambaForCausalLM" in message and "GPT2LMHeadModel" in message
    assert "Gemma2ForCausalLM" in message


def test_folder_without_config_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="config.json"):
        load_model(str(tmp_path))
