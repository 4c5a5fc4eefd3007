"""The probing half of sparse probing: features and labels in, test accuracies out (no model).

Follows SAEBench's `sparse_probing` protocol (Karmakar et al., SAEBench, arXiv 2503.09532,
section on sparse probing; Gurnee et al. 2023 for k-sparse probes):
- a multi-class set becomes one binary task per class, positives against an equal number of
  negatives drawn at random from the other classes (train and test alike); a two-class set is
  one task. A set's accuracy is the mean over its tasks;
- top-k latents are the k with the largest |mean(positive) - mean(negative)| on the train
  split, then a logistic regression on those k raw features (sklearn, C = 1, balanced classes);
- baselines: the same probe on all features (the residual stream: "llm", all SAE latents:
  "sae"). Full-width inputs are standardised first so lbfgs converges (SAEBench trains those
  probes with Adam on a GPU instead); standardising does not change which latents top-k picks.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from jaxtyping import Float

POSITIVE_FIRST = ("1", "true", "yes", "male")  # which label of a two-class set is "positive"


@dataclass(frozen=True)
class Task:
    """One binary probing task: row indices into the feature matrix and 0/1 labels."""

    name: str
    train: np.ndarray
    y_train: np.ndarray
    test: np.ndarray
    y_test: np.ndarray


def _balanced(rows: np.ndarray, positive: np.ndarray, rng: np.random.Generator):
    """All positive rows plus as many negatives drawn at random; labels 1 and 0."""
    pos, neg = rows[positive], rows[~positive]
    neg = rng.permutation(neg)[: len(pos)]
    idx = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(len(pos), int), np.zeros(len(neg), int)])
    order = rng.permutation(len(idx))
    return idx[order], y[order]


def binary_tasks(labels: np.ndarray, splits: np.ndarray, seed: int = 42) -> list[Task]:
    """One task per class (one-vs-rest, balanced), or a single task for a two-class set."""
    labels, splits = np.asarray(labels).astype(str), np.asarray(splits).astype(str)
    classes = sorted(set(labels.tolist()))
    if len(classes) < 2:
        raise ValueError(f"a probing set needs two classes, got {classes}")
    if len(classes) == 2:
        first = [c for c in classes if c.lower() in POSITIVE_FIRST]
        classes = first[:1] or classes[1:]
    rng = np.random.default_rng(seed)
    tasks = []
    for c in classes:
        parts = []
        for split in ("train", "test"):
            rows = np.flatnonzero(splits == split)
            parts += _balanced(rows, labels[rows] == c, rng)
        tasks.append(Task(c, *parts))
    return tasks


def top_k_by_mean_diff(
    x: Float[np.ndarray, "n d"], y: np.ndarray, k: int
) -> np.ndarray:
    """The k features whose class means differ most (SAEBench's selection), largest first."""
    diff = np.abs(x[y == 1].mean(0) - x[y == 0].mean(0))
    return np.argsort(-diff, kind="stable")[:k]


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, standardise: bool = False, seed: int = 42):
    """A logistic-regression probe fitted on the train rows (a pipeline if `standardise`);
    SCR/TPP keep it to read ablated activations later."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = LogisticRegression(C=1.0, max_iter=1000, class_weight="balanced", random_state=seed)
    if standardise:
        probe = make_pipeline(StandardScaler(), probe)
    with warnings.catch_warnings():  # a constant or separable feature is a result, not an error
        warnings.simplefilter("ignore")
        probe.fit(x_train, y_train)
    return probe


def probe_accuracy(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
    standardise: bool = False, seed: int = 42,
) -> float:
    """Test accuracy of a logistic-regression probe trained on the train rows."""
    probe = fit_probe(x_train, y_train, standardise, seed)
    return float((probe.predict(x_test) == y_test).mean())


def probe_features(
    x: Float[np.ndarray, "n d"], tasks: list[Task], k_values: tuple[int, ...], prefix: str,
    full: bool = True, seed: int = 42,
) -> dict[str, float]:
    """Mean test accuracy over tasks: `{prefix}_test_accuracy` (all features, if `full`) and
    `{prefix}_top_{k}_test_accuracy` per k."""
    x = np.asarray(x, dtype=np.float32)
    sums: dict[str, float] = {}
    for t in tasks:
        xtr, xte = x[t.train], x[t.test]
        if full:
            acc = probe_accuracy(xtr, t.y_train, xte, t.y_test, standardise=True, seed=seed)
            sums[f"{prefix}_test_accuracy"] = sums.get(f"{prefix}_test_accuracy", 0.0) + acc
        order = top_k_by_mean_diff(xtr, t.y_train, max(k_values))
        for k in k_values:
            cols = order[:k]
            acc = probe_accuracy(xtr[:, cols], t.y_train, xte[:, cols], t.y_test, seed=seed)
            key = f"{prefix}_top_{k}_test_accuracy"
            sums[key] = sums.get(key, 0.0) + acc
    return {key: total / len(tasks) for key, total in sums.items()}
