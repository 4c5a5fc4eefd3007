"""The task protocol: seeded clean/corrupt prompt pairs and a per-pair metric.

Every task is generated from templates and word lists with a seed, so nothing is downloaded.
Prompts follow the store's BOS policy (store/windows.py): the tokenizer's BOS token at
position 0, then the prompt's tokens with no other special tokens. Pairs are right-padded; a
causal model's logits at `pos` do not see the padding after it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from store.errors import UserError
from store.windows import special_ids


class TaskUnavailable(UserError):
    """A task that this tokenizer cannot express (e.g. numbers not split into digits)."""


@dataclass(frozen=True)
class TaskBatch:
    """Clean and corrupt prompts, position-aligned, with the tokens the metric compares."""

    clean: Int[Tensor, "pairs pos"]
    """Token ids, right-padded, BOS at position 0."""
    corrupt: Int[Tensor, "pairs pos"]
    """Same length as `clean` and position-aligned with it."""
    pos: Int[Tensor, " pairs"]
    """The position whose logits the metric reads: the last real token of the prompt."""
    answer: Int[Tensor, " pairs"]
    """The correct next token."""
    wrong: Int[Tensor, " pairs"]
    """The contrasting token, or -1 when the metric is not a logit difference."""
    prompts: tuple[str, ...]
    """The clean prompt texts, for display."""
    answer_set: Int[Tensor, "pairs group"] | None = None
    """Optional: every correct next token per pair, padded with -1 (greater_than)."""
    wrong_set: Int[Tensor, "pairs group"] | None = None
    """Optional: every incorrect next token per pair, padded with -1 (greater_than)."""

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def mask(self) -> Bool[Tensor, "pairs pos"]:
        """True at real (non-padding) positions, i.e. at or before `pos`."""
        return torch.arange(self.clean.shape[1], device=self.pos.device)[None] <= self.pos[:, None]

    def to(self, device: str | torch.device) -> TaskBatch:
        """The same batch with every tensor on `device`."""
        moved = {
            f: getattr(self, f).to(device)
            for f in ("clean", "corrupt", "pos", "answer", "wrong", "answer_set", "wrong_set")
            if getattr(self, f) is not None
        }
        return replace(self, **moved)

    def select(self, idx: Int[Tensor, " sub"]) -> TaskBatch:
        """A sub-batch of the pairs `idx`, trimmed to its longest prompt."""
        width = int(self.pos[idx].max()) + 1

        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[idx]

        return replace(
            self,
            clean=self.clean[idx, :width],
            corrupt=self.corrupt[idx, :width],
            pos=self.pos[idx],
            answer=self.answer[idx],
            wrong=self.wrong[idx],
            prompts=tuple(self.prompts[i] for i in idx.tolist()),
            answer_set=pick(self.answer_set),
            wrong_set=pick(self.wrong_set),
        )


@runtime_checkable
class Task(Protocol):
    """A behaviour with a seeded prompt generator and a per-pair metric (higher = better)."""

    name: str
    summary: str

    def batch(self, tokenizer, n: int, seed: int) -> TaskBatch: ...

    def metric(
        self, logits: Float[Tensor, "pairs seq vocab"], batch: TaskBatch
    ) -> Float[Tensor, " pairs"]: ...

    def correct(
        self, logits: Float[Tensor, "pairs seq vocab"], batch: TaskBatch
    ) -> Bool[Tensor, " pairs"]: ...


def single_tokens(tokenizer, words: Iterable[str], prefix: str = " ") -> dict[str, int]:
    """The words that are one token when written with `prefix` (a leading space by default)."""
    out = {}
    for word in words:
        ids = tokenizer.encode(prefix + word, add_special_tokens=False)
        if len(ids) == 1:
            out[word] = ids[0]
    return out


def need(pool: dict, n: int, task: str, what: str) -> list:
    """The pool's keys, or TaskUnavailable when this tokenizer leaves fewer than `n`."""
    if len(pool) < n:
        raise TaskUnavailable(
            f"task '{task}': only {len(pool)} {what} are single tokens for this tokenizer "
            f"(need {n})"
        )
    return sorted(pool)


def rng(seed: int, task: str) -> random.Random:
    """A per-task generator, so that one seed gives unrelated samples for different tasks."""
    return random.Random(f"{task}:{seed}")


def encode_pairs(
    tokenizer,
    clean: Sequence[str],
    corrupt: Sequence[str],
    answer: Sequence[int],
    wrong: Sequence[int],
) -> TaskBatch:
    """Tokenize prompt pairs under the store's BOS policy; each pair must align token-for-token."""
    bos, eos = special_ids(tokenizer)
    ids_clean = tokenizer(list(clean), add_special_tokens=False)["input_ids"]
    ids_corrupt = tokenizer(list(corrupt), add_special_tokens=False)["input_ids"]
    for a, b, text in zip(ids_clean, ids_corrupt, clean, strict=True):
        if len(a) != len(b):
            raise TaskUnavailable(f"a clean/corrupt pair is misaligned by this tokenizer: {text!r}")
    return pad_pairs(
        [[bos, *a] for a in ids_clean],
        [[bos, *b] for b in ids_corrupt],
        answer,
        wrong,
        tuple(clean),
        pad_id(tokenizer, eos, bos),
    )


def pad_id(tokenizer, eos: int | None, bos: int) -> int:
    """The padding token: the tokenizer's, else EOS, else BOS (never read by the metric)."""
    for cand in (tokenizer.pad_token_id, eos, bos):
        if cand is not None:
            return int(cand)
    return bos


def pad_pairs(
    clean: Sequence[Sequence[int]],
    corrupt: Sequence[Sequence[int]],
    answer: Sequence[int],
    wrong: Sequence[int],
    prompts: tuple[str, ...],
    pad: int,
) -> TaskBatch:
    """Right-pad token lists (BOS already included) into a TaskBatch."""
    width = max(len(c) for c in clean)
    out = torch.full((2, len(clean), width), pad, dtype=torch.long)
    for i, (a, b) in enumerate(zip(clean, corrupt, strict=True)):
        out[0, i, : len(a)] = torch.tensor(a)
        out[1, i, : len(b)] = torch.tensor(b)
    return TaskBatch(
        clean=out[0],
        corrupt=out[1],
        pos=torch.tensor([len(c) - 1 for c in clean]),
        answer=torch.tensor(list(answer)),
        wrong=torch.tensor(list(wrong)),
        prompts=prompts,
    )


def at_pos(
    logits: Float[Tensor, "pairs seq vocab"], batch: TaskBatch
) -> Float[Tensor, "pairs vocab"]:
    """The logits at each pair's metric position."""
    return logits[torch.arange(logits.shape[0]), batch.pos].float()


def logit_diff(
    logits: Float[Tensor, "pairs seq vocab"], batch: TaskBatch
) -> Float[Tensor, " pairs"]:
    """logit[answer] − logit[wrong] at `pos`."""
    last = at_pos(logits, batch)
    return last.gather(1, batch.answer[:, None])[:, 0] - last.gather(1, batch.wrong[:, None])[:, 0]


def top1(logits: Float[Tensor, "pairs seq vocab"], batch: TaskBatch) -> Bool[Tensor, " pairs"]:
    """Whether the answer is the model's most likely next token at `pos`."""
    return at_pos(logits, batch).argmax(-1) == batch.answer


class LogitDiffTask:
    """Mixin: metric = logit[answer] − logit[wrong] at pos; correct when it is positive."""

    def metric(
        self, logits: Float[Tensor, "pairs seq vocab"], batch: TaskBatch
    ) -> Float[Tensor, " pairs"]:
        return logit_diff(logits, batch)

    def correct(
        self, logits: Float[Tensor, "pairs seq vocab"], batch: TaskBatch
    ) -> Bool[Tensor, " pairs"]:
        return self.metric(logits, batch) > 0
