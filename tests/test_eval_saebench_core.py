"""Core's SAEBench fields (l1, l2 ratio, encoder statistics) and the SAEBench-schema JSON."""

from __future__ import annotations

import json

import pytest
import torch
from eval_helpers import TINY_HOOK, ReluCoder, identity_coder, model_store, tensor_store

from saebench.evals.configs import CoreConfig
from saebench.evals.context import EvalContext
from saebench.evals.core import run
from saebench.evals.runner import run_evals

NO_CE = CoreConfig(ce_tokens=0, batch_tokens=97)

# SAEBench's schema, hard-coded from adamkarvonen/SAEBench @ 8042bb3:
# top level from sae_bench/evals/base_eval_output.py (BaseEvalOutput),
TOP_LEVEL = {
    "eval_type_id": str, "eval_config": dict, "eval_id": str, "datetime_epoch_millis": int,
    "eval_result_metrics": dict, "eval_result_details": list,
    "eval_result_unstructured": (dict, type(None)), "sae_bench_commit_hash": str,
    "sae_lens_id": (str, type(None)), "sae_lens_release_id": (str, type(None)),
    "sae_lens_version": (str, type(None)), "sae_cfg_dict": (dict, type(None)),
}
# metric groups and per-feature fields from sae_bench/evals/core/eval_output.py
# (CoreMetricCategories, *Metrics, CoreFeatureMetric); all floats except the token counts.
CORE_GROUPS = {
    "model_behavior_preservation": {"kl_div_score", "kl_div_with_ablation", "kl_div_with_sae"},
    "model_performance_preservation": {"ce_loss_score", "ce_loss_with_ablation",
                                       "ce_loss_with_sae", "ce_loss_without_sae"},
    "reconstruction_quality": {"explained_variance", "explained_variance_legacy", "mse",
                               "cossim"},
    "shrinkage": {"l2_norm_in", "l2_norm_out", "l2_ratio", "relative_reconstruction_bias"},
    "sparsity": {"l0", "l1"},
    "token_stats": {"total_tokens_eval_reconstruction", "total_tokens_eval_sparsity_variance"},
    "misc_metrics": {"freq_over_1_percent", "freq_over_10_percent",
                     "normalized_freq_over_1_percent", "normalized_freq_over_10_percent",
                     "average_max_encoder_cosine_sim", "average_max_decoder_cosine_sim",
                     "frac_alive"},
}
INT_METRICS = {"total_tokens_eval_reconstruction", "total_tokens_eval_sparsity_variance"}
CORE_DETAIL = {"index": int, "feature_density": float, "consistent_activation_heuristic": float,
               "encoder_bias": float, "encoder_norm": float, "encoder_decoder_cosine_sim": float,
               "max_decoder_cosine_sim": float, "max_encoder_cosine_sim": float}
# What we leave out, on purpose (core_saebench.py says why).
NOT_COMPUTED = {"explained_variance_legacy", "consistent_activation_heuristic"}


def _ctx(sae, store, model=None):
    return EvalContext(sae, {"hook_name": TINY_HOOK}, store,
                       model_loader=(lambda: model) if model else None)


def _x(n=600, d=8, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * 2 + 0.5


class _NoEncoder:
    """An SAE without W_enc (like matching pursuit): codes found some other way."""

    def __init__(self, d_in):
        self.inner = identity_coder(d_in)
        self.d_in, self.d_sae = self.inner.d_in, self.inner.d_sae
        self.W_dec, self.b_dec = self.inner.W_dec, self.inner.b_dec

    def encode(self, x):
        return self.inner.encode(x)

    def decode(self, codes):
        return self.inner.decode(codes)

    def loss(self, x, ctx):
        raise NotImplementedError


def test_tied_identity_sae_known_answers():
    x = _x()
    result = run(_ctx(identity_coder(8), tensor_store(x)), NO_CE)
    m, table = result.metrics, result.tables["fire_counts"]
    assert m["enc_dec_cos_mean"] == pytest.approx(1)  # W_enc = W_decᵀ: cosine 1 per latent
    assert m["max_enc_cos_mean"] == pytest.approx(0, abs=1e-7)  # ±e_i: orthogonal or antipodal
    assert m["encoder_norm_mean"] == pytest.approx(1)
    assert m["l2_ratio"] == pytest.approx(1) and m["l2_norm_in"] == pytest.approx(m["l2_norm_out"])
    assert m["l2_norm_in"] == pytest.approx(float(x.norm(dim=1).mean()), rel=1e-6)
    assert m["l1"] == pytest.approx(float(x.abs().sum(1).mean()), rel=1e-6)  # |relu(±x)| = |x|
    assert set(table) >= {"encoder_norm", "encoder_bias", "enc_dec_cos", "max_enc_cos"}
    assert (table["enc_dec_cos"] == pytest.approx(1)) and (table["encoder_bias"] == 0).all()


def test_shrunk_decoder_gives_l2_ratio_and_bias_one_half():
    W_enc = torch.cat([torch.eye(8), -torch.eye(8)], dim=1)
    sae = ReluCoder(W_enc, torch.full((16,), 0.0), 0.5 * W_enc.T, torch.zeros(8))
    m = run(_ctx(sae, tensor_store(_x())), NO_CE).metrics
    assert m["l2_ratio"] == pytest.approx(0.5) and m["relative_reconstruction_bias"] == 0.5
    assert m["enc_dec_cos_mean"] == pytest.approx(1)  # cosine ignores the 0.5


def test_encoder_stats_match_saelens_weight_metrics():
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.evals import get_featurewise_weight_based_metrics

    from saebench.evals.features import encoder_stats

    sae = StandardSAE(StandardSAEConfig(d_in=8, d_sae=20))
    with torch.no_grad():
        sae.W_enc.normal_(generator=torch.Generator().manual_seed(2))
        sae.b_enc.normal_(generator=torch.Generator().manual_seed(3))
    ours, theirs = encoder_stats(sae), get_featurewise_weight_based_metrics(sae)
    for name, their_name in [("encoder_norm", "encoder_norm"), ("encoder_bias", "encoder_bias"),
                             ("enc_dec_cos", "encoder_decoder_cosine_sim")]:
        torch.testing.assert_close(ours[name], torch.tensor(theirs[their_name]), rtol=1e-5,
                                   atol=1e-6)
    assert ours["max_enc_cos"].max() <= 1 and ours["max_enc_cos"].min() > -1


def test_sae_without_encoder_skips_encoder_stats(tmp_path):
    sae_dir = tmp_path / "runs" / "saes" / "mp"
    run_evals(_ctx(_NoEncoder(8), tensor_store(_x())), sae_dir, ("core",), {"core": NO_CE},
              echo=lambda _: None)
    doc = json.loads((sae_dir / "evals" / "core.json").read_text())
    assert "encoder" in doc["notes"] and "enc_dec_cos_mean" not in doc["metrics"]
    sb = json.loads((sae_dir / "evals" / "core.saebench.json").read_text())
    assert "average_max_encoder_cosine_sim" not in sb["eval_result_metrics"]["misc_metrics"]
    assert set(sb["eval_result_details"][0]) == {"index", "feature_density",
                                                 "max_decoder_cosine_sim"}


def _check_schema(doc: dict, with_downstream: bool) -> None:
    for key, kind in TOP_LEVEL.items():
        assert key in doc and isinstance(doc[key], kind), key
    assert set(doc) == set(TOP_LEVEL)
    assert doc["eval_type_id"] == "core" and len(doc["eval_id"]) == 36
    metrics = doc["eval_result_metrics"]
    expected = set(CORE_GROUPS) - (set() if with_downstream else
                                   {"model_behavior_preservation",
                                    "model_performance_preservation"})
    assert set(metrics) == expected
    for group in expected:
        names = set(metrics[group])
        assert names == CORE_GROUPS[group] - NOT_COMPUTED, group
        for name, value in metrics[group].items():
            kind = int if name in INT_METRICS else float
            assert type(value) is kind, (group, name, value)
    for record in doc["eval_result_details"]:
        assert set(record) == set(CORE_DETAIL) - NOT_COMPUTED
        assert all(type(v) is CORE_DETAIL[k] for k, v in record.items())


def test_saebench_json_has_saebench_fields_and_types(tmp_path):
    from store.models import load_model

    tiny = load_model("random:tiny")
    store = model_store(tiny, n_seq=4, ctx=12)
    d_in = store.meta["d_in"]
    sae_dir = tmp_path / "ws" / "saes" / "id"
    run_evals(_ctx(identity_coder(d_in), store, tiny), sae_dir, ("core",),
              {"core": CoreConfig(ce_tokens=20)}, echo=lambda _: None)
    doc = json.loads((sae_dir / "evals" / "core.saebench.json").read_text())
    _check_schema(doc, with_downstream=True)
    m = doc["eval_result_metrics"]
    assert m["model_performance_preservation"]["ce_loss_score"] == pytest.approx(1, abs=1e-6)
    assert m["model_behavior_preservation"]["kl_div_score"] == pytest.approx(1, abs=1e-6)
    assert m["misc_metrics"]["frac_alive"] == 1 and m["shrinkage"]["l2_ratio"] == pytest.approx(1)
    assert doc["sae_lens_id"] == "id" and doc["sae_lens_release_id"] == "ws"
    assert len(doc["eval_result_details"]) == 2 * d_in
    run_evals(_ctx(identity_coder(d_in), store), sae_dir, ("core",), {"core": NO_CE},
              echo=lambda _: None)  # no model: no downstream groups, still valid
    _check_schema(json.loads((sae_dir / "evals" / "core.saebench.json").read_text()), False)
