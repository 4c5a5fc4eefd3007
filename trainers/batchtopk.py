"""BatchTopK SAE (Bussmann, Leask & Nanda 2024, "BatchTopK Sparse Autoencoders", arXiv 2412.06410).

Training keeps the top k·B pre-activations of the whole batch (§3), so tokens get a variable
number of latents while the batch average is exactly k. At inference a global threshold θ, the
average over batches of the smallest kept activation (§3), makes the SAE a JumpReLU that needs
no batch; it is exported as SAELens `jumprelu`, as SAELens saves its own BatchTopK.

Everything else is TopK's (Gao et al. 2024): init, unit-norm decoder rows, AuxK on dead latents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from trainers import distributed
from trainers.batch_select import BatchCoupledSAE, Selection, check_decay
from trainers.distributed import SINGLE, World
from trainers.topk import TopKConfig


@dataclass(frozen=True)
class BatchTopKConfig:
    """Hyperparameters of one BatchTopK SAE."""

    d_sae: int = 4608
    """Number of latents (the SAE's width)."""
    k: int = 32
    """Average active latents per token: a batch of B keeps its top k·B (Bussmann et al., §3)."""
    aux_coef: float = 1 / 32
    """Weight of the AuxK loss on dead latents (Gao et al. 2024, App. A.2; Bussmann et al., §4)."""
    k_aux: int | None = None
    """Dead latents that AuxK uses per token; None means d_in // 2 (Gao et al. 2024, App. A.2)."""
    threshold_decay: float = 0.95
    """θ: running mean of each batch's cut, then an EMA this slow (SAELens: 0.99). Faster, so θ
    tracks the weights within the loop's final LR decay even on runs of a few hundred steps."""

    def __post_init__(self) -> None:
        TopKConfig.__post_init__(self)  # type: ignore[arg-type]  # reads only d_sae and k
        check_decay("threshold_decay", self.threshold_decay)


class BatchTopKSAE(BatchCoupledSAE):
    """A BatchTopK sparse autoencoder; satisfies trainers.protocol.SparseCoder."""

    def __init__(
        self, d_in: int, cfg: BatchTopKConfig, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(d_in, cfg, generator=generator)

    def _allocate(self, x_c: Tensor, world: World = SINGLE) -> Selection:
        return self._batch_topk(x_c, world)

    def _aux(self, x_c: Tensor, e: Tensor, ctx: Any, sel: Selection) -> tuple[str, Tensor | None]:
        return "auxk", self._auxk(x_c, e, getattr(ctx, "dead_mask", None), distributed.of(ctx))
