"""saebench.api on a small workspace: listing, SQL, metrics, encoding text, comparing SAEs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import saebench

TEXT = "It is a truth universally acknowledged, that a single man must be in want of a wife."


def _build_fallback(root: Path) -> Path:
    """Store + SAE + core eval, used only while tests/workspace_builder.py does not exist."""
    from conftest import tiny_spec

    from saebench.cli import main as cli
    from store.caching import cache

    cache(tiny_spec(), root / "store.duckdb", progress=False)
    assert cli(["train", "--store", str(root / "store.duckdb"), "--out",
                str(root / "saes" / "tiny-topk"), "--k", "4", "--width", "64", "--tokens", "4096",
                "--batch-size", "256", "--no-progress"]) == 0
    assert cli(["eval", "--sae", str(root / "saes" / "tiny-topk")]) == 0
    return root


def workspace_copy(request, tmp_path_factory, name: str) -> Path:
    """A private copy of the session's tiny workspace (tests here may add SAEs to it)."""
    try:
        import workspace_builder  # noqa: F401

        base = request.getfixturevalue("tiny_workspace")
    except ImportError:
        base = _build_fallback(tmp_path_factory.mktemp("fallback") / "ws")
    dest = tmp_path_factory.mktemp(name) / "ws"
    shutil.copytree(base, dest)
    return dest


def add_second_sae(ws: Path) -> str:
    """Train and evaluate a second SAE (k 2) on the workspace's store; returns its name."""
    from saebench.cli import main as cli

    first = saebench.open_workspace(ws).sae(saebench.open_workspace(ws).saes()[0])
    out = ws / "saes" / f"{first.name}-k2"
    assert cli(["train", "--store", str(ws / first.run["store_path"]), "--out", str(out),
                "--k", "2", "--width", str(first.cfg["d_sae"]), "--tokens", "4096",
                "--batch-size", "256", "--no-progress"]) == 0
    assert cli(["eval", "--sae", str(out)]) == 0
    return out.name


@pytest.fixture(scope="module")
def ws_path(request, tmp_path_factory) -> Path:
    path = workspace_copy(request, tmp_path_factory, "api")
    add_second_sae(path)
    return path


def test_import_is_light():
    code = "import sys, saebench; assert 'torch' not in sys.modules and 'duckdb' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lists_saes_and_queries_metrics(ws_path):
    ws = saebench.open_workspace(ws_path)
    names = ws.saes()
    assert len(names) == 2 and names[1] == f"{names[0]}-k2"
    assert "eval_metrics" in ws.tables()
    metrics = ws.metrics()
    assert list(metrics.index) == names
    assert metrics.loc[names[1], "l0"] <= 2 + 1e-6
    assert 0 < metrics.loc[names[0], "explained_variance"] <= 1
    rows = ws.sql("SELECT sae, value FROM eval_metrics WHERE metric = ? ORDER BY sae", ["l0"])
    assert list(rows["sae"]) == names


def test_sql_is_read_only(ws_path):
    ws = saebench.open_workspace(ws_path)
    with pytest.raises(Exception, match="(?i)read.only"):
        ws.sql("CREATE TABLE t AS SELECT 1")


def test_encode_text_and_activations(ws_path):
    ws = saebench.open_workspace(ws_path)
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


def test_errors_are_user_errors(ws_path):
    from store.errors import UserError

    ws = saebench.open_workspace(ws_path)
    with pytest.raises(UserError, match="no SAE"):
        ws.sae("nope")
    with pytest.raises(UserError, match="out of range"):
        ws.sae(ws.saes()[0]).activations(TEXT, 10**6)
    with pytest.raises(UserError):
        saebench.open_workspace(ws_path / "missing")


def test_index_views(ws_path):
    ws = saebench.open_workspace(ws_path)
    if "features" not in ws.tables():
        pytest.skip("no feature index in this workspace yet (saebench index)")
    name = ws.saes()[0]
    features = ws.sql("SELECT * FROM features WHERE sae = ?", [name])
    assert len(features) == ws.sae(name).cfg["d_sae"]
