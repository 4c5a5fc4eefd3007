"""IOIPrincipledConfig: settings of the supervised-dictionary IOI eval, free of torch for `--help`.

Makelov, Lange & Nanda 2024, "Towards Principled Evaluations of Sparse Autoencoders for
Interpretability and Control" (arXiv 2405.08366). Their IOI setup is GPT-2 small with its
circuit's nodes; ours is the residual stream at the last prompt token at the SAE's hook, and
the sizes below are ours, chosen so one SAE takes a few CPU minutes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IOIPrincipledConfig:
    """Supervised IOI dictionaries vs an SAE: approximation, sparse control, interpretability."""

    site: str = "end"
    """The position whose activation is reconstructed and edited: "end" (the last prompt
    token, the paper's choice), "io" (the IO name) or "s2" (the repeated S name). On
    SmolLM2-135M at blocks.15.hook_resid_post, END carries none of the task yet
    (benchmarks/results/ioi_principled.md); "io" does."""
    n_fit: int = 384
    """Prompts that fit the supervised dictionary, the latents' attribute F1s and the means."""
    n_test: int = 128
    """Held-out prompts (each with an IO-swapped counterfactual) that approximation and
    control are measured on."""
    n_names: int = 16
    """Names used (the first this many single-token names of the IOI task, sorted): fewer
    names give each name value more prompts, so its mean vector is better estimated."""
    budgets: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    """Numbers of SAE latents the sparse-control edit may change."""
    n_kept_per_value: int = 1
    """Task-relevant latents kept per attribute value (its top-F1 latents) in the
    interpretable-latents approximation; every other latent is mean-ablated."""
    seed: int = 0
    """Seed of the prompts (names, templates, counterfactual names)."""
    batch_prompts: int = 64
    """Prompts per model forward."""
