"""Decoder matching (saebench.compare): known answers, the workspace cache, CLI and page."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from dictionary_workspace import D_SAE, N_SHARED, make_dictionary_workspace, planted, top_token_of

from saebench.compare import (
    cache_path,
    comparable,
    compare,
    match_decoders,
    match_folders,
    share_matrix,
)
from store.errors import UserError

MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    return make_dictionary_workspace(tmp_path_factory.mktemp("cmp") / "ws")


def test_permutation_with_sign_flips_matches_everything_exactly():
    rng = np.random.default_rng(1)
    A = rng.normal(size=(200, 48)).astype(np.float32)
    perm, sign = rng.permutation(200), rng.choice([-1.0, 1.0], 200)
    B = (A[perm] * sign[:, None] * rng.uniform(0.5, 3, (200, 1))).astype(np.float32)
    m = match_decoders(A, B)
    assert m.shared(0.7) == (1.0, 1.0) and m.n_shared(0.999) == 200
    assert np.allclose(m.abs_cos, 1, atol=1e-5)
    assert (m.latent_a == np.arange(200)).all()
    assert (perm[m.latent_b] == m.latent_a).all()  # B's row j is A's row perm[j]
    assert (np.sign(m.cos) == sign[m.latent_b]).all()
    assert m.unmatched("a").size == 0 and m.unmatched("b").size == 0


def test_permutation_plus_noise_is_recovered_and_the_threshold_bites():
    rng = np.random.default_rng(2)
    A = rng.normal(size=(300, 64)).astype(np.float32)
    perm = rng.permutation(300)
    noise = rng.normal(size=A.shape) * np.linspace(0.1, 1.5, 300)[:, None]  # row-wise levels
    B = (A[perm] + noise[perm]).astype(np.float32)
    m = match_decoders(A, B)
    assert (perm[m.latent_b] == m.latent_a).mean() > 0.95
    # cos ≈ 1/sqrt(1 + s²) for noise scale s: rows with s < 1.02 clear 0.7, about 2/3 of them.
    assert 0.55 < m.shared(0.7)[0] < 0.75
    assert m.shared(0.5)[0] > m.shared(0.7)[0] > m.shared(0.9)[0]
    low = m.unmatched("a", 0.7)
    assert low.min() > 150  # the noisiest rows are the ones left without a partner


def test_disjoint_random_dictionaries_share_nothing():
    rng = np.random.default_rng(3)
    A, B = (rng.normal(size=(256, 128)).astype(np.float32) for _ in range(2))
    m = match_decoders(A, B)
    assert m.n_shared(0.7) == 0 and m.n_shared(0.5) == 0
    assert np.median(m.abs_cos) < 0.35
    assert m.unmatched("a").size == 256


def test_matching_is_one_to_one_and_optimal():
    rng = np.random.default_rng(4)
    A, B = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    m = match_decoders(A.astype(np.float32), B.astype(np.float32))
    assert sorted(m.latent_b) == list(range(6))
    cos = np.abs((A / np.linalg.norm(A, axis=1, keepdims=True))
                 @ (B / np.linalg.norm(B, axis=1, keepdims=True)).T)
    best = max(cos[np.arange(6), p].sum() for p in itertools.permutations(range(6)))
    assert m.abs_cos.sum() == pytest.approx(best, rel=1e-5)


def test_one_generic_direction_is_not_matched_twice():
    # B's row 0 is the best partner of both A rows; max-cos would use it twice.
    A = np.array([[1, 0.1, 0], [1, -0.1, 0]], np.float32)
    B = np.array([[1, 0, 0], [0, 1, 0.2]], np.float32)
    m = match_decoders(A, B)
    assert sorted(m.latent_b) == [0, 1] and m.n_shared(0.7) == 1


def test_rectangular_matching_pairs_every_latent_of_the_narrower_sae():
    rng = np.random.default_rng(5)
    A = rng.normal(size=(32, 40)).astype(np.float32)
    B = np.concatenate([A[::-1], rng.normal(size=(32, 40)).astype(np.float32)])
    m = match_decoders(A, B)
    assert len(m.cos) == 32 and m.shared(0.7) == (1.0, 0.5)
    assert (m.latent_b == 31 - m.latent_a).all()
    assert (m.unmatched("b") == np.arange(32, 64)).all()
    back = m.swapped()
    assert back.shared(0.7) == (0.5, 1.0) and (back.unmatched("a") == np.arange(32, 64)).all()


def test_workspace_api_caches_and_checks_the_weights(ws, monkeypatch):
    m = compare(ws, "sae-a", "sae-b")
    assert m.n_shared(0.7) == N_SHARED and m.shared(0.7) == (0.75, 0.75)
    path = cache_path(ws, "sae-b", "sae-a")
    assert path == cache_path(ws, "sae-a", "sae-b") and path.is_file()
    # A second call, either way round, reads the file instead of matching again.
    import scipy.optimize

    monkeypatch.setattr(scipy.optimize, "linear_sum_assignment",
                        lambda *a, **k: pytest.fail("recomputed a cached pair"))
    again = compare(ws, "sae-b", "sae-a")
    assert (again.latent_a == m.latent_b).all() and (again.latent_b == m.latent_a).all()
    # Inside a cluster of near-duplicates (|cos| ~0.97) the optimum may trade partners, but
    # every shared pair joins a B row to a row of the A cluster it was copied from.
    shared = m.abs_cos > 0.7
    source = planted()["perm"][m.latent_b[shared]]
    assert (source // 16 == m.latent_a[shared] // 16).all()


def test_retrained_sae_invalidates_the_cache(tmp_path):
    from dictionary_workspace import write_sae

    p = planted()
    write_sae(tmp_path, "x", p["a"])
    write_sae(tmp_path, "y", p["a"][::-1].copy())
    assert compare(tmp_path, "x", "y").n_shared(0.99) == D_SAE
    write_sae(tmp_path, "y", p["c"])  # same name, new weights
    assert compare(tmp_path, "x", "y").n_shared(0.7) == 0


def test_incomparable_pairs_are_one_line_errors(ws):
    with pytest.raises(UserError, match="blocks.1.hook_resid_post"):
        compare(ws, "sae-a", "sae-far")
    with pytest.raises(UserError, match="twice"):
        compare(ws, "sae-a", "sae-a")
    with pytest.raises(UserError, match="no SAE 'nope'"):
        compare(ws, "sae-a", "nope")
    assert comparable(ws, "sae-a") == ["sae-b", "sae-c"]
    assert comparable(ws, "sae-far") == []


def test_different_d_in_is_refused(tmp_path):
    from dictionary_workspace import write_sae

    rng = np.random.default_rng(6)
    x = write_sae(tmp_path, "x", rng.normal(size=(16, 32)).astype(np.float32))
    y = write_sae(tmp_path, "y", rng.normal(size=(16, 24)).astype(np.float32))
    with pytest.raises(UserError, match="d_in 24"):
        match_folders(x, y)
    with pytest.raises(UserError, match="no cfg.json"):
        match_folders(x, tmp_path)


def test_share_matrix(ws):
    names = ["sae-a", "sae-b", "sae-c"]
    only_cached = share_matrix(ws, names, compute=False)
    full = share_matrix(ws, names)
    assert full[0, 1] == full[1, 0] == 0.75 and full[0, 2] == 0 and (np.diag(full) == 1).all()
    assert np.isnan(only_cached).sum() <= 4 and not np.isnan(full).any()


def test_top_tokens_reads_the_index(ws):
    from saebench.top_tokens import top_tokens

    toks = top_tokens(ws, "sae-a", n=2)
    assert 0 not in toks  # the dead latent has no contexts
    assert toks[5] == [f"Ġw{top_token_of(5)}", f"Ġw{top_token_of(5) + 1}"]
    assert top_tokens(ws, "sae-c") == {}


def test_cli_prints_the_shared_share(ws, capsys):
    from saebench.cli import main

    assert main(["compare", "--a", str(ws / "saes" / "sae-a"), "--b",
                 str(ws / "saes" / "sae-b"), "--threshold", "0.7"]) == 0
    out = capsys.readouterr().out
    assert "48 shared = 75.0% of sae-a" in out
    assert main(["compare", "--a", str(ws / "saes" / "sae-a"), "--b",
                 str(ws / "saes" / "sae-far")]) == 2


# --- the page ---------------------------------------------------------------------------
def _app(ws: Path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("SAEBENCH_WORKSPACE", str(ws))
    at = AppTest.from_file(MAIN, default_timeout=30)
    at.run()
    at.switch_page("views/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_compare_page_shares_pairs_and_unmatched(ws, monkeypatch):
    at = _app(ws, monkeypatch)
    assert at.selectbox(key="cmp_b").value == "sae-b"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Shared (|cos| > 0.7)"] == "48" and metrics["of A's latents"] == "75.0%"
    pairs = at.dataframe[0].value
    assert len(pairs) == N_SHARED and (pairs["|cos|"] > 0.9).all()
    assert pairs["|cos|"].is_monotonic_decreasing
    row = pairs[(pairs["A"] > 0) & (pairs["B"] > 0)].iloc[0]  # latent 0 is dead: no tokens
    a, b = int(row["A"]), int(row["B"])
    assert row["A top tokens"] == f"' w{top_token_of(a)}'  ' w{top_token_of(a) + 1}'"
    assert row["B top tokens"] == f"' w{top_token_of(b)}'  ' w{top_token_of(b) + 1}'"
    assert row["open A"] == f"feature?sae=sae-a&latent={a}"
    assert len(at.dataframe[1].value) == D_SAE - N_SHARED
    unmatched_b = at.dataframe[2].value
    assert sorted(unmatched_b["latent"]) == list(range(N_SHARED, D_SAE))
    at.slider(key="cmp_threshold").set_value(1.0).run()
    assert {m.label: m.value for m in at.metric}["of B's latents"] == "0.0%"
    at.radio(key="cmp_show").set_value("all").run()
    assert len(at.dataframe[0].value) == D_SAE


def test_compare_page_opens_b_on_the_feature_page(ws, monkeypatch):
    at = _app(ws, monkeypatch)
    label = at.button(key="cmp_open_b").label
    latent = int(label.split("#")[1])
    at.button(key="cmp_open_b").click().run()
    assert not at.exception
    assert at.session_state["sae"] == "sae-b" and at.session_state["latent"] == latent
    assert f"Latent {latent}" in at.markdown[0].value


def test_compare_page_matrix_and_no_partner(ws, monkeypatch):
    at = _app(ws, monkeypatch)
    assert at.multiselect(key="cmp_matrix").value == ["sae-a", "sae-b", "sae-c"]
    if any(b.key == "cmp_fill" for b in at.button):
        at.button(key="cmp_fill").click().run()
    assert len(at.get("plotly_chart")) == 2  # histogram and matrix
    at.selectbox(key="sae").set_value("sae-far").run()
    assert not at.exception and "No other SAE" in at.info[0].value


def test_compare_page_warns_when_pairs_keep_their_index(tmp_path, monkeypatch):
    from dictionary_workspace import write_sae

    rng = np.random.default_rng(7)
    W = rng.normal(size=(D_SAE, 32)).astype(np.float32)
    write_sae(tmp_path, "init-a", W)
    write_sae(tmp_path, "init-b", W + 0.3 * rng.normal(size=W.shape).astype(np.float32))
    at = _app(tmp_path, monkeypatch)
    assert "100% of the pairs join latents with the same index" in at.warning[0].value
