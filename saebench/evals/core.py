"""The core eval: reconstruction, spliced CE/KL and feature frequencies on the held-out split.

The SAE sees raw activations: a saved SAE has any training-time normalisation folded into
its weights, so x, x̂ and every metric are in the model's own units.

A gradient-aware SAE (g-SAE: it has `encode_with_grad`) is scored in both inference modes:
plain TopK under the usual names, and gradient-aware selection under `grad_aware/` names
(reconstruction and downstream). Its held-out gradients come from the store when it cached them
(`--with-grads`), else from a forward and backward of the model over the same windows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from saebench.evals import core_saebench
from saebench.evals.configs import DEFAULT_CE_TOKENS, CoreConfig
from saebench.evals.context import HELDOUT, EvalContext, EvalResult
from saebench.evals.downstream import GRAD_AWARE, downstream_metrics
from saebench.evals.features import (
    FireCounter,
    count_windows,
    decoder_max_cos,
    encoder_metrics,
    encoder_stats,
    feature_metrics,
    fire_count_table,
)
from saebench.evals.reconstruction import ReconstructionStats
from store.errors import UserError

# The results in SAEBench core's output schema (evals/core.saebench.json; saebench_format.py).
saebench_output = core_saebench.saebench_output


@dataclass(frozen=True)
class Plan:
    """How much of the held-out split the eval reads, decided before anything runs."""

    n_tokens: int
    """Activations streamed through the SAE (BOS excluded)."""
    n_seqs: int
    """Token windows for the downstream passes (0: skipped)."""
    first_pos: int
    """First spliced position: 1 leaves BOS clean, 0 splices it too."""


def plan(ctx: EvalContext, cfg: CoreConfig) -> Plan:
    """Check that the store holds enough held-out tokens for `cfg`; raise a UserError if not."""
    held, where = ctx.n_heldout, ctx.store_path or "the store"
    fix = "lower it, or cache a store with more held-out tokens"
    if held < 2:
        raise UserError(f"{where} holds {held} held-out tokens; the core eval needs at least 2")
    n_tokens = held if cfg.n_tokens is None else cfg.n_tokens
    if n_tokens > held:
        raise UserError(
            f"core n_tokens asks for {n_tokens} held-out tokens but {where} holds {held}; {fix}"
        )
    first_pos = 0 if cfg.splice_bos else 1
    n_seqs = 0
    if cfg.ce_tokens != 0:
        seq_len = int(ctx.store.meta["ctx"])
        per_seq = seq_len - 1 - first_pos  # predictions made at positions first_pos..ctx-2
        available = held // (seq_len - 1)  # n_tokens(heldout) excludes position 0
        wanted = DEFAULT_CE_TOKENS if cfg.ce_tokens is None else cfg.ce_tokens
        n_seqs = math.ceil(wanted / per_seq) if per_seq > 0 else available + 1
        if cfg.ce_tokens is None and per_seq > 0:
            n_seqs = min(n_seqs, available)  # the default adapts; an explicit ask does not
        if n_seqs > available or n_seqs == 0:
            raise UserError(
                f"core ce_tokens asks for {wanted} predicted tokens but {where} holds "
                f"{available} held-out windows of {seq_len} ({available * max(per_seq, 0)} "
                f"predicted tokens); {fix}"
            )
    return Plan(n_tokens=n_tokens, n_seqs=n_seqs, first_pos=first_pos)


def check(ctx: EvalContext, cfg: CoreConfig) -> None:
    """Validate the inputs cheaply, before any eval runs."""
    plan(ctx, cfg)


@torch.inference_mode()
def stream(
    ctx: EvalContext, cfg: CoreConfig, n_tokens: int
) -> tuple[ReconstructionStats, FireCounter]:
    """One pass over the held-out activations: reconstruction sums and fire counts."""
    sae, dtype = ctx.sae, ctx.sae_dtype()
    recon = ReconstructionStats(sae.d_in)
    fires = FireCounter(sae.d_sae, count_windows(n_tokens, cfg.dead_window))
    for x in ctx.store.iter_activations(HELDOUT, cfg.batch_tokens, limit=n_tokens):
        x = x[: n_tokens - recon.n].to(ctx.device, dtype)
        codes = sae.encode(x)
        recon.update(x, sae.decode(codes), codes)
        fires.update(codes)
        if recon.n >= n_tokens:
            break
    return recon, fires


def _computed_grads(ctx: EvalContext, cfg: CoreConfig) -> Iterator[Tensor]:
    """Held-out gradients in the store's row order (windows in order, position 0 dropped),
    computed with the model: d(summed next-token CE)/d(activation), as `cache --with-grads`."""
    from store.caching import forward

    model = ctx.model()
    device = next(model.parameters()).device
    tokens = ctx.store.token_windows(HELDOUT)
    batch_seqs = max(1, cfg.ce_batch_tokens // tokens.shape[1])
    for lo in range(0, tokens.shape[0], batch_seqs):
        _, grad = forward(model, ctx.hook, tokens[lo : lo + batch_seqs].to(device), True)
        yield grad[:, 1:].reshape(-1, grad.shape[-1])


def heldout_grads(ctx: EvalContext, cfg: CoreConfig, n_tokens: int) -> tuple[Iterator, str]:
    """Batches of held-out gradients aligned with `iter_activations`, and where they came from."""
    if getattr(ctx.store, "has_grads", False):
        grads = ctx.store.iter_activations(HELDOUT, cfg.batch_tokens, limit=n_tokens, grads=True)
        return grads, "the store's cached held-out gradients (bfloat16)"
    return _computed_grads(ctx, cfg), "computed with the model (the store has none cached)"


def _rows(batches: Iterator[Tensor], n: int, buffer: list[Tensor]) -> Tensor:
    """The next n rows of a stream of row batches (`buffer` holds what was read ahead)."""
    have = sum(len(b) for b in buffer)
    while have < n:
        buffer.append(next(batches))
        have += len(buffer[-1])
    rows = torch.cat(buffer)
    buffer[:] = [rows[n:]]
    return rows[:n]


def stream_grad_aware(
    ctx: EvalContext, cfg: CoreConfig, n_tokens: int
) -> tuple[ReconstructionStats, str]:
    """The reconstruction sums of gradient-aware mode, over the same tokens as `stream`."""
    sae, dtype = ctx.sae, ctx.sae_dtype()
    recon = ReconstructionStats(sae.d_in)
    grads, source = heldout_grads(ctx, cfg, n_tokens)
    buffer: list[Tensor] = []
    for x in ctx.store.iter_activations(HELDOUT, cfg.batch_tokens, limit=n_tokens):
        x = x[: n_tokens - recon.n].to(ctx.device, dtype)
        grad = _rows(grads, x.shape[0], buffer).to(ctx.device, dtype)
        with torch.inference_mode():
            codes = sae.encode_with_grad(x, grad)
            recon.update(x, sae.decode(codes), codes)
        if recon.n >= n_tokens:
            break
    return recon, source


def _grad_aware_recon(recon: ReconstructionStats) -> dict[str, float]:
    # n_tokens and total_variance are the plain mode's: the same tokens.
    same = ("n_tokens", "total_variance")
    return {f"{GRAD_AWARE}/{k}": v for k, v in recon.compute().items() if k not in same}


def ablation_mean(
    ctx: EvalContext, recon: ReconstructionStats
) -> tuple[Float[Tensor, " d_in"], str]:
    """The mean activation for mean-ablation: the store's train-split mean if it has one
    (independent of the eval tokens), else the held-out mean just measured."""
    norm = ctx.store.meta.get("norm") or {}
    if norm.get("mean") is not None:
        return torch.tensor(norm["mean"], dtype=torch.float32), "the store's train-split mean"
    assert recon.shift is not None
    mean = recon.shift.cpu() + recon.sum_dev / recon.n
    return mean.float(), "the mean of the held-out tokens evaluated"


def run(ctx: EvalContext, cfg: CoreConfig) -> EvalResult:
    """Run the core eval on `ctx`'s held-out split."""
    p = plan(ctx, cfg)
    recon, fires = stream(ctx, cfg, p.n_tokens)
    max_cos = decoder_max_cos(ctx.sae.W_dec)
    enc = encoder_stats(ctx.sae)
    metrics = recon.compute() | feature_metrics(fires, cfg.dead_window, max_cos)
    metrics |= encoder_metrics(enc)
    notes = {
        "tokens": f"{recon.n} held-out tokens from {ctx.store_path or 'the store'}, BOS excluded",
        "dead": f"no nonzero code within the first {int(metrics['dead_window_tokens'])} tokens",
        "dense": "fires on more than 1% (10%) of all eval tokens",
        "mse": "E||x - x_hat||^2: summed over d_in, averaged over tokens",
    }
    if enc is None:
        notes["encoder"] = "no encoder (e.g. matching pursuit): encoder statistics skipped"
    grad_aware = hasattr(ctx.sae, "encode_with_grad")
    if grad_aware:
        recon_g, grad_source = stream_grad_aware(ctx, cfg, p.n_tokens)
        grad_metrics = _grad_aware_recon(recon_g)
        notes[GRAD_AWARE] = (
            "g-SAE scored twice: plain TopK selection (unprefixed names) and gradient-aware "
            f"selection ({GRAD_AWARE}/ names); held-out gradients {grad_source}; in spliced runs "
            "the gradient is the clean run's"
        )
    if p.n_seqs:
        from store.hooks import validate_hook

        model = ctx.model()
        validate_hook(model, ctx.hook)
        mean, source = ablation_mean(ctx, recon)
        tokens = ctx.store.token_windows(HELDOUT)[: p.n_seqs]
        seq_len = tokens.shape[1]
        batch_seqs = max(1, cfg.ce_batch_tokens // seq_len)
        metrics |= downstream_metrics(
            model, ctx.sae, ctx.hook, tokens, mean, p.first_pos, batch_seqs, grad_aware
        )
        notes["bos"] = (
            "position 0 (BOS) spliced too, as SAELens does"
            if p.first_pos == 0
            else "position 0 (BOS) left clean in every run; CE over predictions at positions "
            "1..ctx-2, KL over positions 1..ctx-1"
        )
        notes["mean_ablation"] = f"the activation set to {source}"
        notes["kl"] = "KL(clean || run), summed over the vocabulary, mean over positions"
    if grad_aware:
        metrics |= grad_metrics
    return EvalResult(
        metrics=metrics,
        notes=notes,
        tables={"fire_counts": fire_count_table(fires, max_cos, enc)},
    )
