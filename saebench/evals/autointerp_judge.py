"""Explainers and judges for autointerp, and the detection score.

An explainer turns a latent's contexts into an explanation; a judge reads the explanation and
a shuffled list of contexts and says which it expects the latent to fire on. The score is the
judge's accuracy over all contexts, firing or not (SAEBench's autointerp score).

Two pairs: an LLM behind any OpenAI-compatible endpoint, with SAEBench's protocol (prompts
written afresh here), and an offline, deterministic token-pattern pair. The latter measures
how well a latent is predicted by its most frequent activating tokens: a lexical baseline,
not interpretability as a language model would judge it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from saebench.evals.autointerp_data import Context

Render = Callable[[int], str]


def detection_accuracy(predicted: set[int], truth: Sequence[bool]) -> float:
    """The fraction of contexts whose predicted firing (index in `predicted`) matches truth."""
    return sum((i in predicted) == bool(t) for i, t in enumerate(truth)) / len(truth)


def show(context: Context, render: Render, threshold: float | None = None) -> str:
    """A context as one line of text; with a threshold, firing tokens are marked <<tok>>."""
    parts = []
    for tok, act in zip(context.tokens, context.acts, strict=True):
        text = render(tok)
        parts.append(f"<<{text}>>" if threshold is not None and act > threshold else text)
    return "".join(parts).replace("\n", "↵")


# ---- offline: token patterns --------------------------------------------------------------


@dataclass(frozen=True)
class Pattern:
    """Tokens that mark a latent's firing, each with the token before it where that is fixed."""

    items: tuple[tuple[int | None, int], ...]
    """(previous token or None, token) pairs."""

    def matches(self, tokens: Sequence[int]) -> bool:
        for prev, tok in self.items:
            for i, t in enumerate(tokens):
                if t == tok and (prev is None or (i > 0 and tokens[i - 1] == prev)):
                    return True
        return False

    def describe(self, render: Render) -> str:
        if not self.items:
            return "no activating tokens"
        parts = [
            repr(render(tok)) + (f" after {render(prev)!r}" if prev is not None else "")
            for prev, tok in self.items
        ]
        return "tokens " + ", ".join(parts)


def token_pattern(contexts: Sequence[Context], threshold: float, n_tokens: int) -> Pattern:
    """The `n_tokens` most frequent firing tokens (ties: lower id), each with its preceding
    token when every firing occurrence of it has the same one (a fixed bigram)."""
    counts: Counter[int] = Counter()
    before: dict[int, set[int | None]] = {}
    for c in contexts:
        for i, (tok, act) in enumerate(zip(c.tokens, c.acts, strict=True)):
            if act > threshold:
                counts[tok] += 1
                before.setdefault(tok, set()).add(c.tokens[i - 1] if i > 0 else None)
    top = sorted(counts, key=lambda t: (-counts[t], t))[:n_tokens]
    items = []
    for tok in top:
        prev = before[tok]
        # A bigram needs more than one occurrence to be evidence of anything.
        fixed = len(prev) == 1 and None not in prev and counts[tok] > 1
        items.append((next(iter(prev)) if fixed else None, tok))
    return Pattern(tuple(items))


def pattern_predictions(pattern: Pattern, contexts: Sequence[Context]) -> set[int]:
    """The deterministic judge: a context fires if it contains the pattern."""
    return {i for i, c in enumerate(contexts) if pattern.matches(c.tokens)}


# ---- LLM: prompts and parsing -------------------------------------------------------------

EXPLAIN_SYSTEM = (
    "You are helping to interpret one latent of a sparse autoencoder trained on a language "
    "model's activations. You will see text excerpts on which the latent is active, the "
    "strongest first; the tokens where it is active are wrapped in << >>. Say in one short "
    "sentence (at most 20 words, no lists, no formatting) what the latent responds to: a "
    "word, a piece of a word, a syntactic role or a topic. Mind capitalisation and "
    "punctuation when they matter. Begin with 'This latent fires on'."
)
DETECT_SYSTEM = (
    "You are testing an explanation of one latent of a sparse autoencoder trained on a "
    "language model's activations. Given the explanation and {n} numbered text excerpts in "
    "random order, list the numbers of the excerpts on which the latent should be active on "
    "at least one token. Reply with the numbers only, separated by commas (for example "
    "'{example}'), or 'None' if it fires on none of them."
)


def explain_messages(contexts: Sequence[Context], threshold: float, render: Render) -> list:
    lines = [f"{i + 1}. {show(c, render, threshold)}" for i, c in enumerate(contexts)]
    user = "Excerpts where the latent is active:\n\n" + "\n".join(lines)
    return [{"role": "system", "content": EXPLAIN_SYSTEM}, {"role": "user", "content": user}]


def detect_messages(explanation: str, contexts: Sequence[Context], render: Render) -> list:
    lines = [f"{i + 1}. {show(c, render)}" for i, c in enumerate(contexts)]
    system = DETECT_SYSTEM.format(n=len(contexts), example="2, 5, 11")
    user = f"Explanation: this latent fires on {explanation}.\n\nExcerpts:\n\n" + "\n".join(lines)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def parse_explanation(text: str) -> str:
    """The explanation without its 'This latent fires on' preamble or final full stop."""
    text = text.strip().splitlines()[0] if text.strip() else ""
    text = re.sub(r"^(this\s+(latent|neuron|feature)\s+(fires|activates)\s+on\s*)", "", text,
                  flags=re.IGNORECASE)
    return text.strip().rstrip(".").strip()


def parse_predictions(text: str, n: int) -> set[int] | None:
    """0-based indices from a reply like '2, 5 and 11' or 'None'; None if it is not that."""
    body = text.strip().strip(".").strip("'\"`[]")
    if not body or body.lower().startswith("none"):
        return set()
    parts = [p.strip() for p in re.split(r",|\band\b|\s+", body) if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        return None
    return {int(p) - 1 for p in parts if 1 <= int(p) <= n}
