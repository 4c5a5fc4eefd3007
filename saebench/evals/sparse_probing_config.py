"""SparseProbingConfig: which datasets and how big, kept free of torch for `--help`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from store.errors import UserError

# Six of SAEBench's own sets as shipped in the sae-probes wheel (amazon, code, agnews) plus
# three more (news topics, wikidata gender and occupation), then our two corpus sets.
DEFAULT_DATASETS = (
    "157_amazon_5star",
    "159_code_Python",
    "161_agnews_0",
    "97_news_class",
    "56_wikidatasex_or_gender",
    "61_wikidata_occupation_isactor",
    "austen_book",
    "pydocs_section",
)


@dataclass(frozen=True)
class SparseProbingConfig:
    """k-sparse probes on mean-pooled SAE latents (SAEBench `sparse_probing`)."""

    datasets: tuple[str, ...] = DEFAULT_DATASETS
    """Probing sets: names in the sae-probes wheel (e.g. 157_amazon_5star) or the corpus sets
    austen_book and pydocs_section. Wheel sets are skipped, with one line, if it is absent."""
    n_train: int = 2000
    """Train texts per dataset (spread evenly over classes; fewer if the set is small).
    SAEBench uses 4000."""
    n_test: int = 500
    """Test texts per dataset. SAEBench uses 1000."""
    max_tokens: int = 128
    """Tokens per text, BOS included (SAEBench's context_length is 128)."""
    k_values: tuple[int, ...] = (1, 2, 5)
    """Numbers of latents in the sparse probes (SAEBench's defaults)."""
    seed: int = 42
    """Seed of the dataset sample, the balanced negatives and the probes."""
    batch_texts: int = 32
    """Texts per model forward when building an eval store, and per SAE pass."""
    store_dir: Path | None = None
    """Where eval stores live; default: <workspace>/eval_stores beside the activation store."""

    def __post_init__(self) -> None:
        if not 2 <= self.max_tokens <= 128:
            raise UserError("sparse_probing: max_tokens must be in 2..128")
        if self.n_train < 2 or self.n_test < 2:
            raise UserError("sparse_probing: n_train and n_test must be at least 2")
        if not self.k_values or min(self.k_values) < 1:
            raise UserError("sparse_probing: k_values must be positive")
        if self.batch_texts < 1:
            raise UserError("sparse_probing: batch_texts must be positive")
        if not self.datasets:
            raise UserError("sparse_probing: no datasets given")
