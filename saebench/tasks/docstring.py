"""Docstring argument completion (Heimersheim & Janiak 2023, "A circuit for Python docstrings").

A method `def f(self, A, B, C):` whose docstring documents `:param A:` and `:param B:` and
then opens `:param` → " C". Corrupt prompts rename the three arguments in the signature only
(A', B', C'), as in the post's "random_def" corruption, so the docstring no longer matches the
signature. Metric: logit[C] − logit[C'] at the last token, i.e. does the model copy the next
argument from the clean signature rather than the corrupt one (on corrupt prompts C' is the
signature's argument, so the metric turns negative when the model follows the signature).
Correct: C is the model's top-1 next token — stricter than the sign of the metric, because C'
never appears in a clean prompt.
"""

from __future__ import annotations

from jaxtyping import Bool, Float
from torch import Tensor

from saebench.tasks.base import (
    LogitDiffTask,
    TaskBatch,
    encode_pairs,
    need,
    rng,
    single_tokens,
    top1,
)

ARG_NAMES = (
    "load size files data name value key path mode user text count index item source target "
    "config state model port host token limit offset width height color label result query "
    "options context parent node level depth scale order page line field table column row "
    "group filter format prefix timeout callback"
).split()
FUNCTIONS = ("run", "load", "update", "build", "check", "process", "create", "handle", "parse")
WORDS = (
    "the current file", "a new value", "input data", "the first item", "number of rows",
    "the user name", "an optional limit", "the target path", "a list of keys", "the default",
)  # fmt: skip


def _prompt(func: str, sig: list[str], doc: list[str], descs: list[str]) -> str:
    lines = [f"def {func}(self, {', '.join(sig)}):", f'    """{func.capitalize()} it.', ""]
    lines += [f"    :param {name}: {desc}" for name, desc in zip(doc[:2], descs, strict=True)]
    return "\n".join(lines) + "\n    :param"


class Docstring(LogitDiffTask):
    name = "docstring"
    summary = "complete the next ':param' name of a Python docstring from the signature"

    def batch(self, tokenizer, n: int, seed: int) -> TaskBatch:
        ids = single_tokens(tokenizer, ARG_NAMES)
        names = need(ids, 6, self.name, "argument names")
        r = rng(seed, self.name)
        clean, corrupt, answer, wrong = [], [], [], []
        for _ in range(n):
            args = r.sample(names, 6)
            sig, renamed = args[:3], args[3:]
            func, descs = r.choice(FUNCTIONS), r.sample(WORDS, 2)
            clean.append(_prompt(func, sig, sig, descs))
            corrupt.append(_prompt(func, renamed, sig, descs))
            answer.append(ids[sig[2]])
            wrong.append(ids[renamed[2]])
        return encode_pairs(tokenizer, clean, corrupt, answer, wrong)

    def correct(
        self, logits: Float[Tensor, "pairs seq vocab"], batch: TaskBatch
    ) -> Bool[Tensor, " pairs"]:
        return top1(logits, batch)
