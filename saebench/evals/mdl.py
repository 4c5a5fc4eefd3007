"""MDL: how many bits per token describe the SAE's codes, once quantised coarsely enough.

After Ayonrinde, Pearce & Sharkey 2024 ("Interpretability as Compression: Reconsidering SAE
Explanations of Neural Activations with MDL-SAEs") and SAEBench's `mdl` eval
(sae_bench/evals/mdl/main.py). Each latent's nonzero values are binned into `num_bins` equal
bins spanning [min(0, lowest), max(0, highest)] of its values on the eval tokens. A token's
code is then sent as, per latent, a fire/no-fire bit and, when it fires, its bin:

    DL = Σ_latents [ H_b(p_i) + p_i · H(bin_i | fires) ]   bits per token,

with p_i the latent's firing rate and H(bin_i | fires) the entropy of its bin histogram over
the tokens where it fires. Quantised codes (bin midpoints; zeros stay zero) are decoded, and a
setting is viable when sqrt(mean squared error per entry) / d_in stays below the tolerance
(SAEBench's check). The headline is the shortest viable description length.

Where we differ from SAEBench's code, on purpose: its bin histogram counts the zeros too (they
fall in the first bin), its quantiser moves zeros to the first bin's midpoint, and its bins'
upper end starts at 100 rather than at the largest value seen; we follow the paper's coding
(the bit says whether a value is sent at all). SAEBench's optional top-k truncation
(`k_values`) is not implemented. Everything is vectorised over latents (no Python loop over
them), on the SAE's device.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

from saebench.evals.context import HELDOUT, EvalContext, EvalResult
from saebench.evals.mdl_config import DEFAULT_MDL_TOKENS, MDLConfig
from saebench.evals.reconstruction import ReconstructionStats
from store.errors import UserError


def n_tokens(ctx: EvalContext, cfg: MDLConfig) -> int:
    """Tokens the eval reads; a UserError if the store holds too few."""
    held = ctx.n_heldout
    if held < 1:
        raise UserError(f"{ctx.store_path or 'the store'} holds no held-out tokens")
    if cfg.n_tokens is None:
        return min(DEFAULT_MDL_TOKENS, held)
    if cfg.n_tokens > held:
        raise UserError(f"mdl n_tokens asks for {cfg.n_tokens} held-out tokens but "
                        f"{ctx.store_path or 'the store'} holds {held}; lower it")
    return cfg.n_tokens


def check(ctx: EvalContext, cfg: MDLConfig) -> None:
    n_tokens(ctx, cfg)


def _batches(ctx: EvalContext, cfg: MDLConfig, n: int):
    seen = 0
    for x in ctx.store.iter_activations(HELDOUT, cfg.batch_tokens, limit=n):
        x = x[: n - seen].to(ctx.device, ctx.sae_dtype())
        seen += x.shape[0]
        yield x, ctx.sae.encode(x)
        if seen >= n:
            break


def bin_index(
    vals: Float[Tensor, " nnz"], lo: Float[Tensor, " nnz"], width: Float[Tensor, " nnz"],
    num_bins: int,
) -> Tensor:
    """Bin of each nonzero value: equal bins from lo, the top edge in the last bin."""
    return ((vals - lo) / width).floor().long().clamp_(0, num_bins - 1)


def entropy_bits(counts: Float[Tensor, "latents bins"]) -> Float[Tensor, " latents"]:
    """Shannon entropy (bits) of each row's histogram; 0 for an empty row."""
    total = counts.sum(-1, keepdim=True)
    p = counts / total.clamp_min(1)
    return -(p * torch.log2(p.clamp_min(1e-300))).sum(-1)


def binary_entropy_bits(p: Tensor) -> Tensor:
    q = p.clamp(1e-300, 1)
    r = (1 - p).clamp(1e-300, 1)
    return -(p * torch.log2(q) + (1 - p) * torch.log2(r))


@torch.inference_mode()
def run(ctx: EvalContext, cfg: MDLConfig) -> EvalResult:
    """Two passes over the held-out tokens: value ranges, then histograms and quantised MSE."""
    n, d_sae, d_in = n_tokens(ctx, cfg), ctx.sae.d_sae, ctx.sae.d_in
    lo = torch.zeros(d_sae, device=ctx.device)
    hi = torch.zeros(d_sae, device=ctx.device)
    fires = torch.zeros(d_sae, device=ctx.device, dtype=torch.float64)
    recon = ReconstructionStats(d_in)
    for x, codes in _batches(ctx, cfg, n):
        lo = torch.minimum(lo, codes.float().min(0).values)
        hi = torch.maximum(hi, codes.float().max(0).values)
        fires += (codes != 0).sum(0)
        recon.update(x, ctx.sae.decode(codes), codes)
    bins = sorted(set(cfg.num_bins_values))
    widths = {b: ((hi - lo) / b).clamp_min(1e-30) for b in bins}
    counts = {b: torch.zeros(d_sae * b, device=ctx.device, dtype=torch.float64) for b in bins}
    sq_err = dict.fromkeys(bins, 0.0)
    for x, codes in _batches(ctx, cfg, n):
        rows, cols = codes.nonzero(as_tuple=True)
        vals = codes[rows, cols].float()
        for b in bins:
            idx = bin_index(vals, lo[cols], widths[b][cols], b)
            counts[b] += torch.bincount(cols * b + idx, minlength=d_sae * b).double()
            quantised = torch.zeros_like(codes)
            quantised[rows, cols] = (lo[cols] + (idx + 0.5) * widths[b][cols]).to(codes.dtype)
            sq_err[b] += float((x - ctx.sae.decode(quantised)).double().pow(2).sum())
    p = fires / n
    bool_bits = float(binary_entropy_bits(p).sum())
    metrics: dict[str, float] = {"n_tokens": float(n), "bool_bits": bool_bits,
                                 "fvu": recon.compute()["fvu"]}
    best = (math.inf, math.nan)
    for b in bins:
        dl = bool_bits + float((p * entropy_bits(counts[b].view(d_sae, b))).sum())
        # SAEBench's tolerance: sqrt(mean over entries of the squared error) / d_in.
        err = math.sqrt(sq_err[b] / (n * d_in)) / d_in
        ok = err < cfg.mse_epsilon_threshold
        metrics |= {f"description_length_bits/{b}": dl, f"rmse_per_dim/{b}": err,
                    f"fvu_quantised/{b}": sq_err[b] / n / recon.total_variance(),
                    f"within_tolerance/{b}": float(ok)}
        if ok and dl < best[0]:
            best = (dl, float(b))
    metrics["description_length_bits"] = best[0] if math.isfinite(best[0]) else math.nan
    metrics["num_bins"] = best[1]
    notes = {
        "dl": "bits per token: sum over latents of H(fires) + P(fires) * H(bin | fires)",
        "bins": "equal bins per latent over [min(0, lowest), max(0, highest)] nonzero value",
        "tolerance": f"viable when sqrt(MSE per entry) / d_in < {cfg.mse_epsilon_threshold} "
                     "(SAEBench); description_length_bits is NaN if no setting is viable",
    }
    return EvalResult(metrics=metrics, notes=notes)


def saebench_output(result: EvalResult, cfg: MDLConfig) -> tuple[str, dict, list[dict]]:
    """One `mdl` group with the headline, and SAEBench's per-setting records as details."""
    m = result.metrics
    details = [
        {"num_bins": b, "k": None, "description_length": m[f"description_length_bits/{b}"],
         "within_threshold": bool(m[f"within_tolerance/{b}"]),
         "mse_loss": m[f"rmse_per_dim/{b}"]}
        for b in sorted(set(cfg.num_bins_values))
    ]
    headline = {"description_length": m["description_length_bits"], "num_bins": m["num_bins"]}
    return "mdl", {"mdl": headline}, details
