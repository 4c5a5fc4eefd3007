"""The autointerp eval: explain sampled latents, then score each explanation by detection.

Protocol (SAEBench's autointerp, Karvonen et al. 2025, arXiv 2503.09532): for each of
`n_latents` seeded alive latents, an explainer sees its top and importance-sampled held-out
contexts; a judge then reads the explanation and 2 top + 2 importance-sampled + 10 random
contexts, shuffled, and says which ones fire. The score is the judge's accuracy. With an
endpoint the explainer and judge are one chat model; without, a deterministic token-pattern
pair (saebench/evals/autointerp_judge.py), reported under its own metric name.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from saebench.evals.autointerp_config import AutointerpConfig
from saebench.evals.autointerp_data import (
    LatentContexts,
    fire_counts,
    latent_contexts,
    latent_grid,
    plan_tokens,
    sample_latents,
)
from saebench.evals.autointerp_judge import (
    detect_messages,
    detection_accuracy,
    explain_messages,
    parse_explanation,
    parse_predictions,
    pattern_predictions,
    token_pattern,
)
from saebench.evals.context import EvalContext, EvalResult
from store.errors import UserError

LEXICAL = "lexical_detection_accuracy"
LLM = "autointerp_score"  # SAEBench's name for the same accuracy with an LLM judge
EXPLAIN_MAX_TOKENS, DETECT_MAX_TOKENS = 60, 40
WORKERS = 8  # concurrent API requests: latency-bound, and local servers batch them


def check(ctx: EvalContext, cfg: AutointerpConfig) -> None:
    """Validate the inputs cheaply, before any eval runs."""
    if ctx.n_heldout < 1:
        raise UserError(f"{ctx.store_path or 'the store'} holds no held-out tokens to explain")
    if cfg.base_url is not None and not cfg.base_url.startswith(("http://", "https://")):
        raise UserError(f"autointerp: base_url must start with http:// or https:// "
                        f"(got {cfg.base_url!r})")


def token_renderer(store) -> Callable[[int], str]:
    """Token id -> text, from the store's vocab table where it has one."""
    vocab = getattr(store, "vocab", None)
    if callable(vocab):
        table = vocab().to_pydict()
        text = dict(zip(table["token_id"], table["token"], strict=True))
        return lambda t: text.get(t, f"[{t}]")
    return lambda t: f"[{t}]"


def _lexical(lc: LatentContexts, cfg: AutointerpConfig, render) -> tuple[str, set[int] | None]:
    pattern = token_pattern(lc.explain, lc.threshold, cfg.pattern_tokens)
    return pattern.describe(render), pattern_predictions(pattern, lc.score)


def _llm(lc: LatentContexts, client, render) -> tuple[str, set[int] | None]:
    reply = client.complete(explain_messages(lc.explain, lc.threshold, render),
                            EXPLAIN_MAX_TOKENS)
    explanation = parse_explanation(reply)
    verdict = client.complete(detect_messages(explanation, lc.score, render), DETECT_MAX_TOKENS)
    return explanation, parse_predictions(verdict, len(lc.score))


def _summary(scores: list[float], name: str) -> dict[str, float]:
    ok = [s for s in scores if not math.isnan(s)]
    return {
        name: statistics.fmean(ok) if ok else math.nan,
        f"{name}_std": statistics.stdev(ok) if len(ok) > 1 else math.nan,
        f"{name}_n": float(len(ok)),
    }


def run(ctx: EvalContext, cfg: AutointerpConfig) -> EvalResult:
    """Run autointerp on `ctx`'s held-out split."""
    n_tokens = plan_tokens(ctx, cfg)
    counts = fire_counts(ctx, cfg, n_tokens)
    latents = sample_latents(counts, cfg)
    render = token_renderer(ctx.store)
    contexts: list[LatentContexts] = []
    if latents:
        tokens, acts = latent_grid(ctx, cfg, latents, n_tokens)
        for j, latent in enumerate(latents):
            lc = latent_contexts(latent, tokens, acts[..., j], cfg)
            if lc is not None:
                contexts.append(lc)
    if cfg.base_url is None:
        name, explainer = LEXICAL, "token-pattern"
        answers = [_lexical(lc, cfg, render) for lc in contexts]
    else:
        from saebench.evals.autointerp_api import ChatClient

        name, explainer = LLM, f"llm:{cfg.model}"
        client = ChatClient.from_config(cfg)
        with ThreadPoolExecutor(WORKERS) as pool:
            answers = list(pool.map(lambda lc: _llm(lc, client, render), contexts))
    scores, silent = [], []
    for lc, (_, predicted) in zip(contexts, answers, strict=True):
        truth = [c.fires(lc.threshold) for c in lc.score]
        scores.append(math.nan if predicted is None else detection_accuracy(predicted, truth))
        silent.append(1.0 - sum(truth) / len(truth))
    metrics = _summary(scores, name) | {
        "all_silent_accuracy": statistics.fmean(silent) if silent else math.nan,
        "n_alive": float(int((counts >= cfg.min_fires).sum())),
        "n_sampled": float(len(latents)),
        "n_skipped": float(len(latents) - len(contexts)),
        "n_unparsed": float(sum(math.isnan(s) for s in scores)),
        "tokens_read": float(n_tokens),
    }
    notes = {
        "protocol": f"per latent: explanation from {cfg.n_top_explain} top + {cfg.n_iw_explain} "
        f"importance-sampled contexts (±{cfg.buffer} tokens); detection test on "
        f"{cfg.n_top_score} top + {cfg.n_iw_score} importance-sampled + {cfg.n_random_score} "
        f"random contexts, shuffled (seed {cfg.seed}); score = the judge's accuracy",
        "latents": f"{len(latents)} sampled from {int(metrics['n_alive'])} latents with >= "
        f"{cfg.min_fires} fires in {n_tokens} held-out tokens; {len(latents) - len(contexts)} "
        "skipped for too few distinct top contexts",
        "baseline": "all_silent_accuracy: what a judge that never predicts firing scores",
    }
    if cfg.base_url is None:
        notes["explainer"] = (
            f"offline: each latent's {cfg.pattern_tokens} most frequent activating tokens "
            "(with a fixed preceding token where there is one); the judge predicts firing "
            "where a context contains them. A lexical baseline, not LLM interpretability; "
            "pass --autointerp.base-url for SAEBench's LLM protocol"
        )
    else:
        notes["explainer"] = f"{cfg.model} at {cfg.base_url} explains and judges"
        notes["unparsed"] = "latents whose judge reply was not a list of numbers are not scored"
    table = {
        "latent": np.array([lc.latent for lc in contexts], dtype=np.int64),
        "explanation": np.array([a[0] for a in answers], dtype=object),
        "explainer": np.array([explainer] * len(contexts), dtype=object),
        "score": np.array(scores, dtype=np.float64),
        "fires": np.array([int(counts[lc.latent]) for lc in contexts], dtype=np.int64),
    }
    return EvalResult(metrics=metrics, notes=notes, tables={"explanations": table})
