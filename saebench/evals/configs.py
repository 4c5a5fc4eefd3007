"""Eval configs: frozen dataclasses, one per eval, light enough for `saebench eval --help`.

They live apart from the eval code because the CLI builds its flags from them at start-up,
before torch or TransformerLens is imported.
"""

from __future__ import annotations

from dataclasses import dataclass

from store.errors import UserError

DEFAULT_CE_TOKENS = 8192  # ~1 min of four SmolLM2 passes on 2 CPU cores; fits a default store


@dataclass(frozen=True)
class CoreConfig:
    """Reconstruction, downstream (spliced CE/KL) and feature-frequency metrics."""

    n_tokens: int | None = None
    """Held-out tokens for reconstruction and fire counts (BOS excluded); None: all of them.
    Asking for more than the store holds is an error."""
    ce_tokens: int | None = None
    """Predicted tokens to average CE and KL over, rounded up to whole windows; 0 skips the
    downstream metrics and the model. None: 8192, or all held-out windows if they hold fewer.
    An explicit number larger than the store holds is an error."""
    batch_tokens: int = 4096
    """Activations per SAE forward when streaming the held-out split."""
    ce_batch_tokens: int = 1024
    """Tokens per model forward in the downstream passes (bounds the logits' memory)."""
    splice_bos: bool = False
    """Also replace position 0 (BOS) in the downstream passes. Off by default: the store never
    holds position 0, so the SAE never saw its outlier activation; on reproduces SAELens's
    zero-ablation, which zeroes every position."""
    dead_window: int = 10_000_000
    """A latent is dead if it never fires within this many eval tokens (or all, if fewer)."""

    def __post_init__(self) -> None:
        for name in ("batch_tokens", "ce_batch_tokens", "dead_window"):
            if getattr(self, name) < 1:
                raise UserError(f"core: {name} must be positive")
        if self.ce_tokens is not None and self.ce_tokens < 0:
            raise UserError("core: ce_tokens must be >= 0")
        if self.n_tokens is not None and self.n_tokens < 2:
            raise UserError("core: n_tokens must be >= 2")
