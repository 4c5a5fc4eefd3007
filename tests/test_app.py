"""AppTest tests of every browser view, on a small synthetic workspace built here."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from store.catalog import query, refresh, write_parquet_atomic

streamlit_testing = pytest.importorskip("streamlit.testing.v1")
MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
D_IN, D_SAE, K, N_VOCAB = 32, 64, 4, 100
APPLE, BANANA = 7, 8  # latent 3 fires on " apple" and promotes "banana"


def _token(i: int) -> str:
    return {APPLE: "Ġapple", BANANA: "banana"}.get(i, f"tok{i}")


def _index(folder: Path, name: str, rng: np.random.Generator) -> None:
    def write(file: str, rows: list[dict], schema: list[tuple]) -> None:
        table = pa.Table.from_pylist(rows, schema=pa.schema([("sae", pa.string()), *schema]))
        write_parquet_atomic(folder / "index" / file, table)

    seen = 10_000
    feats, ctxs, logits, nbrs = [], [], [], []
    for lat in range(D_SAE):
        dead, dense = lat in (0, 1), lat == 2
        density = 0.0 if dead else 0.2 if dense else 10 ** -(1 + lat % 3) / 2
        max_act = 0.0 if dead else 1.0 + lat / 10
        feats.append(dict(sae=name, latent=lat, tokens_seen=seen, fires=int(density * seen),
                          density=density, max_act=max_act, mean_act=max_act / 3,
                          hist_counts=[] if dead else rng.integers(0, 50, 32).tolist(),
                          dead=dead, dense=dense))
        if dead:
            continue
        center_tok = APPLE if lat == 3 else 10 + lat % 50
        for kind, bucket, n in (("top", -1, 3), ("interval", 0, 2), ("interval", 5, 2)):
            for rank in range(n):
                toks = [int(t) for t in rng.integers(20, N_VOCAB, 8)]
                toks[4] = center_tok
                act = max_act * (1 - 0.1 * rank) * (1 if bucket < 0 else (bucket + 1) / 10)
                acts = [0.0, 0.0, act / 4, 0.0, act, act / 2, 0.0, 0.0]
                ctxs.append(dict(sae=name, latent=lat, kind=kind, bucket=bucket, rank=rank,
                                 seq=lat * 10 + rank, pos=4, act=act, center=4, tokens=toks,
                                 acts=acts))
        for kind, sign in (("top", 1), ("bottom", -1)):
            for rank in range(3):
                tok = BANANA if (lat == 3 and kind == "top" and rank == 0) else 30 + rank
                logits.append(dict(sae=name, latent=lat, kind=kind, rank=rank, token_id=tok,
                                   value=sign * (1.0 - 0.2 * rank)))
        for kind, others in (("decoder", (lat + 1, lat + 2)), ("coactivation", (lat + 5,))):
            for rank, other in enumerate(others):
                nbrs.append(dict(sae=name, latent=lat, kind=kind, rank=rank,
                                 other=other % D_SAE, value=0.9 - 0.1 * rank))
    i16, i32, f32 = pa.int16(), pa.int32(), pa.float32()
    write("features.parquet", feats, [
        ("latent", i32), ("tokens_seen", pa.int64()), ("fires", pa.int64()),
        ("density", pa.float64()), ("max_act", f32), ("mean_act", f32),
        ("hist_counts", pa.list_(pa.int64())), ("dead", pa.bool_()), ("dense", pa.bool_())])
    write("contexts.parquet", ctxs, [
        ("latent", i32), ("kind", pa.string()), ("bucket", i16), ("rank", i16), ("seq", i32),
        ("pos", i16), ("act", f32), ("center", i16), ("tokens", pa.list_(i32)),
        ("acts", pa.list_(pa.float16()))])
    write("logits.parquet", logits, [("latent", i32), ("kind", pa.string()), ("rank", i16),
                                      ("token_id", i32), ("value", f32)])
    write("neighbours.parquet", nbrs, [("latent", i32), ("kind", pa.string()), ("rank", i16),
                                       ("other", i32), ("value", f32)])
    write("vocab.parquet", [dict(sae=name, token_id=i, token=_token(i)) for i in range(N_VOCAB)],
          [("token_id", i32), ("token", pa.string())])


def make_workspace(root: Path) -> Path:
    """Two SAEs of the tiny random model: `synth-a` with a feature index, `synth-b` without."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    for j, name in enumerate(("synth-a", "synth-b")):
        folder = root / "saes" / name
        folder.mkdir(parents=True)
        save_file({"W_enc": rng.normal(size=(D_IN, D_SAE)).astype(np.float32),
                   "b_enc": np.zeros(D_SAE, np.float32),
                   "W_dec": rng.normal(size=(D_SAE, D_IN)).astype(np.float32) / 8,
                   "b_dec": np.zeros(D_IN, np.float32)}, str(folder / "sae_weights.safetensors"))
        (folder / "saebench_train.json").write_text(json.dumps(
            {"arch": "topk", "tokens_trained": 4096 * (j + 1), "steps": 8}))
        (folder / "cfg.json").write_text(json.dumps({
            "d_in": D_IN, "d_sae": D_SAE, "k": K, "architecture": "topk",
            "apply_b_dec_to_input": True, "normalize_activations": "none",
            "metadata": {"model_name": "random:tiny", "hook_name": "blocks.0.hook_resid_post"}}))
        write_parquet_atomic(folder / "curves.parquet", [
            dict(sae=name, step=s, tokens=s * 512, loss=1 / (s + 1), l0=float(K),
                 fvu=1 / (s + 1), dead_frac=0.0) for s in range(1, 9)])
        write_parquet_atomic(folder / "evals" / "core.parquet", [
            dict(sae=name, eval="core", metric=m, value=v, store="store.duckdb",
                 created_at="2026-01-01T00:00:00+00:00", format="saebench-eval/1")
            for m, v in (("l0", K * (j + 1.0)), ("fvu", 0.3 - 0.1 * j),
                         ("ce_recovered_vs_zero_ablation", 0.8 + 0.1 * j))])
        if j == 0:
            _index(folder, name, rng)
    refresh(root)
    return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("appws") / "ws")


def _app(workspace: Path, monkeypatch, page: str | None = None, timeout: float = 20):
    monkeypatch.setenv("SAEBENCH_WORKSPACE", str(workspace))
    at = streamlit_testing.AppTest.from_file(MAIN, default_timeout=timeout)
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _html(at) -> str:
    return "".join(h.proto.body for h in at.get("html"))


def test_overview_lists_saes_with_metrics(workspace, monkeypatch):
    at = _app(workspace, monkeypatch)
    table = at.table[0].value
    assert list(table.index) == ["synth-a", "synth-b"]
    assert table.loc["synth-b", "training tokens"] == 8192
    assert table.loc["synth-a", "fvu"] == pytest.approx(0.3)
    assert len(at.get("plotly_chart")) == 3  # two Pareto scatters and the training curves


def test_feature_page_shows_contexts_logits_neighbours(workspace, monkeypatch):
    at = _app(workspace, monkeypatch)
    at.session_state["latent"] = 3
    at.switch_page("views/feature.py").run()
    assert not at.exception
    body = _html(at)
    assert "saebench-tok" in body and " apple" in body and 'title="1.3"' in body
    promoted = at.table[0].value
    assert promoted["token"].iloc[0] == "banana"
    nb = [b.label for b in at.button if b.key and b.key.startswith("nb_")]
    assert any(label.startswith("#4 ") for label in nb)
    # clicking a neighbour opens it; next/previous step
    next(b for b in at.button if b.key == "nb_decoder_0").click().run()
    assert at.session_state["latent"] == 4
    at.button(key="next").click().run()
    assert at.session_state["latent"] == 5
    at.button(key="prev").click().run()
    assert at.session_state["latent"] == 4
    at.button(key="random").click().run()
    assert at.session_state["latent"] not in (0, 1)  # dead latents are never picked
    at.number_input(key="jump_to").set_value(0).run()
    assert at.session_state["latent"] == 0 and "dead" in at.markdown[0].value


def test_label_is_saved_and_found_by_search(workspace, monkeypatch):
    at = _app(workspace, monkeypatch)
    at.session_state["latent"] = 9
    at.switch_page("views/feature.py").run()
    at.text_input(key="label_synth-a_9").input("fruit O'Brien'; DROP TABLE x; --")
    at.button[[b.label for b in at.button].index("Save label")].click().run()
    assert not at.exception
    rows = query(workspace, "SELECT latent, label FROM labels").to_pylist()
    assert rows == [{"latent": 9, "label": "fruit O'Brien'; DROP TABLE x; --"}]
    at.switch_page("views/search.py").run()
    at.text_input(key="q_text").input("o'brien").run()
    hits = at.dataframe[0].value[["latent", "label"]].values.tolist()
    assert hits == [[9, "fruit O'Brien'; DROP TABLE x; --"]]
    at.button(key="q_open").click().run()
    assert at.session_state["latent"] == 9


def test_search_by_token_and_by_stat(workspace, monkeypatch):
    at = _app(workspace, monkeypatch, "views/search.py")
    at.text_input(key="q_token").input(" apple").run()
    assert any(b.key == "tok_3" for b in at.button)
    at.text_input(key="q_token").input(str(APPLE)).run()
    assert any(b.key == "tok_3" for b in at.button)
    stat = [b.key for b in at.button if b.key and b.key.startswith("stat_")]
    assert stat[0] == "stat_2"  # the dense latent is the densest
    at.radio(key="q_order").set_value("max_act").run()
    assert [b.key for b in at.button if b.key and b.key.startswith("stat_")][0] == "stat_63"


def test_dead_and_dense(workspace, monkeypatch):
    at = _app(workspace, monkeypatch, "views/dead_dense.py")
    values = {m.label: m.value for m in at.metric}
    assert values["Dead"].startswith("2 ") and values["Dense (> 1%)"] == "1"
    assert at.selectbox(key="pick_dead").options == ["0", "1"]


def test_sae_without_index_degrades_to_a_message(workspace, monkeypatch):
    for page in ("views/feature.py", "views/search.py", "views/dead_dense.py"):
        at = _app(workspace, monkeypatch)
        at.selectbox(key="sae").set_value("synth-b").run()
        at.switch_page(page).run()
        at.text_input(key="q_token").input("x").run() if page.endswith("search.py") else None
        assert not at.exception
        assert any("saebench index" in i.value for i in at.info), page


def test_empty_workspace_is_a_message(tmp_path, monkeypatch):
    at = _app(tmp_path, monkeypatch)
    assert "No SAEs" in at.error[0].value


def test_test_your_text_runs_model_and_sae(workspace, monkeypatch):
    at = _app(workspace, monkeypatch, "views/test_text.py", timeout=120)
    assert not at.error, [e.value for e in at.error]
    table = at.table[0].value
    assert len(table) >= 5 and table["top 1"].str.startswith("#").all()
    assert "saebench-tok" in _html(at)
    t0 = time.perf_counter()
    at.text_area(key="tt_text").input("Elizabeth walked to the house.").run()
    assert not at.exception and time.perf_counter() - t0 < 3.0  # model cached across reruns


def test_page_render_times(workspace, monkeypatch):
    at = _app(workspace, monkeypatch)
    at.session_state["latent"] = 3
    for page in ("views/overview.py", "views/feature.py", "views/search.py",
                 "views/dead_dense.py"):
        t0 = time.perf_counter()
        at.switch_page(page).run()
        # A guard against a pathological regression only (a page that scans every activation),
        # loose enough for a loaded 2-core machine: a 1 s bound failed at 1.09 s while other
        # jobs ran. Render latency is measured in benchmarks/app_bench.py, not here.
        assert time.perf_counter() - t0 < 10.0, page
        assert not at.exception


def test_app_command_binds_localhost_and_refuses_empty_workspace(workspace, tmp_path):
    from saebench.commands.app import Args, command, main
    from store.errors import UserError

    cmd = command(Args(workspace=workspace))
    assert cmd[cmd.index("--server.address") + 1] == "localhost"
    assert cmd[-2:] == ["--workspace", str(workspace.resolve())]
    assert Path(cmd[cmd.index("run") + 1]) == Path(MAIN)
    with pytest.raises(UserError, match="no SAEs"):
        main(Args(workspace=tmp_path))
