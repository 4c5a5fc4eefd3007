"""The SparseCoder protocol: what every SAE architecture provides.

Architectures are specified by behaviour, not parameters: `W_dec` is required (row i is
latent i's direction), `W_enc` is optional (matching pursuit has none).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from jaxtyping import Float
from torch import Tensor


@dataclass
class LossOut:
    """A training loss and its named parts (for logging)."""

    total: Tensor
    """The scalar that the optimiser minimises."""
    parts: dict[str, Tensor] = field(default_factory=dict)
    """Named components, e.g. {"mse": ..., "auxk": ...}; detached scalars."""
    codes: Tensor | None = None
    """The training-time codes [tokens, d_sae], dense or sparse COO, so the loop can count fires
    without re-encoding (TopK returns sparse codes and never builds the dense matrix)."""


@runtime_checkable
class SparseCoder(Protocol):
    """An SAE: encode to sparse codes, decode back, and a training loss."""

    d_in: int
    d_sae: int
    W_dec: Float[Tensor, "d_sae d_in"]
    b_dec: Float[Tensor, " d_in"]

    def encode(self, x: Float[Tensor, "tokens d_in"]) -> Float[Tensor, "tokens d_sae"]: ...

    def decode(self, codes: Float[Tensor, "tokens d_sae"]) -> Float[Tensor, "tokens d_in"]: ...

    def loss(self, x: Float[Tensor, "tokens d_in"], ctx: Any) -> LossOut:
        """The training loss on this rank's slice x of the global batch.

        `ctx.world` (trainers.distributed.World; absent means one process) names the ranks
        that share the batch: whatever the loss or its selection reads from the whole batch
        (denominators, top-k cuts, usage) is reduced with it, so every rank agrees."""
        ...
