"""MetaStructureConfig: the meta-SAE eval's settings, kept free of torch for `--help`."""

from __future__ import annotations

from dataclasses import dataclass

from store.errors import UserError


@dataclass(frozen=True)
class MetaStructureConfig:
    """Train a BatchTopK meta-SAE on the SAE's decoder rows; report the variance it explains.

    Defaults are SAEBench's `meta_structure` (sae_bench/evals/meta_structure/eval_config.py),
    after Bussmann et al. 2025 ("Learning Multi-Level Features with Matryoshka SAEs", App. D.1).
    """

    width_ratio: float = 0.25
    """Meta-SAE latents as a fraction of the SAE's d_sae (rounded up, at least k)."""
    k: int = 4
    """Average active meta-latents per decoder row (BatchTopK)."""
    steps: int = 1500
    """Optimiser steps."""
    batch_size: int = 1024
    """Decoder rows per step, sampled with replacement."""
    lr: float = 5e-4
    """Adam learning rate (constant, no warm-up, as SAEBench's run)."""
    eval_batch_size: int = 4096
    """Decoder rows per batch-level selection when scoring (SAEBench's eval batch)."""
    seed: int = 42
    """Seed of the meta-SAE's init and of the row sampling."""

    def __post_init__(self) -> None:
        if not 0 < self.width_ratio:
            raise UserError("meta_structure: width_ratio must be positive")
        for name in ("k", "steps", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"meta_structure: {name} must be positive")
        if not self.lr > 0:
            raise UserError("meta_structure: lr must be positive")
