"""MDLConfig: the description-length eval's settings, kept free of torch for `--help`."""

from __future__ import annotations

from dataclasses import dataclass

from store.errors import UserError

DEFAULT_MDL_TOKENS = 8192  # SAEBench's buffer: 64 prompts of 128 tokens


@dataclass(frozen=True)
class MDLConfig:
    """Description length of the SAE's codes quantised into per-latent bins (SAEBench `mdl`)."""

    num_bins_values: tuple[int, ...] = (4, 6, 8, 12, 16, 32)
    """Bins per latent to try (SAEBench's defaults); the headline is the shortest description
    among those whose quantised reconstruction stays within the tolerance."""
    mse_epsilon_threshold: float = 0.01
    """Tolerance on sqrt(mean squared error per entry) / d_in of the quantised reconstruction
    (SAEBench's `mse_epsilon_threshold` and its normalisation)."""
    n_tokens: int | None = None
    """Held-out tokens (BOS excluded); None: 8192, or all held-out tokens if fewer. An explicit
    number larger than the store holds is an error."""
    batch_tokens: int = 4096
    """Activations per SAE forward."""

    def __post_init__(self) -> None:
        if not self.num_bins_values or min(self.num_bins_values) < 1:
            raise UserError("mdl: num_bins_values must be positive integers")
        if not self.mse_epsilon_threshold > 0:
            raise UserError("mdl: mse_epsilon_threshold must be positive")
        if self.batch_tokens < 1 or (self.n_tokens is not None and self.n_tokens < 1):
            raise UserError("mdl: batch_tokens and n_tokens must be positive")
