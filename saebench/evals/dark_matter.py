"""Dark matter: how much of an SAE's error is a linear function of x, and how much is not.

After Engels, Riggs & Tegmark 2024, "Decomposing the Dark Matter of Sparse Autoencoders"
(arXiv 2410.14670). With e = x − x̂ the SAE error:
- a linear map of x predicts part of e (its "linearly predictable" error); what it cannot
  predict is the "nonlinear" error. Here the map is affine, fitted by ridge regression on
  train-split tokens and scored on held-out ones (dark_matter_fit.py);
- a linear map of x also predicts the per-token error norm ‖e‖ (held-out R² reported).

Shares (all on held-out tokens, in the model's own units):
- `error_linear_share` = 1 − E‖e − ê(x)‖² / E‖e‖², `error_nonlinear_share` its complement;
  uncentred on purpose, so that the two add to 1 and, scaled by the FVU, split x's variance:
  `x_share/sae` (= explained variance) + `x_share/linear_error` + `x_share/nonlinear_error`
  = 1. The centred R² (1 − E‖e − ê‖² / E‖e − E e‖²) is `error_linear_r2`.
- Inference-time optimisation on the fixed decoder (pursuit.py), on a smaller sample: how much
  of the error, and of its linear and nonlinear parts, `refit` and `gp` remove. Their errors
  are fitted exactly like the SAE's (same train tokens, same held-out tokens), so
  `<pursuit>/nonlinear_removed` compares like with like. For `gp` each token keeps whichever
  of the pursuit's and the SAE's codes reconstructs it better (ours: the encoder's answer is a
  candidate, so optimising never hurts); `gp/chosen_frac` says how often pursuit won.

The paper's text was not at hand while writing this, so its section numbers are not cited and
these choices are ours: the intercept, the small ridge, fitting on the train split and scoring
on held-out tokens (fixed random rows of each split), the uncentred shares, and the token
counts (DarkMatterConfig).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from saebench.evals import pursuit
from saebench.evals.context import HELDOUT, EvalContext, EvalResult
from saebench.evals.dark_matter_config import DEFAULT_FIT_TOKENS, DarkMatterConfig
from saebench.evals.dark_matter_fit import HeldOutScore, MomentSums
from saebench.evals.reconstruction import ReconstructionStats
from store.errors import UserError

TRAIN = "train"
SAE = "sae"


@dataclass(frozen=True)
class Plan:
    """Token counts, decided (and checked) before anything runs."""

    n_fit: int
    n_eval: int
    n_pursuit_fit: int
    n_pursuit_eval: int


def plan(ctx: EvalContext, cfg: DarkMatterConfig) -> Plan:
    """The token counts, or a UserError if the store holds too few."""
    where = ctx.store_path or "the store"
    counts = {}
    for split, asked, what, default in (
        (TRAIN, cfg.fit_tokens, "fit_tokens", DEFAULT_FIT_TOKENS),
        (HELDOUT, cfg.n_tokens, "n_tokens", None),
    ):
        held = int(ctx.store.n_tokens(split))
        if held < 2:
            raise UserError(f"{where} holds {held} {split} tokens; dark_matter needs at least "
                            "2 train and 2 held-out tokens")
        if asked is not None and asked > held:
            raise UserError(f"dark_matter {what} asks for {asked} {split} tokens but {where} "
                            f"holds {held}; lower it")
        counts[split] = asked if asked is not None else min(default or held, held)
    n_fit, n_eval = counts[TRAIN], counts[HELDOUT]
    return Plan(n_fit, n_eval, min(cfg.pursuit_fit_tokens, n_fit),
                min(cfg.pursuit_tokens, n_eval))


def check(ctx: EvalContext, cfg: DarkMatterConfig) -> None:
    plan(ctx, cfg)


def _spread(ctx: EvalContext, split: str, n: int, read: int = 8192) -> Iterator[torch.Tensor]:
    """n rows drawn without replacement from the whole split (seeded, so fixed), in order.
    Not the first n: those are a few contiguous documents, and a map fitted on them
    generalises poorly. Not a regular stride: it aliases with the window length, and the
    first position after BOS carries ~3.5x the mean error and norm (a stride of 127/64 took it
    from every window and lowered the FVU from 0.151 to 0.100 on topk-k32-s0)."""
    total = int(ctx.store.n_tokens(split))
    pick = torch.randperm(total, generator=torch.Generator().manual_seed(0))[:n]
    want, pos = pick.sort().values, 0
    for x in ctx.store.iter_activations(split, read):
        lo, hi = torch.searchsorted(want, torch.tensor([pos, pos + x.shape[0]])).tolist()
        if hi > lo:
            yield x[want[lo:hi] - pos]
        pos += x.shape[0]
        if hi >= n:
            return


def _batches(ctx: EvalContext, split: str, n: int, batch: int, desc: str) -> Iterator:
    """(x, codes, x̂) over n rows spread over a split, in batches, with a progress bar."""
    sae, rows = ctx.sae, _spread(ctx, split, n)
    bar = tqdm(total=n, desc=desc, unit="tok", disable=n <= 4 * batch, leave=False)
    buffer, have, exhausted = [], 0, False
    while True:
        while have < batch and not exhausted:
            part = next(rows, None)
            exhausted = part is None
            if part is not None:
                buffer.append(part)
                have += len(part)
        if have == 0:
            break
        cat = torch.cat(buffer)
        buffer = [cat[batch:]]
        have = len(buffer[0])
        x = cat[:batch].to(ctx.device, ctx.sae_dtype())
        codes = sae.encode(x)
        bar.update(x.shape[0])
        yield x, codes, sae.decode(codes)
    bar.close()


def _every(seen: int, length: int, n: int, n_sub: int) -> torch.Tensor:
    """Positions in a batch of sample rows [seen, seen + length) that belong to an evenly
    spread sub-sample of n_sub of the n rows (every (n // n_sub)-th, first n_sub of them)."""
    step = max(n // max(n_sub, 1), 1)
    s = torch.arange(seen, seen + length)
    return ((s % step == 0) & (s // step < n_sub)).nonzero().squeeze(1)


def _targets(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """[e, ‖e‖]: the error and its norm, regressed on x in one solve."""
    e = (x - x_hat).double()
    return torch.cat([e, e.norm(dim=1, keepdim=True)], dim=1)


def _variants(ctx: EvalContext, cfg: DarkMatterConfig, x, codes, x_hat, nonneg: bool) -> dict:
    """x̂ of the SAE and of each requested inference-time optimisation."""
    sae = ctx.sae
    b_dec = getattr(sae, "b_dec", None)
    b_dec = torch.zeros_like(x[0]) if b_dec is None else b_dec.detach().to(x.dtype)
    W_dec = sae.W_dec.detach().to(x.dtype)
    out = {SAE: x_hat}
    if "refit" in cfg.pursuit:
        out["refit"] = pursuit.refit(x, W_dec, b_dec, codes, cfg.refine_steps, nonneg)
    if "gp" in cfg.pursuit:
        k = (codes != 0).sum(1)
        gp = pursuit.gradient_pursuit(x, W_dec, b_dec, k, cfg.refine_steps, nonneg)
        won = (x - gp).pow(2).sum(1) < (x - x_hat).pow(2).sum(1)
        out["gp"] = torch.where(won[:, None], gp, x_hat)
        out["gp_won"] = won
    return out


def _fit(ctx: EvalContext, cfg: DarkMatterConfig, p: Plan):
    """Pass over train tokens: the main fit, and the pursuit comparison's fits."""
    d_in = ctx.sae.d_in
    main = MomentSums(d_in, d_in + 1)
    per_variant = {v: MomentSums(d_in, d_in) for v in (SAE, *cfg.pursuit)}
    nonneg, seen = None, 0
    for x, codes, x_hat in _batches(ctx, TRAIN, p.n_fit, cfg.batch_tokens, "dark_matter fit"):
        main.update(x, _targets(x, x_hat))
        if nonneg is None:  # pursuit keeps the sign rule of the SAE's codes (first batch)
            nonneg = bool((codes >= 0).all())
        sub = _every(seen, x.shape[0], p.n_fit, p.n_pursuit_fit if cfg.pursuit else 0)
        if len(sub):
            xs = x[sub]
            for v, xh in _variants(ctx, cfg, xs, codes[sub], x_hat[sub], nonneg).items():
                if v in per_variant:
                    per_variant[v].update(xs, xs - xh)
        seen += x.shape[0]
    maps = {v: s.solve(cfg.ridge) for v, s in per_variant.items()} if cfg.pursuit else {}
    return main.solve(cfg.ridge), maps, bool(nonneg)


@torch.inference_mode()
def run(ctx: EvalContext, cfg: DarkMatterConfig) -> EvalResult:
    p = plan(ctx, cfg)
    main_map, maps, nonneg = _fit(ctx, cfg, p)
    d_in = ctx.sae.d_in
    recon, score = ReconstructionStats(d_in), HeldOutScore(d_in + 1)
    v_recon = {v: ReconstructionStats(d_in) for v in maps}
    v_score = {v: HeldOutScore(d_in) for v in maps}
    won = seen = 0
    for x, codes, x_hat in _batches(ctx, HELDOUT, p.n_eval, cfg.batch_tokens, "dark_matter"):
        recon.update(x, x_hat, codes)
        score.update(_targets(x, x_hat), main_map.predict(x))
        sub = _every(seen, x.shape[0], p.n_eval, p.n_pursuit_eval if maps else 0)
        if len(sub):
            xs, cs = x[sub], codes[sub]
            variants = _variants(ctx, cfg, xs, cs, x_hat[sub], nonneg)
            won += int(variants.pop("gp_won", torch.zeros(0)).sum())
            for v, xh in variants.items():
                v_recon[v].update(xs, xh, cs)
                v_score[v].update(xs - xh, maps[v].predict(xs))
        seen += x.shape[0]
    metrics = _main_metrics(recon.compute(), score, d_in, p)
    if maps:
        metrics |= _pursuit_metrics(v_recon, v_score, p)
        if "gp" in maps:
            metrics["gp/chosen_frac"] = won / p.n_pursuit_eval
    notes = {
        "fit": f"affine ridge maps fitted on {p.n_fit} train tokens (ridge {cfg.ridge} x mean "
               f"variance of x), scored on {p.n_eval} held-out tokens",
        "shares": "error_linear_share = 1 - E|e - pred|^2 / E|e|^2; x_share/* split the "
                  "variance of x as explained + linear error + nonlinear error",
        "pursuit": f"{', '.join(cfg.pursuit) or 'none'}: fitted on {p.n_pursuit_fit} train and "
                   f"scored on {p.n_pursuit_eval} held-out tokens; support size = the SAE's L0 "
                   f"per token; nonnegative codes: {nonneg}",
    }
    return EvalResult(metrics=metrics, notes=notes)


def _main_metrics(rec: dict, score: HeldOutScore, d_in: int, p: Plan) -> dict[str, float]:
    err = score.group(slice(0, d_in))
    norm = score.group(slice(d_in, d_in + 1))
    linear = 1 - err["resid"] / err["energy"] if err["energy"] > 0 else float("nan")
    fvu = rec["fvu"]
    return {
        "n_fit_tokens": float(p.n_fit), "n_tokens": float(p.n_eval), "l0": rec["l0"],
        "fvu": fvu, "explained_variance": rec["explained_variance"],
        "error_linear_share": linear, "error_nonlinear_share": 1 - linear,
        "error_linear_r2": 1 - err["resid"] / err["centred"] if err["centred"] > 0
        else float("nan"),
        "error_norm_r2": 1 - norm["resid"] / norm["centred"] if norm["centred"] > 0
        else float("nan"),
        "x_share/sae": 1 - fvu, "x_share/linear_error": fvu * linear,
        "x_share/nonlinear_error": fvu * (1 - linear),
    }


def _pursuit_metrics(v_recon: dict, v_score: dict, p: Plan) -> dict[str, float]:
    """Per variant: FVU, shares, and the fraction of the SAE's error (total, linear,
    nonlinear) it removes, all on the same held-out tokens."""
    parts = {}
    for v, score in v_score.items():
        g = score.group(slice(None))
        parts[v] = (g["energy"], g["energy"] - g["resid"], g["resid"])
    base = parts[SAE]
    out = {"pursuit/n_fit_tokens": float(p.n_pursuit_fit),
           "pursuit/n_tokens": float(p.n_pursuit_eval)}
    for v, (total, linear, nonlinear) in parts.items():
        out[f"{v}/fvu"] = v_recon[v].compute()["fvu"]
        out[f"{v}/error_linear_share"] = linear / total if total > 0 else float("nan")
        if v != SAE:
            for name, new, old in (("error", total, base[0]), ("linear", linear, base[1]),
                                   ("nonlinear", nonlinear, base[2])):
                out[f"{v}/{name}_removed"] = 1 - new / old if old > 0 else float("nan")
    return out
