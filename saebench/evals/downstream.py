"""Downstream metrics: splice a replacement into the model at the SAE's hook and compare.

For each batch of held-out windows the model runs four times: clean, with the activation
replaced by the SAE's reconstruction x̂, with it zeroed, and with it set to the dataset mean.
From these (DESIGN.md §5, binding):
- CE loss of each run, averaged over every predicted token;
- CE loss recovered = (CE_ablated - CE_sae) / (CE_ablated - CE_clean), once per baseline;
- ΔCE = CE_sae - CE_clean;
- KL(clean ‖ run), summed over the vocabulary and averaged over positions.

Positions: by default position 0 (BOS) is left clean in every run. The store never holds
position 0 (its activation is a huge outlier that SAEs are not trained on), so splicing it
would measure something the SAE was never asked to do. CE then averages the predictions made
at positions 1..ctx-2 and KL positions 1..ctx-1 (the logits at position 0 are untouched).
`first_pos=0` splices every position, as SAELens's evals do.

Gradient-aware SAEs (g-SAE, Olmo et al. 2024) get a fifth run, `grad_aware`: the SAE selects its
latents with the gradient of the summed next-token CE at the hook, computed on the CLEAN run of
the same batch (one extra forward and backward). The clean gradient is what the SAE was trained
with and what it would see deployed on an unmodified model; a gradient taken inside the spliced
run would depend on the reconstruction being measured.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import weakref
from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from trainers.protocol import SparseCoder

Replace = Callable[[Tensor], Tensor]  # [batch, pos, d_in] -> [batch, pos, d_in]
RUNS = ("sae", "zero_ablation", "mean_ablation")
BASELINES = ("zero_ablation", "mean_ablation")  # runs that do not depend on the SAE
GRAD_AWARE = "grad_aware"  # the gradient-aware run, and the prefix of its metric names
# Inside `shared_baselines()`: clean log-probs and baseline sums per (model, tokens, hook,
# positions, mean), so that evaluating many SAEs with one model in one process (a sweep,
# benchmarks/arch_table.py) runs the clean and ablated passes once. Keyed weakly on the model:
# entries die with it. Kept only while the clean log-probs stay under this many floats (2 GB).
_BASELINE_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SHARING = [False]
MAX_CACHED_FLOATS = 500_000_000


@contextlib.contextmanager
def shared_baselines():
    """Within this block, SAEs evaluated on the same model and tokens share the clean and
    ablated runs (the SAE-independent three of the four passes); the cache empties on exit."""
    _SHARING[0] = True
    try:
        yield
    finally:
        _SHARING[0] = False
        _BASELINE_CACHE.clear()


def replacements(sae: SparseCoder, mean: Float[Tensor, " d_in"]) -> dict[str, Replace]:
    """What each non-clean run writes into the hook, as a function of the clean activation."""

    def reconstruct(x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(sae.W_dec.dtype)
        return sae.decode(sae.encode(flat)).reshape(x.shape).to(x.dtype)

    return {
        "sae": reconstruct,
        "zero_ablation": torch.zeros_like,
        "mean_ablation": lambda x: mean.to(x.device, x.dtype).expand_as(x),
    }


def grad_aware_replacement(sae: SparseCoder, grad: Float[Tensor, "batch pos d_in"]) -> Replace:
    """The g-SAE's gradient-aware reconstruction, given dL/dx at the spliced positions."""

    def reconstruct(x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(sae.W_dec.dtype)
        g = grad.reshape(flat.shape).to(flat)
        return sae.decode(sae.encode_with_grad(flat, g)).reshape(x.shape).to(x.dtype)

    return reconstruct


def splice_hook(replace: Replace, first_pos: int, d_in: int):
    """A TransformerLens hook that overwrites positions >= first_pos with `replace(act)`.

    Hooks on attention heads (`hook_z` etc.: [batch, pos, head, d_head]) are flattened to the
    SAE's d_in = head·d_head and back, as SAELens does for hook_z SAEs.
    """

    def _splice(act: Tensor, hook) -> Tensor:  # TransformerLens passes the HookPoint as `hook`
        x = act[:, first_pos:]
        flat = x.flatten(2) if act.ndim == 4 and act.shape[-1] != d_in else x
        out = act.clone()
        out[:, first_pos:] = replace(flat).reshape(x.shape)
        return out

    return _splice


class DownstreamStats:
    """Running sums of per-token CE (per run) and KL to the clean run."""

    def __init__(self, runs: tuple[str, ...] = RUNS):
        self.n_ce = 0
        self.n_kl = 0
        self.ce = dict.fromkeys(("clean", *runs), 0.0)
        self.kl = dict.fromkeys(runs, 0.0)

    def compute(self) -> dict[str, float]:
        ce = {run: total / self.n_ce for run, total in self.ce.items()}
        out = {"ce_tokens": float(self.n_ce), "kl_tokens": float(self.n_kl)}
        out |= {f"ce_{run}": ce[run] for run in ("clean", *RUNS)}
        out |= self._spliced(ce, "sae", "")
        out |= {f"kl_{run}": self.kl[run] / self.n_kl for run in RUNS}
        if GRAD_AWARE in ce:
            out[f"{GRAD_AWARE}/ce_sae"] = ce[GRAD_AWARE]
            out |= self._spliced(ce, GRAD_AWARE, f"{GRAD_AWARE}/")
            out[f"{GRAD_AWARE}/kl_sae"] = self.kl[GRAD_AWARE] / self.n_kl
        return out

    @staticmethod
    def _spliced(ce: dict[str, float], run: str, prefix: str) -> dict[str, float]:
        """ΔCE and CE recovered (per named baseline) of one SAE run."""
        out = {f"{prefix}delta_ce": ce[run] - ce["clean"]}
        for base in ("zero_ablation", "mean_ablation"):
            gap = ce[base] - ce["clean"]
            out[f"{prefix}ce_recovered_vs_{base}"] = (ce[base] - ce[run]) / gap if gap else math.nan
        return out


def _ce_per_token(
    log_probs: Float[Tensor, "batch pos vocab"], tokens: Int[Tensor, "batch pos"], first_pos: int
) -> Float[Tensor, "batch n"]:
    """-log p(token t+1 | ..t) for the predictions made at positions first_pos..ctx-2."""
    preds = log_probs[:, first_pos:-1]
    return -preds.gather(-1, tokens[:, first_pos + 1 :, None]).squeeze(-1)


def downstream_metrics(
    model,
    sae: SparseCoder,
    hook: str,
    tokens: Int[Tensor, "seq ctx"],
    mean: Float[Tensor, " d_in"],
    first_pos: int = 1,
    batch_seqs: int = 8,
    grad_aware: bool = False,
) -> dict[str, float]:
    """CE for the clean, spliced and ablated model, CE recovered per baseline, ΔCE and KL;
    with `grad_aware` (a g-SAE), also the gradient-aware splice under `grad_aware/` names."""
    from store.caching import forward

    device = next(model.parameters()).device
    runs = replacements(sae, mean)
    stats = DownstreamStats((*RUNS, GRAD_AWARE) if grad_aware else RUNS)
    cache = _baselines(model, hook, tokens, mean, first_pos, batch_seqs)
    for i, lo in enumerate(range(0, tokens.shape[0], batch_seqs)):
        batch = tokens[lo : lo + batch_seqs].to(device)
        if grad_aware:
            _, grad = forward(model, hook, batch, with_grads=True)  # the clean gradient
            runs[GRAD_AWARE] = grad_aware_replacement(sae, grad[:, first_pos:])
        _score_batch(model, sae.d_in, hook, batch, runs, first_pos, stats,
                     None if cache is None else cache.setdefault(i, {}))
    return stats.compute()


def _baselines(model, hook: str, tokens: Tensor, mean: Tensor, first_pos: int,
               batch_seqs: int) -> dict | None:
    """This model's cache entry for these inputs: {batch index: saved runs}, or None when
    the clean log-probs would be too big to keep."""
    vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
    if not _SHARING[0] or vocab is None or tokens.numel() * vocab > MAX_CACHED_FLOATS:
        return None
    digest = hashlib.sha1(tokens.cpu().numpy().tobytes())
    digest.update(mean.float().cpu().numpy().tobytes())
    key = (hook, first_pos, batch_seqs, digest.hexdigest())
    per_model = _BASELINE_CACHE.setdefault(model, {})
    if len(per_model) > 2 and key not in per_model:
        per_model.clear()  # one set of inputs at a time is what a sweep needs
    return per_model.setdefault(key, {})


@torch.inference_mode()
def _score_batch(
    model, d_in: int, hook: str, batch: Tensor, runs: dict[str, Replace], first_pos: int,
    stats: DownstreamStats, saved: dict | None = None,
) -> None:
    """Add one batch of windows: the clean run, then each replacement run. `saved` (a cache
    entry) holds the clean log-probs and the baselines' sums from an earlier SAE, or gets them."""
    if saved and "clean" in saved:
        clean = saved["clean"]
    else:
        clean = model(batch, return_type="logits").float().log_softmax(-1)
        if saved is not None:
            saved["clean"] = clean
    p_clean = clean.exp()
    ce = _ce_per_token(clean, batch, first_pos)
    stats.ce["clean"] += float(ce.double().sum())
    stats.n_ce += ce.numel()
    stats.n_kl += batch.shape[0] * (batch.shape[1] - first_pos)
    for name, replace in runs.items():
        if saved is not None and name in saved:
            ce_sum, kl_sum = saved[name]
        else:
            fwd = [(hook, splice_hook(replace, first_pos, d_in))]
            logits = model.run_with_hooks(batch, return_type="logits", fwd_hooks=fwd)
            log_probs = logits.float().log_softmax(-1)
            ce_sum = float(_ce_per_token(log_probs, batch, first_pos).double().sum())
            # KL(clean ‖ run) = Σ_v p_clean (log p_clean - log p_run), per position.
            kl = (p_clean * (clean - log_probs)).sum(-1)[:, first_pos:]
            kl_sum = float(kl.double().sum())
            del logits, log_probs
            if saved is not None and name in BASELINES:
                saved[name] = (ce_sum, kl_sum)
        stats.ce[name] += ce_sum
        stats.kl[name] += kl_sum
