"""Score a head ranking against a ground-truth circuit: ROC AUC and best F1 (by hand, no sklearn).

Any method that gives every head a number (discrete SAEs, attribution, feature circuits) is
scored the same way, from a `{"layer.head": score}` dict and the set of true circuit heads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from store.errors import UserError


def _split(scores: Mapping[str, float], truth: Iterable[str]) -> tuple[list[float], list[float]]:
    truth = set(truth)
    unknown = truth - set(scores)
    if unknown:
        raise UserError(f"circuit heads without a score: {', '.join(sorted(unknown))}")
    pos = [float(s) for h, s in scores.items() if h in truth]
    neg = [float(s) for h, s in scores.items() if h not in truth]
    if not pos or not neg:
        raise UserError("scoring needs at least one circuit head and one head outside it")
    return pos, neg


def roc_auc(scores: Mapping[str, float], truth: Iterable[str]) -> float:
    """P(a circuit head outscores a non-circuit head), ties counting one half (Mann–Whitney U)."""
    pos, neg = _split(scores, truth)
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def best_f1(scores: Mapping[str, float], truth: Iterable[str]) -> tuple[float, float]:
    """The best F1 over thresholds "score ≥ t" and the threshold t that reaches it."""
    pos, neg = _split(scores, truth)
    best, best_t = 0.0, float("inf")
    for t in sorted(set(pos) | set(neg), reverse=True):
        tp = sum(p >= t for p in pos)
        fp = sum(n >= t for n in neg)
        f1 = 2 * tp / (tp + fp + len(pos))  # 2TP / (2TP + FP + FN), with TP + FN = |pos|
        if f1 > best:
            best, best_t = f1, t
    return best, best_t
