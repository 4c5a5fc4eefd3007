"""The principled IOI eval: an SAE against supervised feature dictionaries on three axes.

Makelov, Lange & Nanda 2024, "Towards Principled Evaluations of Sparse Autoencoders for
Interpretability and Control" (arXiv 2405.08366). At the residual stream of the SAE's hook, at
one site per prompt (END, the last prompt token, as in the paper; or, our extension, the IO or
S2 name), on held-out IOI prompts:
- approximation (their §4.1): the logit difference IO − S at END with the site replaced by the
  SAE's reconstruction (no error term), by the supervised reconstruction, and by a
  reconstruction from the task-relevant latents only (the top-F1 latents of each attribute
  value; the others at their mean code), each as a fraction of the clean logit difference. The
  fraction with the site mean-ablated is the floor: what the site contributes at this hook;
- sparse control (§4.2): swap the IO name for a third name by changing n SAE latents
  (ioi_control.py) vs the supervised edit (− u_old + u_new) and vs patching the whole
  counterfactual activation at the site (the ceiling of any edit there). The metric is
  m = logit[new IO] − logit[old IO]; edit score = (m_edit − m_clean) / (m_cf − m_clean) with
  the means over prompts; success = the new IO's logit beats both names of the prompt;
- interpretability (§4.3): precision, recall and F1 of each attribute value's best latent,
  on the fitting prompts (ioi_dictionary.py).
The supervised dictionary, the F1s and the mean codes come from `n_fit` prompts; every run
uses `n_test` others (ours; the split and the sizes are not the paper's).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from saebench.evals.context import EvalContext, EvalResult
from saebench.evals.ioi_control import edit_score, sparse_edits
from saebench.evals.ioi_dictionary import fit_dictionary, indicators, latent_f1
from saebench.evals.ioi_principled_config import IOIPrincipledConfig
from saebench.evals.ioi_prompts import (
    ATTRIBUTES,
    SITES,
    IOIPrompts,
    make_prompts,
    site_positions,
)
from saebench.evals.ioi_runs import at_site, end_logits, residual, run_all, start_layer
from store.errors import UserError

OLD, S, NEW = 0, 1, 2  # columns of IOIPrompts.token_triples
Runner = Callable[[dict[str, Tensor | None]], dict[str, Tensor]]


@torch.no_grad()
def encode(sae, x: Float[Tensor, "n d_in"]) -> Float[Tensor, "n d_sae"]:
    """The SAE's codes on its own device and dtype, returned as float32 on the CPU."""
    w = sae.W_dec
    return sae.encode(x.to(w.device, w.dtype)).float().cpu()


@torch.no_grad()
def decode(sae, codes: Float[Tensor, "n d_sae"]) -> Float[Tensor, "n d_in"]:
    w = sae.W_dec
    return sae.decode(codes.to(w.device, w.dtype)).float().cpu()


def fvu(x: Float[Tensor, "n d"], x_hat: Float[Tensor, "n d"]) -> float:
    """1 − explained variance over the set (DESIGN.md §5), at the site."""
    return float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def evaluate(
    sae, fit: IOIPrompts, x_fit: Tensor, test: IOIPrompts, x: Tensor, x_cf: Tensor,
    runner: Runner, cf_logits: Tensor, cfg: IOIPrincipledConfig,
) -> EvalResult:
    """Every metric from the site's activations and a function that reruns the model from
    the hook with the site replaced."""
    dictionary = fit_dictionary(x_fit, fit.labels, fit.n_values)
    codes_fit, codes, codes_cf = encode(sae, x_fit), encode(sae, x), encode(sae, x_cf)
    scores, seen = {}, {}
    for a in ATTRIBUTES:
        y = indicators(fit.labels[a], fit.n_values[a])
        scores[a], seen[a] = latent_f1(codes_fit, y, cfg.n_kept_per_value), y.any(0)
    kept = torch.unique(torch.cat([scores[a].top[seen[a]].flatten() for a in ATTRIBUTES]))
    kept_codes = codes_fit.mean(0).expand_as(codes).clone()
    kept_codes[:, kept] = codes[:, kept]  # task-relevant latents as they are, others mean
    edited, used = sparse_edits(x, x_cf, codes, codes_cf, sae.W_dec.detach().cpu(), cfg.budgets)
    budgets = sorted(cfg.budgets)
    x_sae = decode(sae, codes)
    news: dict[str, Tensor | None] = {
        "clean": None, "sae": x_sae, "supervised": dictionary.reconstruct(test.labels),
        "interpretable": decode(sae, kept_codes), "mean_ablated": dictionary.mean.expand_as(x),
        "patch_cf": x_cf, "edit_supervised": dictionary.edit(x, "io", test.labels["io"],
                                                              test.cf_io),
    } | {f"edit_sae_{b}": edited[i] for i, b in enumerate(budgets)}
    logits = runner(news)
    metrics = _task_metrics(logits["clean"], cf_logits)
    ld_clean = metrics["clean_logit_diff"]
    if not ld_clean > 0:  # the model does not do the task: no fraction of it means anything
        return EvalResult(metrics={"skipped": 1.0, **metrics}, notes={
            "skipped": f"the model's mean clean IOI logit difference is {ld_clean:.3g} <= 0"})
    for name in ("sae", "supervised", "interpretable", "mean_ablated"):
        metrics[f"approx_{name}_frac"] = float(_ld(logits[name]).mean()) / ld_clean
    metrics |= {"approx_n_kept_latents": float(len(kept)), "site_fvu_sae": fvu(x, x_sae),
                "site_fvu_supervised": fvu(x, news["supervised"]),
                "site_l0": float((codes > 0).float().sum(1).mean())}
    m_clean, m_cf = _m(logits["clean"]), _m(cf_logits)
    control = {"patch_cf": "patch_cf", "supervised": "edit_supervised"}
    control |= {f"sae_{b}": f"edit_sae_{b}" for b in budgets}
    for label, key in control.items():
        metrics[f"control_{label}_score"] = edit_score(_m(logits[key]), m_clean, m_cf)
        metrics[f"control_{label}_success"] = float(_success(logits[key]).float().mean())
    for i, b in enumerate(budgets):
        metrics[f"control_sae_{b}_latents"] = float(used[i].float().mean())
    for a in ATTRIBUTES:
        for field in ("precision", "recall", "f1"):
            metrics[f"interp_{a}_{field}"] = float(getattr(scores[a], field)[seen[a]].mean())
    metrics["interp_mean_f1"] = float(np.mean([metrics[f"interp_{a}_f1"] for a in ATTRIBUTES]))
    tables = {"ioi_attribute_values": _value_table(fit, scores, dictionary),
              "ioi_control": _control_table(metrics, budgets)}
    return EvalResult(metrics=metrics, notes=_notes(cfg, metrics), tables=tables)


def _ld(logits: Tensor) -> Tensor:
    return logits[:, OLD] - logits[:, S]


def _m(logits: Tensor) -> Tensor:
    return logits[:, NEW] - logits[:, OLD]


def _success(logits: Tensor) -> Tensor:
    return logits[:, NEW] > logits[:, [OLD, S]].max(1).values


def _task_metrics(clean: Tensor, cf: Tensor) -> dict[str, float]:
    return {"clean_logit_diff": float(_ld(clean).mean()),
            "clean_accuracy": float((_ld(clean) > 0).float().mean()),
            "cf_logit_diff": float((cf[:, NEW] - cf[:, S]).mean()),
            "cf_success": float(_success(cf).float().mean())}


def _value_table(fit: IOIPrompts, scores: dict, dictionary) -> dict[str, np.ndarray]:
    cols: dict[str, list] = {k: [] for k in ("attribute", "value", "n_prompts", "latent",
                                             "precision", "recall", "f1", "u_norm")}
    for a in ATTRIBUTES:
        counts = torch.bincount(fit.labels[a], minlength=fit.n_values[a])
        for v, value in enumerate(fit.value_names(a)):
            s = scores[a]
            row = (a, value, int(counts[v]), int(s.latent[v]), float(s.precision[v]),
                   float(s.recall[v]), float(s.f1[v]), float(dictionary.vectors[a][v].norm()))
            for key, item in zip(cols, row, strict=True):
                cols[key].append(item)
    return {k: np.array(v) for k, v in cols.items()}


def _control_table(metrics: dict[str, float], budgets: list[int]) -> dict[str, np.ndarray]:
    rows = [("patch_cf", -1), ("supervised", -1)] + [(f"sae_{b}", b) for b in budgets]
    return {
        "method": np.array([r[0].split("_")[0] if r[1] > 0 else r[0] for r in rows]),
        "budget": np.array([r[1] for r in rows]),
        "edit_score": np.array([metrics[f"control_{r[0]}_score"] for r in rows]),
        "success": np.array([metrics[f"control_{r[0]}_success"] for r in rows]),
        "latents_changed": np.array([metrics.get(f"control_{r[0]}_latents", np.nan)
                                     for r in rows]),
    }


def _notes(cfg: IOIPrincipledConfig, metrics: dict[str, float]) -> dict[str, str]:
    notes = {
        "protocol": "Makelov, Lange & Nanda 2024 (arXiv 2405.08366): supervised IOI "
                    f"dictionaries (IO, S, Pos) at the {cfg.site} position of the SAE's hook; "
                    "approximation, sparse control of IO, interpretability",
        "data": f"{cfg.n_fit} fitting and {cfg.n_test} test prompts over {cfg.n_names} names; "
                "fractions are of the clean logit difference IO − S on the test prompts",
    }
    if metrics["approx_mean_ablated_frac"] > 0.8:
        notes["warning"] = (f"mean-ablating the {cfg.site} position at this hook keeps "
                            f"{metrics['approx_mean_ablated_frac']:.2f} of the logit difference:"
                            " it carries little of the task here, so approximation fractions "
                            "near 1 mean little (try another --ioi-principled.site)")
    if metrics["control_patch_cf_score"] < 0.5:
        notes["control_warning"] = (
            "patching the whole counterfactual activation at this site moves only "
            f"{metrics['control_patch_cf_score']:.2f} of the way to the counterfactual output:"
            " no edit here can do better, so control scores are bounded by it")
    return notes


def check(ctx: EvalContext, cfg: IOIPrincipledConfig) -> None:
    """Validate the config and the hook cheaply, before any eval runs."""
    if cfg.site not in SITES:
        raise UserError(f"ioi_principled site must be one of {', '.join(SITES)}, got "
                        f"{cfg.site!r}")
    if cfg.n_fit < 2 or cfg.n_test < 1 or cfg.batch_prompts < 1:
        raise UserError("ioi_principled needs n_fit >= 2, n_test >= 1 and batch_prompts >= 1")
    if cfg.n_names < 3:
        raise UserError(f"ioi_principled n_names must be >= 3 (IO, S, a new IO), got "
                        f"{cfg.n_names}")
    if not cfg.budgets or min(cfg.budgets) < 1 or cfg.n_kept_per_value < 1:
        raise UserError("ioi_principled budgets must be non-empty and >= 1, "
                        "n_kept_per_value >= 1")
    start_layer(ctx.hook, 10**6)  # the hook's form; its depth is checked against the model


def run(ctx: EvalContext, cfg: IOIPrincipledConfig) -> EvalResult:
    """Build the prompts, read the site at the hook, and score the SAE against the dictionary."""
    model = ctx.model()
    start = start_layer(ctx.hook, model.cfg.n_layers)
    tok, bs = model.tokenizer, cfg.batch_prompts
    fit = make_prompts(tok, cfg.n_fit, cfg.n_names, cfg.seed)
    test = make_prompts(tok, cfg.n_test, cfg.n_names, cfg.seed + 1)
    x_fit = at_site(residual(model, fit.batch.clean, start, bs), site_positions(fit, cfg.site))
    resid = residual(model, test.batch.clean, start, bs)
    resid_cf = residual(model, test.batch.corrupt, start, bs)
    pos, site, ids = test.batch.pos, site_positions(test, cfg.site), test.token_triples()
    cf_logits = end_logits(model, resid_cf, start, pos, site, None, ids, bs)

    def runner(news: dict[str, Tensor | None]) -> dict[str, Tensor]:
        return run_all(model, resid, start, pos, site, news, ids, bs)

    return evaluate(ctx.sae, fit, x_fit, test, at_site(resid, site), at_site(resid_cf, site),
                    runner, cf_logits, cfg)


def saebench_output(result: EvalResult, cfg: IOIPrincipledConfig) -> tuple[str, dict, list]:
    """SAEBench-schema mapping: metrics grouped by axis, one detail record per value."""
    groups = {"task": ("clean_", "cf_"), "approximation": ("approx_", "site_"),
              "control": ("control_",), "interpretability": ("interp_",)}
    metrics = {g: {k: v for k, v in result.metrics.items() if k.startswith(p)}
               for g, p in groups.items()}
    table = result.tables.get("ioi_attribute_values", {})
    n = len(next(iter(table.values()))) if table else 0
    details = [{k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in table.items()}
               for i in range(n)]
    return "ioi_principled", metrics, details
