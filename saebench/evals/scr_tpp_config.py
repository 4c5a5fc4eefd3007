"""ScrConfig and TppConfig: which datasets, how big, which ablation sizes; free of torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from store.errors import UserError

# SAEBench's numbers of ablated latents (ScrAndTppEvalConfig.n_values).
N_VALUES = (2, 5, 10, 20, 50, 100, 500)


def _validate(name: str, cfg) -> None:
    if not 2 <= cfg.max_tokens <= 128:
        raise UserError(f"{name}: max_tokens must be in 2..128")
    if cfg.n_train < 2 or cfg.n_test < 2:
        raise UserError(f"{name}: n_train and n_test must be at least 2")
    if not cfg.n_values or min(cfg.n_values) < 1:
        raise UserError(f"{name}: n_values must be positive")
    if cfg.batch_texts < 1:
        raise UserError(f"{name}: batch_texts must be positive")
    if not cfg.datasets:
        raise UserError(f"{name}: no datasets given")


@dataclass(frozen=True)
class ScrConfig:
    """Spurious correlation removal (SAEBench `scr`; Karvonen et al. 2024, arXiv 2411.18895)."""

    datasets: tuple[str, ...] = ("amazon_yelp_x_sentiment", "wikidata_arts_public_x_gender")
    """Two-attribute sets (store/scr_datasets.py): amazon_yelp_x_sentiment and
    wikidata_arts_public_x_gender need the sae-probes wheel (skipped, with one line, if it is
    absent); emma_mansfieldpark_x_dialogue needs only the Austen corpus."""
    n_train: int = 1600
    """Train texts per set, a quarter per (a, b) quadrant (fewer if a quadrant is small). The
    biased probe sees the two confounded quadrants, half of them. SAEBench uses 4000."""
    n_test: int = 800
    """Test texts per set, a quarter per quadrant. SAEBench uses 1000."""
    n_values: tuple[int, ...] = N_VALUES
    """Numbers of latents ablated (each clipped to d_sae)."""
    max_tokens: int = 128
    """Tokens per text, BOS included (SAEBench's context_length is 128)."""
    seed: int = 42
    """Seed of the sample and the probes."""
    batch_texts: int = 32
    """Texts per model forward when building an eval store, and per SAE pass."""
    store_dir: Path | None = None
    """Where eval stores live; default: <workspace>/eval_stores beside the activation store."""

    def __post_init__(self) -> None:
        _validate("scr", self)


@dataclass(frozen=True)
class TppConfig:
    """Targeted probe perturbation (SAEBench `tpp`; arXiv 2411.18895, section 3)."""

    datasets: tuple[str, ...] = ("97_news_class", "austen_book")
    """Multi-class sets (3 or more classes): names in the sae-probes wheel (97_news_class) or
    the corpus sets austen_book and pydocs_section. With the same sizes and seed as
    sparse_probing, the two evals share one eval store per set."""
    n_train: int = 2000
    """Train texts per set, spread evenly over classes. SAEBench uses 4000."""
    n_test: int = 500
    """Test texts per set. SAEBench uses 1000."""
    n_values: tuple[int, ...] = N_VALUES
    """Numbers of latents ablated per class (each clipped to d_sae)."""
    max_tokens: int = 128
    """Tokens per text, BOS included (SAEBench's context_length is 128)."""
    seed: int = 42
    """Seed of the sample, the balanced negatives and the probes."""
    batch_texts: int = 32
    """Texts per model forward when building an eval store, and per SAE pass."""
    store_dir: Path | None = None
    """Where eval stores live; default: <workspace>/eval_stores beside the activation store."""

    def __post_init__(self) -> None:
        _validate("tpp", self)
