"""The absorption eval: known answers on planted letter directions, the leading-space tokenizer
handling, and the quality gates' one-line reasons."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from eval_helpers import TINY_HOOK, ReluCoder, tensor_store

from saebench.evals import EVALS
from saebench.evals.absorption import run, score, word_absorption
from saebench.evals.absorption_config import AbsorptionConfig
from saebench.evals.absorption_data import (
    LETTERS,
    PromptBuilder,
    Split,
    alpha_words,
    build_prompts,
    token_text,
)
from saebench.evals.absorption_probes import split_size
from saebench.evals.context import EvalContext
from saebench.evals.report import format_table

S = LETTERS.index("s")
N_ABSORBED = 10  # "short"-like test s words, each with its own token latent (dims 26..35)
D_IN = 96  # 0..25 letters, 26..35 absorbed-word identities, 36..95 noise
CFG = AbsorptionConfig(max_k=3)  # SAEBench's 10 finds the same main latents here, slower


def _synthetic(seed: int = 0, signal: float = 1.0) -> tuple[Split, Split]:
    """Residual vectors = the word's letter direction + small noise. A quarter of the test s
    words also carry their own token direction (the words whose letter an SAE may absorb).
    The train split has none: token latents that fire on train s words alone would tie with
    the s latent in the L1 ranking, making the main latent a coin toss."""
    g = torch.Generator().manual_seed(seed)
    splits = []
    for n_per, n_s, absorbed in ((32, 160, range(0)), (8, 40, range(N_ABSORBED))):
        letters = np.array([i for i in range(26) for _ in range(n_s if i == S else n_per)])
        x = torch.zeros(len(letters), D_IN)
        x[torch.arange(len(letters)), torch.from_numpy(letters)] = signal
        noise = D_IN - 26 - N_ABSORBED
        x[:, 26 + N_ABSORBED :] = 0.1 * torch.randn(len(letters), noise, generator=g)
        first_s = int(np.argmax(letters == S))
        for row, j in enumerate(absorbed):
            x[first_s + row, 26 + j] = 1.0
        splits.append(Split(x, letters, [f"w{i}" for i in range(len(letters))]))
    return splits[0], splits[1]


def _sae(split: bool) -> ReluCoder:
    """26 letter latents plus one token latent per absorbed word. Split: the s latent is shut
    off on the absorbed words and their token latents' decoders carry the s direction."""
    eye = torch.eye(D_IN)
    W_enc = torch.zeros(D_IN, 26 + N_ABSORBED)
    W_dec = torch.zeros(26 + N_ABSORBED, D_IN)
    W_enc[:26, :26], W_dec[:26] = torch.eye(26), eye[:26]
    for j in range(N_ABSORBED):
        W_enc[26 + j, 26 + j] = 1.0
        W_dec[26 + j] = eye[26 + j] + (eye[S] if split else 0)
        if split:
            W_enc[26 + j, S] = -2.0  # the s latent stays silent where a token latent fires
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
    return ReluCoder(W_enc, torch.full((26 + N_ABSORBED,), -0.3), W_dec, torch.zeros(D_IN))


@pytest.fixture(scope="module")
def data():
    return _synthetic()


def _rows(result):
    return result.tables["absorption_letters"]


def test_split_sae_absorbs_s_and_unsplit_does_not(data):
    train, test = data
    split = score(_sae(split=True), train, test, CFG)
    rows = _rows(split)
    # 10 of the 40 test s words are absorbed, fully: the s latent is 0 and one token latent
    # (decoder cosine ~0.7 with the probe) carries ~0.7 of the probe projection.
    assert rows["main_latents"][S] == str(S)
    assert rows["num_probe_true_positives"][S] == 40
    assert rows["mean_absorption_fraction"][S] == pytest.approx(0.25)
    assert rows["full_absorption_rate"][S] == pytest.approx(0.25)
    others = [i for i in range(26) if i != S]
    assert np.all(rows["mean_absorption_fraction"][others] == 0)
    assert split.metrics["n_letters"] == 26
    assert split.metrics["mean_absorption_fraction_score"] == pytest.approx(0.25 / 26)
    assert split.metrics["mean_full_absorption_score"] == pytest.approx(0.25 / 26)

    unsplit = score(_sae(split=False), train, test, CFG)
    assert unsplit.metrics["mean_absorption_fraction_score"] == 0
    assert unsplit.metrics["mean_full_absorption_score"] == 0
    assert unsplit.metrics["mean_num_split_features"] == 1


def test_partial_absorption_fraction():
    """Main latent carries 0.3 of a probe projection of 1, an absorber 0.6: 0.6/(0.6+0.3)."""
    x = torch.tensor([[1.0, 0.0]])
    codes = torch.tensor([[0.3, 0.6, 5.0]])
    dec_cos = torch.tensor([1.0, 1.0, 0.05])  # latent 2 is too far from the probe to count
    frac, full = word_absorption(x, codes, torch.tensor([1.0, 0.0]), dec_cos, [0], CFG)
    assert frac.item() == pytest.approx(2 / 3)
    assert not full.item()  # the main latent fired
    frac, _ = word_absorption(x, codes * torch.tensor([1, 0.5, 1]), torch.tensor([1.0, 0.0]),
                              dec_cos, [0], CFG)
    assert frac.item() == 0  # the absorber carries 0.3 < 40% of the projection


def test_split_size_follows_f1_jumps():
    assert split_size([0.5, 0.6, 0.62, 0.9], 0.03) == 2
    assert split_size([0.9, 0.91], 0.03) == 1


def test_gate_failure_is_one_line_reason(data):
    train, test = _synthetic(signal=0.0)  # no letter signal: every probe fails
    result = score(_sae(split=True), train, test, CFG)
    assert result.metrics == {"skipped": 1.0}
    reason = result.notes["skipped"]
    assert "fewer than min_letters 20" in reason and "\n" not in reason
    assert f"skipped: {reason}" in format_table("absorption", "x", result)


# ---- the tokenizer side: byte-level BPE with "Ġ"-prefixed word tokens ----

CORPUS = ["cat has the first letter: C", " cat sat on the short mat", "dog has the first letter:"]


@pytest.fixture(scope="module")
def bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<bos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>")


def test_leading_space_tokens_become_words_and_keep_their_token(bpe):
    words = {w.text: w for w in alpha_words(bpe)}
    short = words[" short"]
    assert short.token_id == bpe.convert_tokens_to_ids("Ġshort")
    assert LETTERS[short.letter] == "s"
    assert " cat" in words and "cat" in words  # with and without the marker
    assert all(t.strip().isalpha() and t.isascii() for t in words)  # no ":", "Ġ", "<bos>"

    builder = PromptBuilder(bpe, CFG.prompt_template, bpe.bos_token_id)
    examples = [words[" cat"], words["dog"]]
    ids, pos = builder.build(short, examples)
    assert ids[0] == bpe.bos_token_id and ids[pos] == short.token_id
    assert len(ids) - pos == 6  # SAEBench's prompt_token_pos -6 for this template
    assert bpe.decode(ids[1:]) == ("\n cat has the first letter: C\ndog has the first letter: D"
                                   "\n short has the first letter:")
    assert bpe.encode(bpe.decode(ids[1:]), add_special_tokens=False) == ids[1:]
    prompts = build_prompts(builder, list(words.values()), AbsorptionConfig(max_icl_examples=2),
                            seed=0)
    assert all(p[0][p[1]] == w.token_id for p, w in zip(prompts, words.values(), strict=True))


def test_sentencepiece_marker_keeps_the_space():
    class Mistral:  # drops the space of "▁word", as SAEBench issue #68 reports
        def convert_tokens_to_string(self, tokens):
            return "".join(tokens).replace("▁", "")

    assert token_text(Mistral(), "▁Cat") == " Cat"
    assert token_text(Mistral(), "ectable") == "ectable"


def test_too_few_words_skips_with_reason(bpe):
    class Stub:
        tokenizer = bpe

    assert "absorption" in EVALS
    ctx = EvalContext(_sae(True), {"hook_name": TINY_HOOK}, tensor_store(torch.zeros(4, D_IN)),
                      model_loader=Stub)
    result = run(ctx, AbsorptionConfig(max_words=12))  # a test split of 3 words
    assert result.metrics == {"skipped": 1.0}
    assert "a split of 3 cannot fill 10 ICL examples" in result.notes["skipped"]


def test_prompt_activations_are_cached_per_prompt_set(bpe, tmp_path, monkeypatch):
    """One model pass per (model, hook, prompts): a second SAE reads the saved activations, a
    changed seed builds afresh, and a build that dies leaves no file behind."""
    import saebench.evals.absorption_data as data

    calls = []

    def fake_collect(model, hook, prompts, batch):
        calls.append(len(prompts))
        if model == "crash":
            raise KeyboardInterrupt
        return torch.arange(len(prompts) * 3, dtype=torch.float32).reshape(-1, 3)

    monkeypatch.setattr(data, "collect", fake_collect)
    words = alpha_words(bpe)
    cfg = AbsorptionConfig(max_icl_examples=2)
    builder = PromptBuilder(bpe, cfg.prompt_template, bpe.bos_token_id)
    first = data.make_split("m", "h", builder, words, cfg, 0, tmp_path, "org/m")
    again = data.make_split("m", "h", builder, words, cfg, 0, tmp_path, "org/m")
    assert calls == [len(words)] and torch.equal(first.x, again.x)
    assert list(again.letters) == [w.letter for w in words]
    data.make_split("m", "h", builder, words, cfg, 1, tmp_path, "org/m")  # other ICL examples
    assert calls == [len(words)] * 2 and len(list(tmp_path.glob("absorption.m.h.*.pt"))) == 2
    with pytest.raises(KeyboardInterrupt):
        data.make_split("crash", "h", builder, words, cfg, 2, tmp_path, "org/m")
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".pt", ".pt"]
