"""saebench.api on a small workspace: listing, SQL, metrics, encoding text, comparing SAEs."""

from __future__ import annotations

import subprocess
import sys

import pytest

import saebench

TEXT = "It is a truth universally acknowledged, that a single man must be in want of a wife."


def test_import_is_light():
    code = "import sys, saebench; assert 'torch' not in sys.modules and 'duckdb' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lists_saes_and_queries_metrics(two_sae_workspace):
    ws = saebench.open_workspace(two_sae_workspace)
    names = ws.saes()
    assert len(names) == 2 and names[1] == f"{names[0]}-k2"
    assert "eval_metrics" in ws.tables()
    metrics = ws.metrics()
    assert list(metrics.index) == names
    assert metrics.loc[names[1], "l0"] <= 2 + 1e-6
    assert 0 < metrics.loc[names[0], "explained_variance"] <= 1
    rows = ws.sql("SELECT sae, value FROM eval_metrics WHERE metric = ? ORDER BY sae", ["l0"])
    assert list(rows["sae"]) == names


def test_sql_is_read_only(two_sae_workspace):
    ws = saebench.open_workspace(two_sae_workspace)
    with pytest.raises(Exception, match="(?i)read.only"):
        ws.sql("CREATE TABLE t AS SELECT 1")


def test_encode_text_and_activations(two_sae_workspace):
    ws = saebench.open_workspace(two_sae_workspace)
    sae = ws.sae(ws.saes()[0])
    assert sae.sparse_coder.W_dec.shape == (sae.cfg["d_sae"], sae.cfg["d_in"])
    top = sae.encode_text(TEXT, top=3)
    n_tokens = len(sae.tokens(TEXT)[0]) - 1  # BOS is dropped
    assert set(top.columns) == {"pos", "token", "rank", "latent", "act"}
    assert top["pos"].nunique() == n_tokens and (top["act"] > 0).all()
    assert top.groupby("pos").size().max() <= 3
    latent = int(top["latent"].iloc[0])
    acts = sae.activations(TEXT, latent)
    assert len(acts) == n_tokens
    assert acts["act"].iloc[0] == pytest.approx(top["act"].iloc[0], rel=1e-5)


def test_errors_are_user_errors(two_sae_workspace):
    from store.errors import UserError

    ws = saebench.open_workspace(two_sae_workspace)
    with pytest.raises(UserError, match="no SAE"):
        ws.sae("nope")
    with pytest.raises(UserError, match="out of range"):
        ws.sae(ws.saes()[0]).activations(TEXT, 10**6)
    with pytest.raises(UserError):
        saebench.open_workspace(two_sae_workspace / "missing")


def test_index_views(two_sae_workspace):
    ws = saebench.open_workspace(two_sae_workspace)
    if "features" not in ws.tables():
        pytest.skip("no feature index in this workspace yet (saebench index)")
    name = ws.saes()[0]
    features = ws.sql("SELECT * FROM features WHERE sae = ?", [name])
    assert len(features) == ws.sae(name).cfg["d_sae"]
