"""What the SCR and TPP evals share: pooled features from an eval store, probes that read
ablated activations later, SAEBench's latent ranking, and zero-ablation with the error kept.

Both follow SAEBench's `scr_and_tpp` (Karvonen et al. 2024, arXiv 2411.18895, section 3;
SAEBench arXiv 2503.09532). Why no model forward per SAE: the probes read the SAE's own hook.
Zero-ablating latents S with the SAE error term kept turns each token into
x' = decode(f with S zeroed) + (x - decode(f)) = x - sum_{i in S} f_i(x) W_dec[i]
(the decoder is linear, so b_dec cancels). Mean-pooling is linear too, so a text's pooled probe
input becomes mean(x) - mean(f)[S] @ W_dec[S]: the eval store's pooled vector minus the pooled
codes' share. One encode pass per eval store gives every ablation.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jaxtyping import Float

from saebench.evals.context import EvalContext
from saebench.evals.probing import fit_probe
from saebench.evals.sparse_probing import sae_mean_codes
from store import eval_store, probe_datasets
from store.errors import UserError
from store.probe_datasets import ProbeSet


def store_dir(ctx: EvalContext, cfg, eval_name: str) -> Path:
    """cfg.store_dir, else <workspace>/eval_stores beside the activation store."""
    if cfg.store_dir is not None:
        return Path(cfg.store_dir)
    if not ctx.store_path or "://" in ctx.store_path:
        raise UserError(f"{eval_name}: pass --{eval_name}.store-dir (no local workspace)")
    return Path(ctx.store_path).parent / "eval_stores"


wheel_note = probe_datasets.wheel_note  # shared with sparse_probing (store/probe_datasets.py)


def build_eval_store(ctx: EvalContext, cfg, eval_name: str, data: ProbeSet) -> Path:
    """The set's eval store at the SAE's hook, built (one model pass) unless it exists."""
    model_name = str(ctx.store.meta["model"])
    content = eval_store.fingerprint(data.texts, data.labels, data.splits)
    path = eval_store.store_path(store_dir(ctx, cfg, eval_name), data.name, model_name, ctx.hook,
                                 content)

    def load_model():
        print(f"{eval_name}: building {path} ({len(data.texts)} texts)", file=sys.stderr)
        return ctx.model()

    eval_store.build(path, data.texts, data.labels, data.splits, load_model, model_name,
                     ctx.hook, cfg.max_tokens, cfg.batch_texts)
    return path


@dataclass
class Pooled:
    """One labelled set, mean-pooled per text: residual vectors, SAE codes and the decoder."""

    resid: np.ndarray
    """[texts, d_in] float32."""
    codes: np.ndarray
    """[texts, d_sae] float32."""
    W_dec: np.ndarray
    """[d_sae, d_in] float32: row i is latent i's direction."""
    labels: np.ndarray
    splits: np.ndarray


def pooled(ctx: EvalContext, path: Path, batch_texts: int) -> Pooled:
    """Read an eval store and encode its tokens with the SAE (the one pass per SAE)."""
    reader = eval_store.EvalStoreReader(path)
    try:
        if reader.d_in != ctx.sae.d_in:
            raise UserError(f"{reader.path} holds d_in {reader.d_in}, the SAE {ctx.sae.d_in}")
        table = reader.labels()
        codes = sae_mean_codes(ctx, reader, batch_texts)
        resid = reader.mean_acts()
    finally:
        reader.close()
    W_dec = ctx.sae.W_dec.detach().float().cpu().numpy()
    return Pooled(resid, codes, W_dec, table["label"].astype(str), table["split"].astype(str))


def probe(x: np.ndarray, y: np.ndarray, seed: int):
    """A probe on full-width pooled residual vectors, standardised so lbfgs converges."""
    return fit_probe(np.asarray(x, np.float32), y, standardise=True, seed=seed)


def accuracy(p, x: np.ndarray, y: np.ndarray) -> float:
    return float((p.predict(x) == y).mean())


def probe_direction(p) -> Float[np.ndarray, " d_in"]:
    """The probe's weight vector in raw activation units (SAEBench reads `probe.net.weight`):
    logistic regression on standardised x has logit w . (x - mu) / sigma, so w / sigma."""
    scaler, lr = p[0], p[-1]
    return (lr.coef_[0] / scaler.scale_).astype(np.float32)


def latent_effects(
    codes: Float[np.ndarray, "n d_sae"], y: np.ndarray, direction: Float[np.ndarray, " d_in"],
    W_dec: Float[np.ndarray, "d_sae d_in"], scr: bool,
) -> Float[np.ndarray, " d_sae"]:
    """SAEBench's indirect effect of each latent on a probe: (mean code on y=1 - on y=0) times
    the probe's reading of the latent's decoder row. SCR takes |.|, as either sign of the
    spurious signal is what the probe uses; TPP keeps latents that rise on the class only."""
    diff = codes[y == 1].mean(0) - codes[y == 0].mean(0)
    if not scr:
        diff = np.maximum(diff, 0.0)
    effects = diff * (W_dec @ direction)
    return np.abs(effects) if scr else effects


def top_latents(effects: np.ndarray, n: int) -> np.ndarray:
    """The n latents of largest effect, among those with a nonzero one (SAEBench ablates fewer
    than n when fewer have any effect: a latent that never fires is not a removal)."""
    k = min(n, int(np.count_nonzero(effects)))
    return np.argsort(-effects, kind="stable")[:k]


def ablate(
    resid: Float[np.ndarray, "n d_in"], codes: Float[np.ndarray, "n d_sae"],
    W_dec: Float[np.ndarray, "d_sae d_in"], latents: np.ndarray,
) -> Float[np.ndarray, "n d_in"]:
    """Pooled probe input with `latents` zero-ablated and the SAE error kept (module docstring)."""
    if len(latents) == 0:
        return resid
    return resid - codes[:, latents] @ W_dec[latents]
