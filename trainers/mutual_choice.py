"""Mutual Choice SAE (Ayonrinde 2024, "Adaptive Sparse Allocation with Mutual Choice & Feature
Choice Sparse Autoencoders", arXiv 2411.02124).

Token-latent matching as resource allocation (§3): with a budget of k·B matches per batch and
no other constraint, the best allocation keeps the k·B largest pre-activations of the whole
[tokens, d_sae] matrix, so tokens and latents both get variable counts. (The selection is
BatchTopK's, found concurrently; trainers/batch_select.py holds it once.) The aux loss is
aux_zipf_loss, for dead and under-used latents alike (trainers/aux_zipf.py).

Inference: a global threshold θ, the calibrated smallest kept activation (as for BatchTopK),
exported as SAELens `jumprelu` with θ broadcast to every latent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from trainers.aux_zipf import ZipfAuxConfig, ZipfAuxSAE
from trainers.batch_select import Selection
from trainers.distributed import SINGLE, World


@dataclass(frozen=True)
class MutualChoiceConfig(ZipfAuxConfig):
    """Hyperparameters of one mutual choice SAE (the fields are ZipfAuxConfig's)."""


class MutualChoiceSAE(ZipfAuxSAE):
    """A mutual choice sparse autoencoder; satisfies trainers.protocol.SparseCoder."""

    def __init__(
        self, d_in: int, cfg: MutualChoiceConfig, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(d_in, cfg, generator=generator)

    def _allocate(self, x_c: Tensor, world: World = SINGLE) -> Selection:
        return self._batch_topk(x_c, world)
