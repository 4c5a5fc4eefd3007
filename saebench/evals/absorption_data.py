"""First-letter data for the absorption eval: the tokenizer's alphabetic words, ICL prompts built
as token ids, and the model's activations at the target word's position.

Follows SAEBench's `absorption` eval (`vocab.py`, `prompting.py`, `probing.py`), after Chanin
et al. 2024 (arXiv 2409.14507) §3: words are single vocabulary tokens, a prompt is ten examples
"{word} has the first letter: W" then the target, and activations are read at the target token.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from saebench.evals.absorption_config import AbsorptionConfig

LETTERS = string.ascii_lowercase
# Markers that tokenizers put in a token's name for a leading space: byte-level BPE (GPT-2,
# SmolLM2, Llama 3) writes "Ġ", SentencePiece writes "▁".
SPACE_MARKERS = ("Ġ", "▁")


@dataclass(frozen=True)
class Word:
    """One single-token vocabulary word."""

    token_id: int
    """The token itself, kept as is: the prompt carries exactly this id."""
    text: str
    """How the token reads in text, leading space included (" cat" for "Ġcat")."""

    @property
    def letter(self) -> int:
        """Index of the first letter in LETTERS (leading space stripped, case folded)."""
        return LETTERS.index(self.text.strip()[0].lower())


@dataclass
class Split:
    """Activations at the target word of one prompt per word, with the words' letters."""

    x: Float[Tensor, "words d_in"]
    letters: np.ndarray
    """First-letter index per row."""
    words: list[str]


def token_text(tokenizer, token: str) -> str:
    """The token as text. Some tokenizers drop the leading space of a "▁word" token (SAEBench
    issue #68, Mistral), so a space marker always yields a leading space."""
    text = tokenizer.convert_tokens_to_string([token])
    if token.startswith(SPACE_MARKERS) and not text.startswith(" "):
        text = " " + text
    return text


def alpha_words(tokenizer) -> list[Word]:
    """Every token that reads as one ASCII-alphabetic word, with or without a leading space
    (SAEBench `get_alpha_tokens(allow_leading_space=True)`), in token-id order."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    words = []
    for token, token_id in tokenizer.get_vocab().items():
        if token_id in special:
            continue
        text = token_text(tokenizer, token)
        core = text[1:] if text.startswith(" ") else text
        if core and all(c in string.ascii_letters for c in core):
            words.append(Word(int(token_id), text))
    return sorted(words, key=lambda w: w.token_id)


def answer(word: Word) -> str:
    """The answer SAEBench's `first_letter_formatter` gives: a space and the capital letter."""
    return " " + LETTERS[word.letter].upper()


class PromptBuilder:
    """Token ids of ICL prompts whose last word is a given token, and where that token sits."""

    def __init__(self, tokenizer, template: str, bos_id: int | None):
        if template.count("{word}") != 1:
            raise ValueError(f"the template must contain {{word}} once: {template!r}")
        self.tokenizer, self.template, self.bos_id = tokenizer, template, bos_id
        self.before, after = template.split("{word}")
        self.after_ids = self._encode(after)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def build(self, word: Word, examples: list[Word]) -> tuple[list[int], int]:
        """(ids, position of the target token). The examples go in as text; the target goes in
        as its own token id, so the model sees that token even where re-tokenising the text
        would merge it differently. SAEBench prefixes the first example with the separator."""
        lines = [self.template.format(word=ex.text) + answer(ex) for ex in examples]
        prefix = self._encode("\n" + "\n".join(lines) + "\n" + self.before)
        head = ([self.bos_id] if self.bos_id is not None else []) + prefix
        return head + [word.token_id] + self.after_ids, len(head)


def split_words(words: list[Word], cfg: AbsorptionConfig) -> tuple[list[Word], list[Word]]:
    """A seeded sample of at most max_words words, shuffled and split train/test by word
    (SAEBench `create_dataset_probe_training`: no word appears in both splits)."""
    rng = random.Random(cfg.seed)
    words = list(words)
    if cfg.max_words is not None and len(words) > cfg.max_words:
        words = rng.sample(words, cfg.max_words)
    rng.shuffle(words)
    cut = int(len(words) * cfg.train_fraction)
    return words[:cut], words[cut:]


def build_prompts(
    builder: PromptBuilder, words: list[Word], cfg: AbsorptionConfig, seed: int
) -> list[tuple[list[int], int]]:
    """One prompt per word; its ICL examples are other words of the same split."""
    rng = random.Random(seed)
    prompts = []
    for i, word in enumerate(words):
        picks = rng.sample(range(len(words) - 1), cfg.max_icl_examples)
        examples = [words[j if j < i else j + 1] for j in picks]  # never the word itself
        prompts.append(builder.build(word, examples))
    return prompts


@torch.inference_mode()
def collect(
    model, hook: str, prompts: list[tuple[list[int], int]], batch: int
) -> Float[Tensor, "prompts d_in"]:
    """The activation at each prompt's target position. Prompts of equal length share a batch,
    so there is no padding to mask and every position is exact."""
    from store.caching import forward

    device = next(model.parameters()).device
    out: list[Tensor | None] = [None] * len(prompts)
    by_len: dict[int, list[int]] = {}
    for i, (ids, _) in enumerate(prompts):
        by_len.setdefault(len(ids), []).append(i)
    chunks = [rows[lo : lo + batch] for rows in by_len.values()
              for lo in range(0, len(rows), batch)]
    # The full vocabulary is tens of thousands of prompts: minutes to an hour on a CPU.
    bar = tqdm(chunks, desc="absorption prompts", unit="batch", disable=len(chunks) < 4)
    for part in bar:
        tokens = torch.tensor([prompts[i][0] for i in part], device=device)
        acts, _ = forward(model, hook, tokens, False)
        pos = torch.tensor([prompts[i][1] for i in part], device=device)
        picked = acts[torch.arange(len(part), device=device), pos].float().cpu()
        for i, row in zip(part, picked, strict=True):
            out[i] = row
    return torch.stack(out)  # type: ignore[arg-type]  # every slot was filled above


def make_split(model, hook: str, builder, words: list[Word], cfg, seed: int,
               cache_root: Path | None = None, model_name: str = "") -> Split:
    """Prompts, activations and labels for one split's words; with `cache_root`, the
    activations are read from (or saved to) that folder, keyed by the exact prompts."""
    from saebench.evals.absorption_cache import cache_key, cache_path, load_or_build

    prompts = build_prompts(builder, words, cfg, seed)
    letters = np.array([w.letter for w in words], dtype=np.int64)
    path = None
    if cache_root is not None:
        path = cache_path(cache_root, model_name, hook, cache_key(model_name, hook, prompts))
    return load_or_build(path, [w.text for w in words], letters,
                         lambda: collect(model, hook, prompts, cfg.batch_prompts))
