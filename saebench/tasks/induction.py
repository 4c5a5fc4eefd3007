"""Induction on repeated random tokens (Olsson et al. 2022, "In-context Learning and Induction
Heads", §2): BOS + R + R[:-1], with R a sequence of distinct common tokens; the next token is
R[-1], predictable only by copying what followed its previous occurrence.

Corrupt prompts replace the first copy of R with another sequence R' of distinct tokens (none
shared with R), so the second half is no longer a repeat. Metric: logit[R[-1]] minus the mean
logit over the vocabulary at the last position (a centred logit, since there is no single
contrasting token; `wrong` is -1). Correct: R[-1] is the model's top-1 next token.
"""

from __future__ import annotations

from jaxtyping import Bool, Float
from torch import Tensor

from saebench.tasks.base import (
    TaskBatch,
    TaskUnavailable,
    at_pos,
    pad_id,
    pad_pairs,
    rng,
    top1,
)
from store.windows import special_ids

LENGTH = 20
"""Tokens in R (SmolLM2's top-1 accuracy: 0.73 with 12 tokens, 0.88 with 20)."""
COMMON = 12_000
"""Draw from the first COMMON token ids: BPE vocabularies list frequent merges first."""


def common_tokens(tokenizer) -> list[int]:
    """Ids of common word tokens: a leading space, then 3+ lowercase ASCII letters."""
    size = min(COMMON, len(tokenizer))
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    words = {"Ġ", "▁"}  # the leading-space markers of byte-level BPE and SentencePiece
    return [
        i
        for i, p in enumerate(pieces)
        if p and p[0] in words and len(p) >= 4 and p[1:].isascii() and p[1:].isalpha()
        and p[1:].islower()  # capitalised pieces are often word fragments ("Dist", "Met")
    ]


class Induction:
    name = "induction"
    summary = "continue a repeated sequence of random tokens (BOS + R + R[:-1] → R[-1])"

    def batch(self, tokenizer, n: int, seed: int) -> TaskBatch:
        pool = common_tokens(tokenizer)
        if len(pool) < 2 * LENGTH:
            raise TaskUnavailable(f"task '{self.name}': too few common word tokens ({len(pool)})")
        bos, eos = special_ids(tokenizer)
        r = rng(seed, self.name)
        clean, corrupt, answer = [], [], []
        for _ in range(n):
            draw = r.sample(pool, 2 * LENGTH)
            rep, other = draw[:LENGTH], draw[LENGTH:]
            clean.append([bos, *rep, *rep[:-1]])
            corrupt.append([bos, *other, *rep[:-1]])
            answer.append(rep[-1])
        prompts = tuple(tokenizer.decode(c[1:]) for c in clean)
        return pad_pairs(clean, corrupt, answer, [-1] * n, prompts, pad_id(tokenizer, eos, bos))

    def metric(
        self, logits: Float[Tensor, "pairs seq vocab"], batch: TaskBatch
    ) -> Float[Tensor, " pairs"]:
        last = at_pos(logits, batch)
        return last.gather(1, batch.answer[:, None])[:, 0] - last.mean(-1)

    def correct(
        self, logits: Float[Tensor, "pairs seq vocab"], batch: TaskBatch
    ) -> Bool[Tensor, " pairs"]:
        return top1(logits, batch)
