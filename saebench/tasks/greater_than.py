"""Greater-than (Hanna et al. 2023, "How does GPT-2 compute greater-than?", §2), asked one
digit at a time.

Hanna et al. prompt "The war lasted from the year 1732 to the year 17" and score the two-digit
year that follows. SmolLM2-style tokenizers write numbers one digit per token, so the model's
next token is the end year's TENS digit. With start year CCXY (tens digit X in 1..8):
  - digits d > X are correct (the end year is later whatever the ones digit);
  - digits d < X are wrong (the end year would be earlier);
  - d = X is ambiguous (correct only if the following ones digit exceeds Y), so it counts
    on neither side.
Metric: P(d > X) − P(d < X), probabilities from the softmax over the whole vocabulary at the
last token, summed over the ten digit tokens; in [-1, 1]. Correct: the metric is positive.
Corrupt prompts use the start year CC01, the paper's "01" corruption (§2), which gives no
information about X; the metric still reads the clean X. `answer`/`wrong` hold the digits
X+1 and X−1 (for display); `answer_set`/`wrong_set` hold every digit counted on each side.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from saebench.tasks.base import TaskBatch, TaskUnavailable, at_pos, encode_pairs, rng

NOUNS = (
    "war", "reign", "expedition", "siege", "dynasty", "drought", "famine", "occupation",
    "rebellion", "truce", "voyage", "construction", "plague", "crusade", "alliance",
)  # fmt: skip
CENTURIES = tuple(range(11, 20))


def digit_ids(tokenizer) -> list[int]:
    """Token ids of the digits 0-9, or TaskUnavailable when numbers are not split into digits."""
    ids = [tokenizer.encode(str(d), add_special_tokens=False) for d in range(10)]
    year = tokenizer.encode(" the year 1732", add_special_tokens=False)
    if any(len(i) != 1 for i in ids) or year[-4:] != [ids[1][0], ids[7][0], ids[3][0], ids[2][0]]:
        raise TaskUnavailable("task 'greater_than' needs a tokenizer that writes one digit a token")
    return [i[0] for i in ids]


class GreaterThan:
    name = "greater_than"
    summary = "'from the year 1732 to the year 17' → the next digit must exceed 3"

    def batch(self, tokenizer, n: int, seed: int) -> TaskBatch:
        digits = digit_ids(tokenizer)
        r = rng(seed, self.name)
        clean, corrupt, tens = [], [], []
        for _ in range(n):
            noun, century = r.choice(NOUNS), r.choice(CENTURIES)
            x, y = r.randint(1, 8), r.randint(0, 9)
            text = "The {} lasted from the year {}{} to the year {}"
            clean.append(text.format(noun, century, f"{x}{y}", century))
            corrupt.append(text.format(noun, century, "01", century))
            tens.append(x)
        answer = [digits[x + 1] for x in tens]
        wrong = [digits[x - 1] for x in tens]
        out = encode_pairs(tokenizer, clean, corrupt, answer, wrong)
        table = torch.tensor(digits)
        d = torch.arange(10)
        x = torch.tensor(tens)[:, None]
        above = torch.where(d > x, table, -1)
        below = torch.where(d < x, table, -1)
        return replace(out, answer_set=above, wrong_set=below)

    def metric(
        self, logits: Float[Tensor, "pairs seq vocab"], batch: TaskBatch
    ) -> Float[Tensor, " pairs"]:
        assert batch.answer_set is not None and batch.wrong_set is not None
        probs = at_pos(logits, batch).softmax(-1)
        return _mass(probs, batch.answer_set) - _mass(probs, batch.wrong_set)

    def correct(
        self, logits: Float[Tensor, "pairs seq vocab"], batch: TaskBatch
    ) -> Bool[Tensor, " pairs"]:
        return self.metric(logits, batch) > 0


def _mass(
    probs: Float[Tensor, "pairs vocab"], ids: Int[Tensor, "pairs group"]
) -> Float[Tensor, " pairs"]:
    """Summed probability of the token ids in each row, ignoring -1 padding."""
    picked = probs.gather(1, ids.clamp(min=0))
    return (picked * (ids >= 0)).sum(-1)
