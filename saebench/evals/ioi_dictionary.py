"""Supervised feature dictionaries and the attribute F1 of SAE latents.

Makelov, Lange & Nanda 2024 (arXiv 2405.08366, §3.2): for an activation a(p) and an attribute
i with value v, the supervised feature is u_iv = E[a | attribute i = v] − E[a], and a prompt is
reconstructed as E[a] + Σ_i u_{i, v_i(p)}. Editing attribute i from v to v' is a − u_iv + u_iv'.
Interpretability (their §4.3): a latent's firing is scored as a classifier of each attribute
value's indicator by precision, recall and F1. Ours: a latent "fires" when its code is > 0
(no tuned threshold), and a value never seen when fitting gets the zero vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


@dataclass(frozen=True)
class SupervisedDictionary:
    """The mean activation and one vector per (attribute, value)."""

    mean: Float[Tensor, " d_in"]
    """E[a] over the fitting prompts."""
    vectors: dict[str, Float[Tensor, "values d_in"]]
    """Attribute -> u_iv for each of its values (row v)."""

    def reconstruct(self, labels: dict[str, Int[Tensor, " n"]]) -> Float[Tensor, "n d_in"]:
        """E[a] + Σ_i u_{i, v_i(p)} for each prompt's labels."""
        out = self.mean.expand(len(next(iter(labels.values()))), -1).clone()
        for attribute, u in self.vectors.items():
            out += u[labels[attribute]]
        return out

    def edit(
        self, x: Float[Tensor, "n d_in"], attribute: str,
        old: Int[Tensor, " n"], new: Int[Tensor, " n"],
    ) -> Float[Tensor, "n d_in"]:
        """x − u_{i,old} + u_{i,new}: the supervised edit of one attribute (§3.2)."""
        u = self.vectors[attribute]
        return x - u[old] + u[new]


def fit_dictionary(
    x: Float[Tensor, "n d_in"], labels: dict[str, Int[Tensor, " n"]], n_values: dict[str, int]
) -> SupervisedDictionary:
    """Class-conditional means minus the grand mean, per attribute (§3.2)."""
    x = x.float()
    mean = x.mean(0)
    vectors = {}
    for attribute, y in labels.items():
        onehot = torch.nn.functional.one_hot(y, n_values[attribute]).float()  # [n, values]
        counts = onehot.sum(0)
        sums = onehot.T @ x
        cond = sums / counts.clamp(min=1)[:, None]
        vectors[attribute] = torch.where(counts[:, None] > 0, cond - mean, torch.zeros_like(cond))
    return SupervisedDictionary(mean, vectors)


def indicators(labels: Int[Tensor, " n"], n_values: int) -> Bool[Tensor, "n values"]:
    """One column per value: whether each prompt has it."""
    return torch.nn.functional.one_hot(labels, n_values).bool()


@dataclass(frozen=True)
class LatentScores:
    """Per attribute value, the latent with the highest F1 and its scores."""

    latent: Int[Tensor, " values"]
    precision: Float[Tensor, " values"]
    recall: Float[Tensor, " values"]
    f1: Float[Tensor, " values"]
    top: Int[Tensor, "values m"]
    """The m highest-F1 latents per value, best first."""


def latent_f1(
    codes: Float[Tensor, "n d_sae"], y: Bool[Tensor, "n values"], m: int = 1
) -> LatentScores:
    """Precision, recall and F1 of every latent's firing against every value's indicator."""
    fires = (codes > 0).float()
    y = y.float()
    hits = y.T @ fires  # [values, d_sae]: prompts where the latent fires and the value holds
    n_fire = fires.sum(0)[None]  # how often each latent fires
    n_true = y.sum(0)[:, None]
    precision = hits / n_fire.clamp(min=1)
    recall = hits / n_true.clamp(min=1)
    f1 = 2 * hits / (n_fire + n_true).clamp(min=1)  # = 2PR/(P+R), and 0 where hits = 0
    top = f1.topk(min(m, f1.shape[1]), dim=1).indices
    best = top[:, 0]
    rows = torch.arange(len(best))
    return LatentScores(best, precision[rows, best], recall[rows, best], f1[rows, best], top)
