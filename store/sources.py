"""ActivationSource: what trainers and evals consume.

A source yields shuffled batches of activations `[tokens, d_in]` (or `(x, grad)` pairs for
gradient SAEs). The order is a pure function of `(seed, batch index)`, so a resumed run asks
for `start=<batches already consumed>` and sees exactly the batches it would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

Batch = Tensor | tuple[Tensor, Tensor]


@dataclass(frozen=True)
class NormStats:
    """Statistics that trainers use to normalise activations (computed on the train split)."""

    mean_norm: float
    """Mean L2 norm of an activation vector."""
    mean: list[float]
    """Per-dimension mean, used to initialise b_dec and for mean-ablation."""
    n_tokens: int
    """How many tokens these statistics were computed over."""


@runtime_checkable
class ActivationSource(Protocol):
    """Anything that yields seeded, shuffled batches of activations."""

    d_in: int
    has_grads: bool
    n_tokens: int

    def stats(self) -> NormStats: ...

    def batches(
        self, batch_size: int, *, seed: int = 0, start: int = 0, with_grads: bool = False
    ) -> Iterator[Batch]: ...


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The token order of one epoch: a fresh permutation per (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def compute_stats(x: Float[Tensor, "tokens d_in"]) -> NormStats:
    x = x.float()
    return NormStats(
        mean_norm=float(x.norm(dim=-1).mean()),
        mean=x.mean(dim=0).tolist(),
        n_tokens=int(x.shape[0]),
    )


class InMemorySource:
    """A source over tensors already in memory: for tests, notebooks and small stores.

    Batches never straddle epochs; the tail of each epoch that does not fill a batch is
    dropped, so every batch has exactly `batch_size` rows.
    """

    def __init__(
        self,
        x: Float[Tensor, "tokens d_in"],
        grads: Float[Tensor, "tokens d_in"] | None = None,
        stats: NormStats | None = None,
    ):
        if grads is not None and grads.shape != x.shape:
            raise ValueError(f"grads shape {tuple(grads.shape)} != x shape {tuple(x.shape)}")
        self.x, self.grads = x, grads
        self.d_in = int(x.shape[1])
        self.n_tokens = int(x.shape[0])
        self.has_grads = grads is not None
        self._stats = stats

    def stats(self) -> NormStats:
        if self._stats is None:
            self._stats = compute_stats(self.x)
        return self._stats

    def batches(
        self, batch_size: int, *, seed: int = 0, start: int = 0, with_grads: bool = False
    ) -> Iterator[Batch]:
        if with_grads and self.grads is None:
            raise ValueError("this source holds no gradients")
        per_epoch = self.n_tokens // batch_size
        if per_epoch == 0:
            raise ValueError(f"batch_size {batch_size} exceeds the {self.n_tokens} tokens held")
        index = start
        while True:
            epoch, offset = divmod(index, per_epoch)
            order = torch.from_numpy(epoch_permutation(self.n_tokens, seed, epoch))
            for b in range(offset, per_epoch):
                rows = order[b * batch_size : (b + 1) * batch_size]
                yield (self.x[rows], self.grads[rows]) if with_grads else self.x[rows]
            index = (epoch + 1) * per_epoch
