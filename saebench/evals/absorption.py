"""The first-letter feature absorption eval (SAEBench `absorption_first_letter`).

Chanin et al. 2024, "A is for Absorption" (arXiv 2409.14507): a letter's main SAE latents
sometimes stay silent on words that start with the letter, because a more specific latent
(a "short" token latent) has absorbed the letter direction. Scores, as SAEBench's
`feature_absorption_calculator.py` defines them, over test words the ground-truth probe gets right:
- absorption fraction: the share of the word's probe projection that the main latents miss and
  at most 3 other probe-aligned latents (decoder cosine >= 0.1) carry, if those carry >= 40%;
- full absorption: every main latent is 0, and the top-projecting latent (cosine >= 0.025)
  carries >= 40% of the probe projection.
Per letter, sums over those words divided by their count; the means and standard deviations
over letters whose probe has test F1 > 0.6, if at least 20 such letters exist.

`score` takes activations and labels (no model); `run` builds them with the model.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from saebench.evals.absorption_config import AbsorptionConfig
from saebench.evals.absorption_data import LETTERS, Split
from saebench.evals.absorption_probes import (
    N_LETTERS,
    encode_all,
    f1,
    fit_letter_probes,
    l1_ranking,
    main_latents,
)
from saebench.evals.context import EvalContext, EvalResult
from store.errors import UserError

EPS = 1e-8  # SAEBench's "this latent did not fire"


def word_absorption(
    x: Float[Tensor, "words d_in"],
    codes: Float[Tensor, "words d_sae"],
    probe_dir: Float[Tensor, " d_in"],
    dec_cos: Float[Tensor, " d_sae"],
    main: list[int],
    cfg: AbsorptionConfig,
) -> tuple[Tensor, Tensor]:
    """(absorption fraction, is full absorption) per word, for one letter's probe direction
    (unit), its cosines with every decoder row, and the letter's main latents."""
    act_proj = x.float() @ probe_dir  # the probe's view of the residual, no bias
    proj = codes * dec_cos  # each latent's contribution along the probe
    main_proj = proj[:, main].sum(1)
    candidate = dec_cos >= cfg.fraction_cos_threshold
    candidate[main] = False
    cand = proj[:, candidate].clamp(min=0)  # only latents that push toward the letter
    n_top = min(cfg.max_absorbing_latents, cand.shape[1])
    top = cand.topk(n_top, dim=1).values.sum(1) if n_top else torch.zeros(len(x))
    positive = act_proj > 0  # a word the probe does not see as the letter cannot absorb it
    share = torch.where(positive, top / act_proj.clamp(min=EPS), torch.zeros_like(top))
    absorbed = torch.minimum(top, act_proj - main_proj)
    partial = (absorbed / (absorbed + main_proj)).clamp(0, 1)
    fraction = torch.where(main_proj <= 0, torch.ones_like(partial), partial)
    none = (main_proj >= act_proj) | (share < cfg.projection_threshold) | ~positive
    fraction = torch.where(none, torch.zeros_like(fraction), fraction)

    main_silent = (codes[:, main] < EPS).all(1)
    top_proj, top_id = proj.max(1)
    full = (
        main_silent
        & (dec_cos[top_id] >= cfg.full_cos_threshold)
        & positive
        & (top_proj >= cfg.projection_threshold * act_proj)
    )
    return fraction, full


def _letter_table(n: int) -> dict[str, list]:
    keys = ("letter", "counted", "probe_f1", "n_train_words", "n_test_words",
            "num_probe_true_positives", "num_split_features", "main_latents",
            "mean_absorption_fraction", "full_absorption_rate", "num_full_absorption")
    return {k: [None] * n for k in keys}


def score(sae, train: Split, test: Split, cfg: AbsorptionConfig) -> EvalResult:
    """The eval from activations and letters alone: probes, main latents, absorption."""
    probes = fit_letter_probes(train.x, train.letters)
    test_scores = probes.scores(test.x)
    codes_train, codes_test = encode_all(sae, train.x), encode_all(sae, test.x)
    ranking = l1_ranking(codes_train, train.letters, cfg.l1_decay, cfg.l1_epochs, cfg.seed)
    mains = main_latents(codes_train, train.letters, codes_test, test.letters, ranking,
                         cfg.max_k, cfg.f1_jump_threshold)
    W_dec = sae.W_dec.detach().float().cpu()
    unit_dec = W_dec / W_dec.norm(dim=1, keepdim=True).clamp(min=EPS)
    table = _letter_table(N_LETTERS)
    for i in range(N_LETTERS):
        y = test.letters == i
        hit = y & (test_scores[:, i] > 0).numpy()
        probe_f1 = f1(y, (test_scores[:, i] > 0).numpy())
        main = mains[i].latents
        row = dict(letter=LETTERS[i], counted=probe_f1 > cfg.min_probe_f1, probe_f1=probe_f1,
                   n_train_words=int((train.letters == i).sum()), n_test_words=int(y.sum()),
                   num_probe_true_positives=int(hit.sum()), num_split_features=len(main),
                   main_latents=",".join(map(str, main)), mean_absorption_fraction=np.nan,
                   full_absorption_rate=np.nan, num_full_absorption=0)
        if hit.any():
            direction = probes.W[i] / probes.W[i].norm()
            frac, full = word_absorption(test.x[hit], codes_test[hit], direction,
                                         unit_dec @ direction, main, cfg)
            row |= dict(mean_absorption_fraction=float(frac.mean()),
                        full_absorption_rate=float(full.float().mean()),
                        num_full_absorption=int(full.sum()))
        for key, value in row.items():
            table[key][i] = value
    return _result(table, train, test, cfg)


def _result(table: dict[str, list], train: Split, test: Split, cfg) -> EvalResult:
    counted = [i for i in range(N_LETTERS) if table["counted"][i]]
    notes = {
        "data": f"{len(train.words)} train and {len(test.words)} test words, one ICL prompt "
                f"each ({cfg.max_icl_examples} examples of '{cfg.prompt_template}'), "
                "activation at the target word's token",
        "protocol": "SAEBench absorption_first_letter (Chanin et al. 2024, arXiv 2409.14507); "
                    "scores over test words the probe gets right",
    }
    tables = {"absorption_letters": {k: np.array(v) for k, v in table.items()}}
    if len(counted) < cfg.min_letters:
        low = ", ".join(f"{LETTERS[i]} {table['probe_f1'][i]:.2f}" for i in range(N_LETTERS))
        reason = (f"only {len(counted)} letters have a ground-truth probe with test F1 > "
                  f"{cfg.min_probe_f1}, fewer than min_letters {cfg.min_letters} (F1: {low})")
        return skipped(reason, notes, tables)

    def stats(key: str) -> tuple[float, float]:
        values = [float(table[key][i]) for i in counted]
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else np.nan

    metrics: dict[str, float] = {}
    for name, key in (("absorption_fraction_score", "mean_absorption_fraction"),
                      ("full_absorption_score", "full_absorption_rate"),
                      ("num_split_features", "num_split_features")):
        metrics[f"mean_{name}"], metrics[f"std_dev_{name}"] = stats(key)
    metrics |= {"n_letters": float(len(counted)),
                "mean_probe_f1": float(np.mean([table["probe_f1"][i] for i in counted])),
                "n_train_words": float(len(train.words)), "n_test_words": float(len(test.words))}
    return EvalResult(metrics=metrics, notes=notes, tables=tables)


def skipped(reason: str, notes: dict | None = None, tables: dict | None = None) -> EvalResult:
    """A result that carries no score, only the one-line reason (metrics: skipped = 1)."""
    return EvalResult(metrics={"skipped": 1.0}, notes={"skipped": reason, **(notes or {})},
                      tables=tables or {})


def check(ctx: EvalContext, cfg: AbsorptionConfig) -> None:
    """Validate the config cheaply, before any eval runs."""
    if not 0 < cfg.train_fraction < 1:
        raise UserError(f"absorption train_fraction must be in (0, 1), got {cfg.train_fraction}")
    if cfg.max_k < 1 or cfg.max_icl_examples < 0 or cfg.min_letters < 1:
        raise UserError("absorption max_k and min_letters must be >= 1, max_icl_examples >= 0")
    if "{word}" not in cfg.prompt_template:
        raise UserError(f"absorption prompt_template has no {{word}}: {cfg.prompt_template!r}")


def cache_root(ctx: EvalContext) -> Path | None:
    """Where the prompts' activations are cached: the local workspace's eval_stores folder
    (beside the probing evals' stores); None for a remote store (no cache)."""
    if not ctx.store_path or "://" in ctx.store_path:
        return None
    return Path(ctx.store_path).parent / "eval_stores"


def run(ctx: EvalContext, cfg: AbsorptionConfig) -> EvalResult:
    """Build first-letter prompts from the model's vocabulary, read activations at the SAE's
    hook, and score absorption."""
    from saebench.evals.absorption_data import PromptBuilder, alpha_words, make_split, split_words

    model = ctx.model()
    words = alpha_words(model.tokenizer)
    train_words, test_words = split_words(words, cfg)
    smallest = min(len(train_words), len(test_words))
    if smallest <= max(cfg.max_icl_examples, 1):
        return skipped(f"the tokenizer gives {len(words)} single-token alphabetic words "
                       f"(max_words {cfg.max_words}); a split of {smallest} cannot fill "
                       f"{cfg.max_icl_examples} ICL examples plus the target")
    bos = ctx.store.meta.get("bos_token_id", model.tokenizer.bos_token_id)
    builder = PromptBuilder(model.tokenizer, cfg.prompt_template, bos)
    root = cache_root(ctx)
    name = str(ctx.store.meta.get("model", ""))
    train = make_split(model, ctx.hook, builder, train_words, cfg, cfg.seed, root, name)
    test = make_split(model, ctx.hook, builder, test_words, cfg, cfg.seed + 1, root, name)
    return score(ctx.sae, train, test, cfg)
