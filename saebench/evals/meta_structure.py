"""Meta-structure: how much of an SAE's decoder a small BatchTopK meta-SAE explains.

After Bussmann et al. 2025 ("Learning Multi-Level Features with Matryoshka SAEs", App. D.1)
and SAEBench's `meta_structure` eval: train a BatchTopK SAE (width d_sae/4, k = 4) on the
decoder rows W_dec[i] and report the fraction of their variance it reconstructs,
1 - Σ‖w_i - ŵ_i‖² / Σ‖w_i - mean(w)‖². High values mean latents are sparse combinations of
shared meta-latents (compositional structure); random directions score low.

The meta-SAE is our own BatchTopK (trainers.batchtopk, Bussmann et al. 2024), trained by a
plain Adam loop here rather than trainers.loop: its data is one small matrix already in
memory, and it needs no checkpoints, curves or output folder. Weights only: the store is
accepted, as by every eval, and not read.
"""

from __future__ import annotations

import math
import time

import torch
from jaxtyping import Float
from torch import Tensor

from saebench.evals.context import EvalContext, EvalResult
from saebench.evals.meta_config import MetaStructureConfig
from store.errors import UserError
from trainers.batchtopk import BatchTopKConfig, BatchTopKSAE
from trainers.loop import geometric_median

EVAL_TYPE_ID = "meta_structure_decoder_variance"  # SAEBench's meta_structure/eval_output.py
ADAM_EPS = 6.25e-10  # as trainers.config.TrainConfig: the FVU loss has tiny gradients


def meta_width(d_sae: int, cfg: MetaStructureConfig) -> int:
    """Meta-latents: d_sae · width_ratio rounded up (SAEBench's rule), but more than k, which
    our TopK family requires (SAEBench allows exactly k)."""
    return max(math.ceil(d_sae * cfg.width_ratio), cfg.k + 1)


def check(ctx: EvalContext, cfg: MetaStructureConfig) -> None:
    """The SAE needs at least two decoder rows to have a variance to explain."""
    if int(ctx.sae.W_dec.shape[0]) < 2:
        raise UserError("meta_structure needs an SAE with at least 2 latents")


def train_meta_sae(
    rows: Float[Tensor, "n d_in"], cfg: MetaStructureConfig, device: str = "cpu"
) -> tuple[BatchTopKSAE, float]:
    """A BatchTopK meta-SAE fitted to `rows` (already scaled); returns it and its train time."""
    n, d_in = rows.shape
    gen = torch.Generator().manual_seed(cfg.seed)
    sae = BatchTopKSAE(d_in, BatchTopKConfig(d_sae=meta_width(n, cfg), k=cfg.k), generator=gen)
    sae = sae.to(device)
    with torch.no_grad():  # b_dec at the geometric median, as trainers.loop does
        sae.b_dec.copy_(geometric_median(rows))
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, eps=ADAM_EPS)
    t0 = time.perf_counter()
    for _ in range(cfg.steps):
        idx = torch.randint(n, (cfg.batch_size,), generator=gen).to(rows.device)
        out = sae.loss(rows[idx])  # no dead mask: AuxK off, as in SAEBench's short run
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        opt.step()
        sae.after_step()
    return sae, time.perf_counter() - t0


@torch.no_grad()
def decoder_variance(
    sae: BatchTopKSAE, rows: Float[Tensor, "n d_in"], eval_batch_size: int
) -> tuple[float, float]:
    """(fraction of variance explained, summed squared residual) of `rows` under `sae`, with
    the training-time batch-level selection over chunks of `eval_batch_size` rows (as SAEBench
    scores its meta-SAE), so an average of exactly k meta-latents per row."""
    sae.eval()
    mean = rows.mean(0)
    residual = total = 0.0
    for lo in range(0, rows.shape[0], eval_batch_size):
        x = rows[lo : lo + eval_batch_size]
        codes = sae.loss(x).codes
        x_hat = torch.sparse.mm(codes, sae.W_dec) + sae.b_dec
        residual += float((x - x_hat).double().pow(2).sum())
        total += float((x - mean).double().pow(2).sum())
    return (1.0 - residual / total if total > 0 else math.nan), residual


def run(ctx: EvalContext, cfg: MetaStructureConfig) -> EvalResult:
    """Fit the meta-SAE to the decoder rows and score it on all of them."""
    rows = ctx.sae.W_dec.detach().float().to(ctx.device)
    # Scale so the mean row norm is √d_in, as trainers.loop scales activations; the variance
    # fraction is scale-free, and the MSE is reported back in the decoder's own units.
    scale = math.sqrt(rows.shape[1]) / float(rows.norm(dim=1).mean().clamp_min(1e-12))
    meta, seconds = train_meta_sae(rows * scale, cfg, ctx.device)
    fve, residual = decoder_variance(meta, rows * scale, cfg.eval_batch_size)
    metrics = {
        "decoder_fraction_variance_explained": fve,
        "final_reconstruction_mse": residual / scale**2 / rows.numel(),
        "train_time_seconds": seconds,
        "meta_d_sae": float(meta.d_sae),
        "meta_k": float(cfg.k),
        "n_decoder_rows": float(rows.shape[0]),
    }
    notes = {
        "meta_sae": f"BatchTopK, {meta.d_sae} meta-latents, k={cfg.k}, {cfg.steps} steps of "
                    f"{cfg.batch_size} rows sampled with replacement, Adam lr {cfg.lr}",
        "score": "batch-level top-k over chunks of decoder rows, as in training (SAEBench)",
        "mse": "mean over all decoder entries of the squared residual (SAEBench's definition)",
        "store": "weights only: the store is not read",
    }
    return EvalResult(metrics=metrics, notes=notes)


def saebench_output(result: EvalResult, cfg: MetaStructureConfig) -> tuple[str, dict, list]:
    """SAEBench's meta_structure schema: one group, three metrics, no details."""
    names = ("decoder_fraction_variance_explained", "train_time_seconds",
             "final_reconstruction_mse")
    return EVAL_TYPE_ID, {"meta_structure": {n: result.metrics[n] for n in names}}, []
