"""The core eval: SAELens's own eval code as the oracle, known answers, artifacts, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from eval_helpers import (
    TINY_HOOK,
    LensCoder,
    ReluCoder,
    identity_coder,
    model_store,
    signed_basis_coder,
    tensor_store,
)

from saebench.evals import EVALS, get_eval
from saebench.evals.configs import CoreConfig
from saebench.evals.context import EvalContext
from saebench.evals.core import run
from saebench.evals.downstream import downstream_metrics
from saebench.evals.features import FireCounter, count_windows, decoder_max_cos
from saebench.evals.reconstruction import ReconstructionStats
from saebench.evals.runner import recorded_store, run_evals
from store.catalog import query
from store.errors import UserError

REL = 0.01  # the bar for agreement with SAELens; measured agreement is far tighter


@pytest.fixture(scope="module")
def tiny():
    from store.models import load_model

    return load_model("random:tiny")


@pytest.fixture(scope="module")
def store(tiny):
    return model_store(tiny)


def _lens_sae(store, seed: int = 0):
    """A SAELens StandardSAE with weights that give a middling L0 and explained variance."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    d_in, d_sae = store.meta["d_in"], 64
    cfg = StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=TINY_HOOK))
    sae = StandardSAE(cfg)
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=g), dim=-1)
    x = store.acts
    with torch.no_grad():
        sae.W_dec.copy_(W_dec)
        sae.W_enc.copy_(W_dec.T)
        sae.b_dec.copy_(x.mean(0))
        sae.b_enc.fill_(-0.5 * float((x - x.mean(0)).norm(dim=-1).mean()) / math.sqrt(d_in))
    return sae


def _ctx(sae, store, tiny=None, hook=TINY_HOOK):
    return EvalContext(
        sae, {"hook_name": hook}, store, model_loader=(lambda: tiny) if tiny else None
    )


def _close(ours: float, theirs: float, rel: float = 1e-4, abs_: float = 1e-6) -> bool:
    return abs(ours - theirs) <= max(rel * abs(theirs), abs_)


class _TokenSource:
    """What SAELens's eval functions ask of an ActivationsStore: batches of token windows."""

    def __init__(self, tokens):
        self.tokens = tokens

    def get_batch_tokens(self, n):
        return self.tokens[:n]


# ---- SAELens as the oracle -------------------------------------------------------------


def test_explained_variance_matches_saelens_calculator():
    from sae_lens.evals import ExplainedVarianceCalculator

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 16, generator=g) * torch.linspace(0.1, 3, 16) + 40.0  # big mean
    x_hat = x + 0.3 * torch.randn(3000, 16, generator=g)
    ours, theirs = ReconstructionStats(16), ExplainedVarianceCalculator()
    for lo, hi in [(0, 7), (7, 1000), (1000, 2999), (2999, 3000)]:  # uneven batches
        ours.update(x[lo:hi], x_hat[lo:hi], x[lo:hi])
        theirs.add_batch(x_hat[lo:hi], x[lo:hi])
    xd = x.double()
    whole = 1 - (xd - x_hat.double()).pow(2).sum(1).mean() / (xd - xd.mean(0)).pow(2).sum(1).mean()
    assert _close(ours.compute()["explained_variance"], theirs.compute(), rel=1e-5)  # fp32 sums
    assert _close(ours.compute()["explained_variance"], float(whole), rel=1e-9)


def test_reconstruction_and_density_match_saelens(tiny, store):
    from sae_lens.evals import get_sparsity_and_variance_metrics
    from sae_lens.training.activation_scaler import ActivationScaler

    sae = _lens_sae(store)
    result = run(_ctx(LensCoder(sae), store), CoreConfig(ce_tokens=0, batch_tokens=50))
    n_seq, bos = store.windows.shape[0], tiny.tokenizer.bos_token_id
    theirs, per_feature = get_sparsity_and_variance_metrics(
        sae, tiny, _TokenSource(store.windows), ActivationScaler(), n_batches=1,
        compute_l2_norms=True, compute_sparsity_metrics=True, compute_variance_metrics=True,
        compute_featurewise_density_statistics=True, eval_batch_size_prompts=n_seq,
        model_kwargs={}, ignore_tokens=[bos],
    )
    m = result.metrics
    assert 2 < m["l0"] < 60 and 0.1 < m["explained_variance"] < 0.99  # a non-trivial SAE
    pairs = {
        "l0": "l0", "mse": "mse", "explained_variance": "explained_variance",
        "cosine_sim": "cossim", "relative_reconstruction_bias": "relative_reconstruction_bias",
    }
    for ours, name in pairs.items():
        assert _close(m[ours], theirs[name], rel=REL), (ours, m[ours], theirs[name])
        assert _close(m[ours], theirs[name]), (ours, m[ours], theirs[name])  # measured: ~1e-7
    table = result.tables["fire_counts"]
    final = table["tokens_seen"] == m["n_tokens"]
    density = table["fires"][final] / m["n_tokens"]
    np.testing.assert_allclose(density, per_feature["feature_density"], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("splice_bos", [False, True])
def test_downstream_matches_saelens(tiny, store, splice_bos):
    from sae_lens.evals import get_downstream_reconstruction_metrics
    from sae_lens.training.activation_scaler import ActivationScaler

    sae = _lens_sae(store)
    n_seq, ctx = store.windows.shape
    per_seq = ctx - 1 - (0 if splice_bos else 1)
    cfg = CoreConfig(ce_tokens=n_seq * per_seq, splice_bos=splice_bos, ce_batch_tokens=100)
    m = run(_ctx(LensCoder(sae), store, tiny), cfg).metrics
    # SAELens masks ignored tokens out of the SAE splice and the averages, but zero-ablates
    # every position; so BOS-clean runs compare clean/SAE CE and KL, BOS-spliced runs all.
    ignore = None if splice_bos else [tiny.tokenizer.bos_token_id]
    theirs = get_downstream_reconstruction_metrics(
        sae, tiny, _TokenSource(store.windows), ActivationScaler(), compute_kl=True,
        compute_ce_loss=True, n_batches=1, eval_batch_size_prompts=n_seq, ignore_tokens=ignore,
    )
    assert m["ce_tokens"] == n_seq * per_seq
    pairs = {"ce_clean": "ce_loss_without_sae", "ce_sae": "ce_loss_with_sae",
             "kl_sae": "kl_div_with_sae"}
    if splice_bos:
        pairs |= {"ce_zero_ablation": "ce_loss_with_ablation",
                  "ce_recovered_vs_zero_ablation": "ce_loss_score",
                  "kl_zero_ablation": "kl_div_with_ablation"}
    for ours, name in pairs.items():
        assert _close(m[ours], theirs[name], rel=REL), (ours, m[ours], theirs[name])
        assert _close(m[ours], theirs[name], rel=1e-4), (ours, m[ours], theirs[name])
    assert m["kl_sae"] > 1e-4 and m["delta_ce"] == pytest.approx(m["ce_sae"] - m["ce_clean"])


# ---- Known answers ---------------------------------------------------------------------


def test_identity_sae_is_perfect(tiny, store):
    n_seq, ctx = store.windows.shape
    m = run(_ctx(identity_coder(store.meta["d_in"]), store, tiny), CoreConfig()).metrics
    assert m["ce_tokens"] == n_seq * (ctx - 2)  # the default shrinks to a small store
    assert m["fvu"] == pytest.approx(0, abs=1e-9) and m["mse"] == 0
    assert m["cosine_sim"] == pytest.approx(1) and m["relative_reconstruction_bias"] == 1
    assert m["l0"] == store.meta["d_in"]  # one of each ±e_i pair fires per coordinate
    assert m["ce_recovered_vs_zero_ablation"] == pytest.approx(1, abs=1e-9)
    assert m["ce_recovered_vs_mean_ablation"] == pytest.approx(1, abs=1e-9)
    assert m["delta_ce"] == pytest.approx(0, abs=1e-9) and m["kl_sae"] == pytest.approx(0, abs=1e-9)
    assert m["ce_zero_ablation"] > m["ce_clean"] and m["kl_mean_ablation"] > 0
    assert m["max_cos_mean"] == 0 and m["pct_dead"] == 0  # ±e_i: only antipodal, orthogonal


def test_pca_sae_fvu_is_discarded_variance():
    g = torch.Generator().manual_seed(3)
    d_in, k = 24, 5
    Q, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=g, dtype=torch.float64))
    scales = torch.logspace(1, -1, d_in, dtype=torch.float64)
    x = (torch.randn(4000, d_in, generator=g, dtype=torch.float64) * scales) @ Q.T + 5.0
    mean = x.mean(0)
    eig, vecs = torch.linalg.eigh((x - mean).T @ (x - mean) / len(x))  # ascending
    sae = signed_basis_coder(vecs[:, -k:].float(), mean.float())
    m = run(_ctx(sae, tensor_store(x.float())), CoreConfig(ce_tokens=0, batch_tokens=999)).metrics
    expected = float(eig[:-k].sum() / eig.sum())
    assert m["fvu"] == pytest.approx(expected, rel=1e-4)
    assert m["explained_variance"] == pytest.approx(1 - expected, rel=1e-4)
    assert m["mse"] == pytest.approx(float(eig[:-k].sum()), rel=1e-4)
    assert m["l0"] == k and m["total_variance"] == pytest.approx(float(eig.sum()), rel=1e-5)


def test_shared_baselines_change_no_metric_and_skip_the_baseline_passes(tiny, store):
    from saebench.evals.downstream import shared_baselines

    saes = [LensCoder(_lens_sae(store, seed)) for seed in (0, 1)]
    tokens, mean = store.windows[:6], store.acts.mean(0)
    alone = [downstream_metrics(tiny, s, TINY_HOOK, tokens, mean, 1, 3) for s in saes]
    calls = []
    tiny.add_hook("hook_embed", lambda act, hook: calls.append(1))  # once per forward pass
    try:
        with shared_baselines():
            shared = [downstream_metrics(tiny, s, TINY_HOOK, tokens, mean, 1, 3) for s in saes]
    finally:
        tiny.reset_hooks()
    assert shared == alone  # the same sums, bit for bit
    assert alone[0]["kl_sae"] != alone[1]["kl_sae"]  # two different SAEs
    assert len(calls) == 2 * 4 + 2 * 1  # 2 batches: all four runs, then the SAE run only


def test_mean_ablation_with_zero_mean_is_zero_ablation(tiny, store):
    sae = identity_coder(store.meta["d_in"])
    m = downstream_metrics(tiny, sae, TINY_HOOK, store.windows[:4], torch.zeros(32), 1, 3)
    assert m["ce_mean_ablation"] == pytest.approx(m["ce_zero_ablation"], rel=1e-7)
    assert m["ce_tokens"] == 4 * (store.windows.shape[1] - 2)


def test_fire_counts_over_windows_and_feature_metrics():
    g = torch.Generator().manual_seed(0)
    codes = (torch.rand(2500, 6, generator=g) < torch.tensor([0, 0.001, 0.005, 0.05, 0.5, 1]))
    codes = codes.float()
    codes[1500, 0] = 3.0  # latent 0 fires once, after the 1000-token window
    windows = count_windows(2500, dead_window=1000)
    assert windows == [1000, 2500]
    counter = FireCounter(6, windows)
    for lo in range(0, 2500, 333):  # batches straddle the window boundary
        counter.update(codes[lo : lo + 333])
    for w in windows:
        assert counter.window(w).tolist() == (codes[:w] != 0).sum(0).tolist()
    cfg = CoreConfig(ce_tokens=0, dead_window=1000, batch_tokens=333)
    W_dec = torch.eye(6)
    W_dec[5, 4], W_dec[5, 5] = 1.0, 0.05  # latents 4 and 5 nearly duplicate
    result = run(_ctx(_CodesCoder(codes, W_dec), tensor_store(codes)), cfg)
    m = result.metrics
    dead_1000 = int(((codes[:1000] != 0).sum(0) == 0).sum())
    assert m["dead_window_tokens"] == 1000 and m["pct_dead"] == pytest.approx(100 * dead_1000 / 6)
    assert m["pct_dense_1pct"] == pytest.approx(100 * 3 / 6)  # 5%, 50%, 100%
    assert m["pct_dense_10pct"] == pytest.approx(100 * 2 / 6)
    assert m["log10_density_p50"] < 0
    max_cos = decoder_max_cos(W_dec, block=4)
    assert max_cos[4] > 0.99 and max_cos[5] > 0.99 and max_cos[0] == 0


class _CodesCoder(ReluCoder):
    """An 'SAE' whose codes are its input (d_in = d_sae), to test counting exactly."""

    def __init__(self, codes, W_dec):
        d = codes.shape[1]
        super().__init__(torch.eye(d), torch.zeros(d), W_dec, torch.zeros(d))


# ---- Artifacts ---------------------------------------------------------------------------


def test_artifacts_json_catalog_and_table(tiny, store, tmp_path, capsys):
    sae_dir = tmp_path / "runs" / "saes" / "pca4"
    x = store.acts
    _, vecs = torch.linalg.eigh(torch.cov(x.T))
    sae = signed_basis_coder(vecs[:, -4:], x.mean(0))
    cfg = CoreConfig(ce_tokens=100, dead_window=100)
    run_evals(_ctx(sae, store, tiny), sae_dir, ("core",), {"core": cfg})
    out = capsys.readouterr().out
    assert "explained_variance" in out and "ce_recovered_vs_zero_ablation" in out
    assert "BOS" in out
    doc = json.loads((sae_dir / "evals" / "core.json").read_text())
    assert doc["format"] == "saebench-eval/1" and doc["config"]["dead_window"] == 100
    assert doc["sae_cfg"] == {"hook_name": TINY_HOOK} and doc["store"]["meta"]["hook"] == TINY_HOOK
    assert {"saebench", "evals_sha256", "sae-lens"} <= set(doc["code"])
    ws = tmp_path / "runs"
    rows = query(ws, "SELECT metric, value FROM eval_metrics WHERE sae = 'pca4'").to_pylist()
    metrics = {r["metric"]: r["value"] for r in rows}
    assert metrics["l0"] == pytest.approx(doc["metrics"]["l0"])
    dead_sql = query(ws, (
        "SELECT 100 * avg((fires = 0)::DOUBLE) AS pct FROM feature_counts "
        "WHERE sae = 'pca4' AND tokens_seen = 100"
    )).to_pylist()[0]["pct"]
    assert dead_sql == pytest.approx(metrics["pct_dead"])


# ---- Bad input: one-line UserError, no artifact ----------------------------------------


def test_bad_inputs_raise_user_errors_and_write_nothing(store, tmp_path):
    d_in = store.meta["d_in"]
    with pytest.raises(UserError, match="d_in"):
        _ctx(identity_coder(d_in + 1), store)
    with pytest.raises(UserError, match="blocks.1.hook_resid_post"):
        _ctx(identity_coder(d_in), store, hook="blocks.1.hook_resid_post")
    sae_dir = tmp_path / "saes" / "x"
    held = store.n_tokens("heldout")
    for cfg, what in [(CoreConfig(n_tokens=held + 1, ce_tokens=0), "n_tokens"),
                      (CoreConfig(ce_tokens=10 * held), "ce_tokens")]:
        with pytest.raises(UserError, match=what) as err:
            run_evals(_ctx(identity_coder(d_in), store), sae_dir, ("core",), {"core": cfg})
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="unknown eval"):
        get_eval("nope")
    assert not sae_dir.exists()


def test_store_is_found_from_the_sae_folder(tmp_path):
    sae_dir = tmp_path / "runs" / "saes" / "a"
    sae_dir.mkdir(parents=True)
    (sae_dir / "cfg.json").write_text(json.dumps({"d_in": 4, "metadata": {"hook_name": "h"}}))
    with pytest.raises(UserError, match="pass --store"):
        recorded_store(sae_dir, {})
    (tmp_path / "runs" / "s.duckdb").write_bytes(b"")
    (sae_dir / "saebench_train.json").write_text(json.dumps({"store": {"path": "s.duckdb"}}))
    assert recorded_store(sae_dir, {}) == tmp_path / "runs" / "s.duckdb"


def test_cli_args_are_generated_from_the_config():
    import tyro

    from saebench.commands.eval import Args

    args = tyro.cli(Args, args=["--sae", "s", "--core.ce-tokens", "0", "--core.splice-bos"])
    assert args.evals == ("core",) and args.core == CoreConfig(ce_tokens=0, splice_bos=True)
    assert set(EVALS) >= set(args.evals)
