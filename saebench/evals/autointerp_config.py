"""The autointerp eval's config (apart from its code: the CLI reads it before torch loads)."""

from __future__ import annotations

from dataclasses import dataclass

from store.errors import UserError


@dataclass(frozen=True)
class AutointerpConfig:
    """Explain sampled latents from their contexts, then score each explanation by detection.

    Without `base_url` the explainer and judge are a deterministic token-pattern pair (no LLM);
    its score is reported as `lexical_detection_accuracy`, never as LLM interpretability."""

    n_latents: int = 50
    """Alive latents sampled (seeded) for explanation; fewer if fewer are alive."""
    seed: int = 0
    """Seed of the latent sample, the importance and random samples and the shuffles."""
    n_tokens: int | None = None
    """Held-out tokens read (BOS excluded); None: all of them."""
    min_fires: int = 15
    """A latent is alive if it fires on at least this many of those tokens (SAEBench: 15)."""
    buffer: int = 10
    """Tokens on each side of the centre token of a context (cut at the window's edges)."""
    n_top_explain: int = 10
    """Top-activating contexts shown to the explainer."""
    n_iw_explain: int = 5
    """Importance-sampled contexts (probability ∝ activation, below the top) shown to it."""
    n_top_score: int = 2
    """Top-activating contexts in the detection test (disjoint from the explainer's)."""
    n_iw_score: int = 2
    """Importance-sampled contexts in the detection test."""
    n_random_score: int = 10
    """Uniformly random contexts in the detection test (mostly the latent is silent there)."""
    act_threshold_frac: float = 0.01
    """A context counts as 'fires' if some token exceeds this fraction of the top activation."""
    batch_tokens: int = 4096
    """Activations per SAE forward."""
    base_url: str | None = None
    """OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (vLLM, Ollama, llama.cpp or
    hosted). None: the offline token-pattern explainer and judge."""
    model: str = "gpt-4o-mini"
    """Chat model that explains and judges (SAEBench uses gpt-4o-mini)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key; unset is fine for local servers."""
    retries: int = 3
    """Extra attempts after a transient failure (connection, timeout, HTTP 408/429/5xx)."""
    retry_wait_s: float = 1.0
    """First wait before a retry; doubles on each further retry."""
    timeout_s: float = 60.0
    """Seconds to wait for one API response."""
    pattern_tokens: int = 3
    """Offline explainer: most frequent activating tokens kept in a latent's pattern."""

    def __post_init__(self) -> None:
        for name in ("n_latents", "min_fires", "n_top_explain", "n_top_score", "batch_tokens"):
            if getattr(self, name) < 1:
                raise UserError(f"autointerp: {name} must be positive")
        for name in ("buffer", "n_iw_explain", "n_iw_score", "n_random_score", "retries"):
            if getattr(self, name) < 0:
                raise UserError(f"autointerp: {name} must be >= 0")
        if not 0.0 <= self.act_threshold_frac < 1.0:
            raise UserError("autointerp: act_threshold_frac must be in [0, 1)")
        if self.n_tokens is not None and self.n_tokens < 1:
            raise UserError("autointerp: n_tokens must be positive")
