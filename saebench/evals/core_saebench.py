"""The core eval's results in SAEBench core's output schema (see saebench_format.py).

Groups and names are SAEBench's (`sae_bench/evals/core/eval_output.py`); each entry maps one of
our metrics onto theirs where both are the same quantity (formulas: SAELens `evals.py`, which
SAEBench core copies, and our tests check against). Left out because we do not compute them:
`explained_variance_legacy` (a per-token formula SAEBench itself labels incorrect) and the
per-feature `consistent_activation_heuristic`. Downstream groups are absent when the run
skipped the model (`ce_tokens=0`), encoder statistics when the SAE has no encoder (MP).
"""

from __future__ import annotations

import math

import numpy as np

from saebench.evals.context import EvalResult

EVAL_TYPE_ID = "core"

# SAEBench group -> {SAEBench metric: our metric}
SAME = {
    "model_behavior_preservation": {
        "kl_div_with_ablation": "kl_zero_ablation",
        "kl_div_with_sae": "kl_sae",
    },
    "model_performance_preservation": {
        "ce_loss_score": "ce_recovered_vs_zero_ablation",
        "ce_loss_with_ablation": "ce_zero_ablation",
        "ce_loss_with_sae": "ce_sae",
        "ce_loss_without_sae": "ce_clean",
    },
    "reconstruction_quality": {
        "explained_variance": "explained_variance",
        "mse": "mse",
        "cossim": "cosine_sim",
    },
    "shrinkage": {
        "l2_norm_in": "l2_norm_in",
        "l2_norm_out": "l2_norm_out",
        "l2_ratio": "l2_ratio",
        "relative_reconstruction_bias": "relative_reconstruction_bias",
    },
    "sparsity": {"l0": "l0", "l1": "l1"},
    "misc_metrics": {
        "average_max_encoder_cosine_sim": "max_enc_cos_mean",
        "average_max_decoder_cosine_sim": "max_cos_mean",
    },
}

# SAEBench per-feature field -> our fire_counts column
DETAIL_COLUMNS = {
    "encoder_bias": "encoder_bias",
    "encoder_norm": "encoder_norm",
    "encoder_decoder_cosine_sim": "enc_dec_cos",
    "max_decoder_cosine_sim": "max_cos",
    "max_encoder_cosine_sim": "max_enc_cos",
}


def _final_window(result: EvalResult) -> dict[str, np.ndarray]:
    """The fire_counts rows over all eval tokens: one per latent, in latent order."""
    table = result.tables["fire_counts"]
    final = table["tokens_seen"] == result.metrics["n_tokens"]
    return {name: column[final] for name, column in table.items()}


def _misc(density: np.ndarray) -> dict[str, float]:
    # SAEBench core's calculate_misc_metrics: shares of latents, and of all firing, above 1%/10%.
    total = float(density.sum())
    out = {"frac_alive": float((density > 0).mean())}
    for pct, cut in (("1", 0.01), ("10", 0.1)):
        over = density > cut
        out[f"freq_over_{pct}_percent"] = float(over.mean())
        out[f"normalized_freq_over_{pct}_percent"] = (
            float(density[over].sum()) / total if total > 0 else 0.0
        )
    return out


def saebench_output(result: EvalResult, cfg) -> tuple[str, dict, list[dict]]:
    """(eval_type_id, metrics by SAEBench group, per-feature records) of a core result."""
    m = result.metrics
    groups: dict[str, dict] = {}
    for group, names in SAME.items():
        found = {theirs: m[ours] for theirs, ours in names.items() if ours in m}
        if found:
            groups[group] = found
    if "kl_sae" in m:
        # SAEBench: (KL_ablated - KL_sae) / KL_ablated, with zero-ablation as the baseline.
        kl_zero = m["kl_zero_ablation"]
        groups["model_behavior_preservation"]["kl_div_score"] = (
            (kl_zero - m["kl_sae"]) / kl_zero if kl_zero else math.nan
        )
    groups["token_stats"] = {
        "total_tokens_eval_reconstruction": int(m.get("ce_tokens", 0)),
        "total_tokens_eval_sparsity_variance": int(m["n_tokens"]),
    }
    rows = _final_window(result)
    density = rows["fires"] / m["n_tokens"]
    groups["misc_metrics"] = groups.get("misc_metrics", {}) | _misc(density)
    columns = {"feature_density": density.astype(np.float64)}
    for theirs, ours in DETAIL_COLUMNS.items():
        values = rows[ours].astype(np.float64)
        if not np.isnan(values).all():  # all-NaN: the SAE has no such weight
            columns[theirs] = values
    details = [
        {"index": int(latent)} | {name: float(col[row]) for name, col in columns.items()}
        for row, latent in enumerate(rows["latent"])
    ]
    return EVAL_TYPE_ID, groups, details
