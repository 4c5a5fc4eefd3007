"""AbsorptionConfig: the first-letter absorption eval's settings, kept free of torch for `--help`.

Defaults are SAEBench's (`sae_bench/evals/absorption/eval_config.py` and the module constants of
`feature_absorption.py`), following Chanin et al. 2024, "A is for Absorption" (arXiv 2409.14507).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AbsorptionConfig:
    """First-letter feature absorption (SAEBench `absorption_first_letter`)."""

    prompt_template: str = "{word} has the first letter:"
    """ICL template; every example is followed by its answer (" C") and a newline."""
    max_icl_examples: int = 10
    """In-context examples before the target word, drawn from the same split's words."""
    max_words: int | None = None
    """Use at most this many vocabulary words (a seeded sample); None: all single-token
    alphabetic words, as SAEBench does (about 30k for SmolLM2: slow on a CPU)."""
    train_fraction: float = 0.8
    """Share of the words whose prompts train the probes; the rest are the test split."""
    seed: int = 42
    """Seed for the word sample, the split and the ICL examples."""
    batch_prompts: int = 64
    """Prompts per model forward."""
    max_k: int = 10
    """Largest k of the k-sparse probes on SAE latents."""
    f1_jump_threshold: float = 0.03
    """A k-sparse probe whose test F1 beats k-1's by more than this adds a main latent."""
    l1_decay: float = 0.01
    """L1 penalty of the sparse probe that ranks latents for the k-sparse probes."""
    l1_epochs: int = 50
    """Epochs of that sparse probe."""
    min_probe_f1: float = 0.6
    """A letter counts only if the ground-truth probe's test F1 exceeds this."""
    min_letters: int = 20
    """Fewer counting letters than this and the eval is skipped (SAEBench's min_feats_for_eval)."""
    fraction_cos_threshold: float = 0.1
    """Absorption fraction: a candidate absorbing latent's decoder must have this cosine with
    the probe direction."""
    full_cos_threshold: float = 0.025
    """Full absorption: the top-projecting latent's decoder cosine with the probe."""
    projection_threshold: float = 0.4
    """Absorbing latents must carry at least this share of the probe projection (both scores)."""
    max_absorbing_latents: int = 3
    """At most this many latents may share an absorbed feature (absorption fraction)."""
