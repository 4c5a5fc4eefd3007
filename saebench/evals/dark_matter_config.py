"""DarkMatterConfig: the dark-matter eval's settings, kept free of torch for `--help`."""

from __future__ import annotations

from dataclasses import dataclass

from store.errors import UserError

PURSUITS = ("refit", "gp")
DEFAULT_FIT_TOKENS = 16384


@dataclass(frozen=True)
class DarkMatterConfig:
    """How much of an SAE's error a linear map of x predicts (Engels, Riggs & Tegmark 2024,
    arXiv 2410.14670), and how much inference-time code optimisation removes."""

    fit_tokens: int | None = None
    """Train-split tokens (BOS excluded) on which the linear maps x -> error and x -> ‖error‖
    are fitted; None: 16384, or every train token if fewer (577 parameters per target, so
    overfitting stays near 577/16384 = 3.5% of the unexplained part). More than the store
    holds is an error."""
    n_tokens: int | None = None
    """Held-out tokens on which R² and the shares are measured; None: every held-out token, as
    the core eval (the FVU of a random half of SmolLM2's held-out split swings by 2x: a few
    high-norm tokens carry much of Var(x)). More than the store holds is an error."""
    ridge: float = 1e-4
    """Ridge penalty, relative to the mean per-dimension variance of x (the intercept is not
    penalised); small, only to keep the normal equations well conditioned."""
    pursuit: tuple[str, ...] = PURSUITS
    """Inference-time optimisations to score on the decoder: `refit` (the SAE's own support,
    coefficients re-optimised) and `gp` (gradient pursuit choosing a new support of the same
    size); empty: none."""
    pursuit_fit_tokens: int = 4096
    """Train tokens on which the linear maps of the pursuit comparison are fitted (pursuit is
    run on them too, so the SAE's and the pursuit's errors are fitted alike; fewer than
    fit_tokens because gradient pursuit costs k full-dictionary correlations per token, so
    its linear shares read lower than the main ones: compare them with `sae/*`)."""
    pursuit_tokens: int = 2048
    """Held-out tokens (the first ones) on which the pursuit comparison is measured."""
    refine_steps: int = 20
    """Projected-gradient steps on a fixed support: the whole of `refit`, and the polish after
    gradient pursuit has chosen its atoms."""
    batch_tokens: int = 2048
    """Activations per SAE forward (and per pursuit batch)."""

    def __post_init__(self) -> None:
        for name in ("fit_tokens", "n_tokens"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise UserError(f"dark_matter: {name} must be at least 2 (or None: all)")
        if min(self.pursuit_fit_tokens, self.pursuit_tokens, self.batch_tokens) < 1:
            raise UserError("dark_matter: pursuit_fit_tokens, pursuit_tokens and batch_tokens "
                            "must be positive")
        if not self.ridge >= 0:
            raise UserError("dark_matter: ridge must be >= 0")
        if self.refine_steps < 0:
            raise UserError("dark_matter: refine_steps must be >= 0")
        unknown = [p for p in self.pursuit if p not in PURSUITS]
        if unknown:
            raise UserError(f"dark_matter: unknown pursuit {unknown[0]!r}; choose from "
                            f"{', '.join(PURSUITS)}")
