"""Feature map storage, neighbours, click handling and the page (UMAP itself is replaced by a
projection here; tests/test_feature_map_umap.py runs the real one, which numba compiles ~20 s)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from dictionary_workspace import D_SAE, make_dictionary_workspace, write_sae

import saebench.feature_map as fm
from app.dictionary_charts import clicked_latent

MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")


def _project(W, settings=None):
    """A stand-in for UMAP: the first two coordinates (deterministic, instant)."""
    return np.ascontiguousarray(W[:, :2], dtype=np.float32)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    return make_dictionary_workspace(tmp_path_factory.mktemp("fmap") / "ws")


def test_cosine_knn_is_exact_and_puts_self_first():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(300, 16)).astype(np.float32)
    idx, dist = fm.cosine_knn(W, 7, block=64)  # several blocks
    U = W / np.linalg.norm(W, axis=1, keepdims=True)
    cos = U @ U.T
    assert (idx[:, 0] == np.arange(300)).all() and (dist[:, 0] == 0).all()
    np.fill_diagonal(cos, -np.inf)
    brute = np.argsort(-cos, axis=1)[:, :6]
    assert (idx[:, 1:] == brute).all()
    assert np.allclose(dist[:, 1:], 1 - np.take_along_axis(cos, brute, 1), atol=1e-5)
    assert (np.diff(dist, axis=1) >= 0).all()


def test_clicked_latent_reads_customdata():
    assert clicked_latent({"selection": {"points": [{"customdata": [17], "x": 1}]}}) == 17
    assert clicked_latent({"selection": {"points": [{"customdata": 5}]}}) == 5
    assert clicked_latent({"selection": {"points": []}}) is None
    assert clicked_latent(None) is None


def test_stored_map_is_reused_and_invalidated_by_new_weights(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    folder = write_sae(tmp_path, "s", rng.normal(size=(40, 8)).astype(np.float32))
    calls = []
    monkeypatch.setattr(fm, "embed", lambda W, s=None: calls.append(1) or _project(W))
    path = fm.build_feature_map(folder)
    table = fm.read_feature_map(folder)
    assert table.column_names == ["latent", "x", "y", "cluster"] and table.num_rows == 40
    fm.build_feature_map(folder)
    assert len(calls) == 1 and path.is_file()
    assert fm.read_feature_map(folder, fm.MapSettings(seed=1)) is None  # other settings
    write_sae(tmp_path, "s", rng.normal(size=(40, 8)).astype(np.float32))
    assert fm.read_feature_map(folder) is None  # retrained in place
    fm.build_feature_map(folder)
    assert len(calls) == 2


def test_too_few_latents_is_a_user_error(tmp_path):
    from store.errors import UserError

    with pytest.raises(UserError, match="at least"):
        fm.embed(np.ones((3, 4), np.float32))


# --- the page ---------------------------------------------------------------------------
def _app(ws: Path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("SAEBENCH_WORKSPACE", str(ws))
    monkeypatch.setattr(fm, "embed", _project)
    at = AppTest.from_file(MAIN, default_timeout=30)
    at.run()
    at.switch_page("views/feature_map.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_page_computes_on_request_then_colours_and_opens(ws, monkeypatch):
    at = _app(ws, monkeypatch)
    assert "no feature map yet" in at.info[0].value and not at.get("plotly_chart")
    at.button(key="fmap_build").click().run()
    assert not at.exception and (ws / "saes" / "sae-a" / fm.FILE).is_file()
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    latents = sorted(int(i) for t in fig["data"] for i in t["customdata"])
    assert latents == list(range(D_SAE))
    assert any(" w5" in text for t in fig["data"] for text in t["text"])  # hover: top tokens
    assert at.radio(key="fmap_colour").options == ["cluster", "density"]
    at.radio(key="fmap_colour").set_value("density").run()
    at.checkbox(key="fmap_hide_dead").check().run()
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    shown = sorted(int(i) for t in fig["data"] for i in t["customdata"])
    assert shown == list(range(1, D_SAE))  # latent 0 is dead
    assert any(t["marker"].get("showscale") for t in fig["data"])
    at.number_input(key="fmap_latent").set_value(9).run()
    at.button(key="fmap_open").click().run()
    assert not at.exception and at.session_state["latent"] == 9
    assert "Latent 9" in at.markdown[0].value


def test_page_for_an_sae_without_index_still_maps(ws, monkeypatch):
    at = _app(ws, monkeypatch)  # (patches embed with the projection: no UMAP here)
    fm.build_feature_map(ws / "saes" / "sae-c")
    at.selectbox(key="sae").set_value("sae-c").run()
    assert not at.exception
    assert at.radio(key="fmap_colour").options == ["cluster"]
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert any("(no contexts)" in text for t in fig["data"] for text in t["text"])
