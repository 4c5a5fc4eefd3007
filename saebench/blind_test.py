"""The blind detection test: a person plays the autointerp judge for one latent.

SAEBench's autointerp (Karvonen et al. 2025, arXiv 2503.09532) scores an explanation by how
accurately a judge, reading only the explanation, picks which of 2 top + 2 importance-sampled
+ 10 random contexts make the latent fire. Here the contexts come from the autointerp eval's
own sampler (saebench/evals/autointerp_data.py) under the eval's recorded config, so for a
latent that the eval explained, the person sees exactly the contexts its judge saw, and the
two accuracies compare like for like. The store is opened read-only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from saebench.evals.autointerp import token_renderer
from saebench.evals.autointerp_config import AutointerpConfig
from saebench.evals.autointerp_data import Context, latent_contexts, latent_grid, plan_tokens
from saebench.evals.autointerp_judge import detection_accuracy
from saebench.evals.context import EvalContext
from store.catalog import workspace_of
from store.errors import UserError

# Held-out tokens read when the SAE has no autointerp eval to copy the config from: enough
# for the 12 distinct top contexts of a latent firing once per ~10k tokens, and a few seconds
# of SAE forwards on a CPU.
DEFAULT_TOKENS = 100_000


@dataclass(frozen=True)
class BlindSet:
    """One latent's detection test: the shuffled contexts, and the truth kept for scoring."""

    sae: str
    latent: int
    contexts: list[Context]
    """In the order shown; each carries its kind ('top', 'iw', 'random') and activations."""
    texts: list[list[str]]
    """Each context's token strings (the store's vocab)."""
    threshold: float
    """A context fires if some activation exceeds this (the eval's act_threshold_frac rule)."""
    config: AutointerpConfig
    same_as_eval: bool
    """The config is the SAE's autointerp eval's: these are the contexts its judge saw."""

    @property
    def truth(self) -> list[bool]:
        return [c.fires(self.threshold) for c in self.contexts]

    def score(self, ticked: set[int]) -> float:
        """Detection accuracy of a person who ticked the contexts at these positions."""
        return detection_accuracy(set(ticked), self.truth)


def _recorded_eval(sae_dir: Path) -> dict:
    path = Path(sae_dir) / "evals" / "autointerp.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def eval_config(sae_dir: Path) -> tuple[AutointerpConfig, bool]:
    """The config the SAE's autointerp eval ran with (True), else the defaults capped at
    DEFAULT_TOKENS held-out tokens (False)."""
    recorded = _recorded_eval(sae_dir).get("config") or {}
    if recorded:
        known = {f.name for f in fields(AutointerpConfig)}
        return AutointerpConfig(**{k: v for k, v in recorded.items() if k in known}), True
    return AutointerpConfig(n_tokens=DEFAULT_TOKENS), False


def eval_store(sae_dir: Path) -> Path | None:
    """The store the autointerp eval read, if it still exists (as given, or relative to the
    workspace); None: the SAE's own recorded store."""
    given = (_recorded_eval(sae_dir).get("store") or {}).get("path")
    if not isinstance(given, str) or not given:
        return None
    for path in (Path(given), workspace_of(sae_dir) / given):
        if path.exists():
            return path
    return None


def blind_set_for(ctx: EvalContext, sae: str, latent: int, cfg: AutointerpConfig,
                  same_as_eval: bool = False) -> BlindSet | None:
    """The detection test of one latent of `ctx`'s SAE; None if it has too few distinct top
    contexts to hold any out (the eval skips such latents too)."""
    d_sae = int(ctx.sae.d_sae)
    if not 0 <= latent < d_sae:
        raise UserError(f"latent {latent} is out of range for {sae} (d_sae {d_sae})")
    if ctx.n_heldout < 1:
        raise UserError(f"{ctx.store_path or 'the store'} holds no held-out tokens")
    tokens, acts = latent_grid(ctx, cfg, [latent], plan_tokens(ctx, cfg))
    lc = latent_contexts(latent, tokens, acts[..., 0], cfg)
    if lc is None:
        return None
    render = token_renderer(ctx.store)
    texts = [[render(t) for t in c.tokens] for c in lc.score]
    return BlindSet(sae, latent, lc.score, texts, lc.threshold, cfg, same_as_eval)


def open_sae(workspace: Path, sae: str) -> tuple[EvalContext, AutointerpConfig, bool]:
    """An SAE of the workspace with its store opened read-only (the one its autointerp eval
    read, else its own), and its autointerp config."""
    from saebench.evals.runner import open_context

    sae_dir = Path(workspace) / "saes" / sae
    if not (sae_dir / "cfg.json").is_file():
        raise UserError(f"no SAE {sae!r} in {workspace}")
    cfg, same = eval_config(sae_dir)
    return open_context(sae_dir, eval_store(sae_dir), "cpu"), cfg, same


def blind_set(workspace: Path, sae: str, latent: int) -> BlindSet | None:
    """The detection test of one latent of a workspace's SAE (see `blind_set_for`)."""
    ctx, cfg, same = open_sae(workspace, sae)
    return blind_set_for(ctx, sae, latent, cfg, same)
