"""AppTest of the feature page's new panes (neighbour meaning, other SAEs at the hook, loss
effects, compact counts, card export) and of the overview's evals against L0."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_app import APPLE, _app, _html, _index, make_workspace

from saebench.index import schema
from store.catalog import refresh, write_parquet_atomic

WORDS = ["Ġunquestionably", "Ġextraordinarily", "Ġcircumstances", "Ġacknowledgement",
         "Ġrepresentatives", "Ġnotwithstanding", "Ġcorrespondence", "Ġdisappointment"]
# Pieces with no leading space: a run of them has no line-break opportunity between tokens,
# which is how contexts of code ran out of their column and under the histogram.
PIECES = ["_representation", "ological", "Exception", "::iterator", "0x7fffffff", "ization"]


def token_text(i: int) -> str:
    """The polished workspace's vocab: test_app's below 20, long words, then long pieces."""
    from test_app import _token

    return _token(i) if i < 20 else WORDS[i % len(WORDS)] if i < 60 else PIECES[i % len(PIECES)]
LONG_LABEL = ("a neighbour whose label runs on and on, far longer than any button or column "
              "on the page could show on one line without wrapping or clipping it")
EXPLANATION = "the word ' apple' and other fruit"
FIRES, SEEN = 3_688, 248_123
SECOND = 60  # synth-b's second top token: PIECES[0]


def _rewrite(path: Path, fix, table_schema: pa.Schema | None = None) -> None:
    rows = [fix(r) or r for r in pq.read_table(path).to_pylist()]
    write_parquet_atomic(path, pa.Table.from_pylist(rows, schema=table_schema))


def make_polished_workspace(root: Path) -> Path:
    """test_app's workspace plus: synth-b indexed and a batchtopk, long words in the vocab,
    33-token top contexts with loss effects for latent 3, explanations, a long label,
    sparse-probing rows, and latent 3's counts at the scale that used to clip."""
    ws = make_workspace(root)
    a, b = ws / "saes" / "synth-a", ws / "saes" / "synth-b"
    _index(b, "synth-b", np.random.default_rng(1))
    run = json.loads((b / "saebench_train.json").read_text())
    (b / "saebench_train.json").write_text(json.dumps(run | {"arch": "batchtopk"}))
    for folder in (a, b):
        _rewrite(folder / "index" / "vocab.parquet",
                 lambda r: r | {"token": token_text(r["token_id"])})
    rng = np.random.default_rng(2)

    def contexts(r: dict) -> dict:
        r = r | {"loss_effects": None}
        if r["kind"] != "top":
            return r
        if r["latent"] != 3:
            return r | {"loss_effects": [0.01] * len(r["tokens"])}
        low = 60 if r["rank"] == 1 else 20  # the second context: pieces only, no spaces
        toks = [int(t) for t in rng.integers(low, 100, 33)]
        toks[16] = APPLE
        acts = [0.0] * 33
        acts[16], acts[17] = r["act"], r["act"] / 2
        loss = [0.0] * 16 + [0.25, -0.125] + [0.0] * 14 + [math.nan]
        return r | {"tokens": toks, "acts": acts, "center": 16, "loss_effects": loss}

    _rewrite(a / "index" / "contexts.parquet", contexts, schema.CONTEXTS)
    # synth-b's index is of the current format: its top tokens come from features.top_tokens
    # (synth-a's, like an older index, from its contexts); a second token marks the source.
    _rewrite(b / "index" / "features.parquet", lambda r: r | {"top_tokens": None if r["dead"]
             else [10 + r["latent"] % 50, SECOND]}, schema.FEATURES)
    _rewrite(a / "index" / "features.parquet", lambda r: r | {
        "fires": FIRES, "tokens_seen": SEEN, "density": FIRES / SEEN} if r["latent"] == 3
        else None)
    write_parquet_atomic(a / "features" / "explanations.parquet", [
        dict(sae="synth-a", latent=lat, explanation=text, explainer="token-pattern",
             score=0.75, fires=10) for lat, text in ((3, EXPLANATION), (4, "fruit " * 30))])
    write_parquet_atomic(ws / "labels.parquet", [
        dict(sae="synth-a", latent=5, label=LONG_LABEL, updated_at="2026-01-01T00:00:00")])
    for j, folder in enumerate((a, b)):
        write_parquet_atomic(folder / "evals" / "sparse_probing.parquet", [
            dict(sae=folder.name, eval="sparse_probing", metric=m, value=v, store="s",
                 created_at="2026-01-01T00:00:00+00:00", format="saebench-eval/1")
            for m, v in (("sae_top_1_test_accuracy", 0.6 + 0.1 * j),
                         ("sae_top_5_test_accuracy", 0.8))])
    refresh(ws)
    return ws


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return make_polished_workspace(tmp_path_factory.mktemp("polish") / "ws")


def _feature(workspace, monkeypatch, latent: int = 3):
    at = _app(workspace, monkeypatch)
    at.session_state["latent"] = latent
    at.switch_page("views/feature.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _unit_rows(folder: Path) -> np.ndarray:
    from safetensors.numpy import load_file

    W = load_file(str(folder / "sae_weights.safetensors"))["W_dec"]
    return W / np.linalg.norm(W, axis=1, keepdims=True)


def _captions(at) -> list[str]:
    """Caption texts as shown (markdown escapes removed)."""
    return [re.sub(r"\\(.)", r"\1", c.value) for c in at.caption]


def test_neighbours_show_top_tokens_label_and_explanation(workspace, monkeypatch):
    at = _feature(workspace, monkeypatch)
    first, second = at.button(key="nb_decoder_0"), at.button(key="nb_decoder_1")
    assert (first.label, second.label) == ("#4 · 0.900", "#5 · 0.800")
    captions = _captions(at)
    # latent 4's top contexts sit on token 14 (test_app._index); it has a long explanation
    shown = next(c for c in captions if c.startswith("'tok14' · fruit fruit"))
    assert shown.endswith("…") and len(shown) < 150  # cut under the button, whole on hover
    assert "fruit " * 30 in first.help and LONG_LABEL in second.help
    assert any(c.startswith("'tok15' · a neighbour whose label") for c in captions)
    assert any(EXPLANATION in c for c in captions)  # this latent's own explanation


def test_nearest_latents_in_the_other_sae_at_this_hook(workspace, monkeypatch):
    at = _feature(workspace, monkeypatch)
    cos = _unit_rows(workspace / "saes" / "synth-b") @ _unit_rows(
        workspace / "saes" / "synth-a")[3]
    want = np.argsort(-np.abs(cos))[:3]
    got = [at.button(key=f"x_synth-b_{j}") for j in range(3)]
    for button, latent in zip(got, want, strict=True):
        assert button.label == f"#{latent} · cos {cos[latent]:+.3f}"
    # synth-b's latents fire on token 10 + latent % 50 (test_app._index): long words here
    word = token_text(10 + want[0] % 50).replace("Ġ", " ")
    assert f"'{word}'  '{token_text(SECOND)}'" in _captions(at)
    got[0].click().run()
    assert at.session_state["sae"] == "synth-b" and at.session_state["latent"] == want[0]
    assert not at.exception and at.markdown[0].value.startswith(f"## Latent {want[0]}")


def test_loss_effects_show_on_hover(workspace, monkeypatch):
    body = _html(_feature(workspace, monkeypatch))
    assert 'title="1.3 · ablating the latent: next-token loss +0.25"' in body
    assert 'data-loss="-0.125"' in body
    assert "display: inline-block" in body  # tokens wrap inside their column
    plain = _html(_feature(workspace, monkeypatch, latent=9))  # no loss stored off latent 3
    assert "next-token loss +0.01" in plain


def test_fires_fit_their_tile_and_exact_counts_stay(workspace, monkeypatch):
    at = _feature(workspace, monkeypatch)
    fires = next(m for m in at.metric if m.label == "Fires")
    assert fires.value == "3,688" and "248,123" in fires.proto.help
    assert any("3,688 of 248,123" in c.value for c in at.caption)


def test_feature_card_exports_what_the_page_shows(workspace, monkeypatch):
    from streamlit.runtime.media_file_manager import MediaFileManager

    makers: dict[str, object] = {}  # file name -> the callable the button runs on click
    add = MediaFileManager.add_deferred

    def spy(self, data_callable, mimetype, coordinates, file_name=None, **kw):
        makers[file_name] = data_callable
        return add(self, data_callable, mimetype, coordinates, file_name=file_name, **kw)

    monkeypatch.setattr(MediaFileManager, "add_deferred", spy)
    at = _feature(workspace, monkeypatch)
    saved = {name: make() for name, make in makers.items()}  # what a click downloads
    saved = {k: v.encode() if isinstance(v, str) else v for k, v in saved.items()}
    assert {b.label for b in at.download_button} == {"Export card (JSON)", "Export card (HTML)"}
    card = json.loads(saved["synth-a-latent3.json"])
    assert (card["sae"], card["latent"], card["stats"]["fires"]) == ("synth-a", 3, FIRES)
    top = [c for c in card["contexts"] if c["kind"] == "top"]
    assert len(top) == 3 and top[0]["tokens"][16] == "Ġapple"
    assert top[1]["tokens"][0] in PIECES
    assert top[0]["loss_effects"][16] == 0.25 and top[0]["loss_effects"][-1] is None  # NaN
    assert [r["latent"] for r in card["neighbours"]["decoder"]] == [4, 5]
    assert card["neighbours"]["decoder"][1]["label"] == LONG_LABEL
    assert card["explanation"]["explanation"] == EXPLANATION
    assert len(card["other_saes"]["synth-b"]) == 3
    page = saved["synth-a-latent3.html"].decode()
    assert page.startswith("<!doctype html>") and "<script" not in page
    assert "next-token loss +0.25" in page and "Nearest in synth-b" in page


def test_overview_plots_any_eval_against_l0(workspace, monkeypatch):
    at = _app(workspace, monkeypatch)
    box = at.selectbox(key="l0_metric_0")
    assert box.value == "core: ce_recovered_vs_zero_ablation"  # a SAEBench headline first
    labels = box.options  # as shown: presets by name, then every metric as "metric (eval)"
    assert labels[:3] == ["CE loss recovered (zero ablation)", "FVU",
                          "Sparse probing: top-1 accuracy"]
    assert "sae_top_5_test_accuracy (sparse_probing)" in labels  # any metric at all
    box.set_value("sparse_probing: sae_top_1_test_accuracy").run()
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    traces = {t["name"]: (t["x"], t["y"]) for t in spec["data"]}
    assert traces == {"topk": ([4.0], [0.6]), "batchtopk": ([8.0], [0.7])}  # colour per arch
    at.checkbox(key="l0_log").check().run()
    assert json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["xaxis"]["type"] == "log"
    assert len(at.get("plotly_chart")) == 3 and not at.exception
