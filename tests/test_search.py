"""Feature search: BM25 with known answers, the workspace corpus (explanations, labels, top
tokens), its per-workspace cache, and the search page."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pytest
from test_app import make_workspace

from saebench import search as search_module
from saebench.bm25 import BM25, query_terms, words
from saebench.search import Document, SearchIndex, index_for, search
from store.catalog import refresh, write_parquet_atomic

streamlit_testing = pytest.importorskip("streamlit.testing.v1")
MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
EXPLAINED = {
    "synth-a": {5: "plural nouns naming fruit", 6: "the word the before nouns",
                7: "capitalised names of people in dialogue", 8: "nouns at the end of a clause",
                10: "commas between clauses"},
    "synth-b": {5: "plural nouns in lists", 9: "apple and other fruit"},
}


def add_explanations(ws: Path) -> Path:
    """Explanations as `saebench eval --evals autointerp` writes them (report.write_result)."""
    for sae, rows in EXPLAINED.items():
        n = len(rows)
        write_parquet_atomic(ws / "saes" / sae / "features" / "explanations.parquet", pa.table({
            "sae": [sae] * n, "latent": list(rows), "explanation": list(rows.values()),
            "explainer": ["llm:test"] * n, "score": [0.5 + 0.05 * i for i in range(n)],
            "fires": [100] * n}))
    refresh(ws)
    return ws


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return add_explanations(make_workspace(tmp_path_factory.mktemp("search") / "ws"))


def _index(*texts: str) -> SearchIndex:
    return SearchIndex([Document("s", i, t) for i, t in enumerate(texts)])


def test_bm25_matches_a_hand_computed_score():
    bm = BM25([["a", "b"], ["a"]])  # N = 2, mean length 1.5
    idf_b = math.log(1 + (2 - 1 + 0.5) / (1 + 0.5))
    expected = idf_b * 1 * 2.2 / (1 + 1.2 * (1 - 0.75 + 0.75 * 2 / 1.5))
    assert bm.scores(["b"]).tolist() == pytest.approx([expected, 0.0])
    a = bm.scores(["a"])
    assert a[1] > a[0] > 0  # the same term counts more in the shorter document
    assert bm.scores(["b", "b"]).tolist() == bm.scores(["b"]).tolist()  # query terms count once


def test_an_explanation_typed_exactly_ranks_its_latent_first():
    texts = ["nouns after the word the", "plural nouns naming fruit",
             "the word the at the start of a sentence", "fruit names in lists",
             "the start of a list of nouns"]
    index = _index(*texts)
    for i, text in enumerate(texts):
        hits = index.search(text)
        assert hits[0].latent == i, text
        assert hits[0].score > hits[1].score
    assert index.search("zebra") == []  # no shared term: no hit, not every latent at score 0


def test_a_term_in_many_explanations_weighs_less():
    # "nouns" is in four explanations, "fruit" in one; latent 0 holds each once.
    index = _index("nouns fruit", "nouns", "plural nouns", "nouns again", "clauses")
    nouns, fruit = index.search("nouns"), index.search("fruit")
    score = {h.latent: h.score for h in nouns}
    assert fruit[0].latent == 0 and fruit[0].score > score[0]
    # So "fruit" decides a two-word query against a longer document holding "nouns" twice.
    index = _index("nouns fruit", "nouns nouns plural")
    assert [h.latent for h in index.search("nouns fruit")] == [0, 1]
    assert index.bm25.idf(4) < index.bm25.idf(1)


def test_terms_tokens_and_punctuation():
    assert words("Ġapple,ĠMr. O'Brien") == ["apple", "mr", "o", "brien"]
    assert query_terms(",") == [","] and query_terms("apple, pear") == ["apple", "pear"]
    index = SearchIndex([Document("s", 0, "commas", top_tokens=(",", "Ġand")),
                         Document("s", 1, "full stops", top_tokens=(".",))])
    assert [h.latent for h in index.search(",")] == [0]
    assert [h.latent for h in index.search("and")] == [0]  # 'Ġand' is the word 'and'


def test_workspace_search_spans_saes_or_keeps_to_one(workspace):
    hits = search(workspace, "apple")
    # synth-a #3 fires on 'Ġapple' (its top tokens); synth-b #9 is explained as apples.
    assert {(h.sae, h.latent) for h in hits} == {("synth-a", 3), ("synth-b", 9)}
    a3 = next(h for h in hits if h.sae == "synth-a")
    assert a3.top_tokens[0] == "Ġapple" and a3.explanation == ""
    assert [(h.sae, h.latent) for h in search(workspace, "apple", sae="synth-b")] == \
        [("synth-b", 9)]
    nouns = search(workspace, "plural nouns")
    assert {(h.sae, h.latent) for h in nouns[:2]} == {("synth-a", 5), ("synth-b", 5)}
    assert nouns[0].explanation in ("plural nouns naming fruit", "plural nouns in lists")


def test_notebook_api(workspace):
    import saebench

    table = saebench.open_workspace(workspace).search("plural nouns", sae="synth-b")
    assert table[["sae", "latent", "explanation"]].values.tolist() == [
        ["synth-b", 5, "plural nouns in lists"]]
    assert table["score"].iloc[0] > 0


def test_index_is_cached_until_a_label_changes(workspace):
    from app.data import save_label

    first = index_for(workspace)
    assert index_for(workspace) is first
    assert search(workspace, "wombat") == []
    tops = search_module._tops[workspace.resolve()][1]
    save_label(workspace, "synth-a", 12, "Wombat-shaped clauses")
    second = index_for(workspace)
    assert second is not first
    assert search_module._tops[workspace.resolve()][1] is tops  # the index scan is not redone
    hits = search(workspace, "wombat")
    assert [(h.sae, h.latent, h.label) for h in hits] == [
        ("synth-a", 12, "Wombat-shaped clauses")]


def _app(workspace: Path, monkeypatch):
    monkeypatch.setenv("SAEBENCH_WORKSPACE", str(workspace))
    at = streamlit_testing.AppTest.from_file(MAIN, default_timeout=30)
    at.run()
    at.switch_page("views/search.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_search_page_ranks_links_and_opens(workspace, monkeypatch):
    at = _app(workspace, monkeypatch)
    at.text_input(key="q_text").input("fruit").run()
    table = at.dataframe[0].value
    assert list(table.columns) == ["SAE", "latent", "score", "explanation", "label",
                                   "top tokens", "feature"]
    assert table[["SAE", "latent"]].values.tolist() == [["synth-a", 5]]  # this SAE only
    at.radio(key="q_scope").set_value("all SAEs").run()
    table = at.dataframe[0].value
    assert table[["SAE", "latent"]].values.tolist() == [["synth-b", 9], ["synth-a", 5]]
    assert table["feature"].tolist() == ["feature?sae=synth-b&latent=9",
                                         "feature?sae=synth-a&latent=5"]
    assert table["score"].is_monotonic_decreasing
    picker = next(s for s in at.selectbox if s.label == "Open in this tab")
    assert picker.value == "synth-b #9"  # new results start on the best hit
    at.text_input(key="q_text").input("apple").run()
    table = at.dataframe[0].value
    row = table[table["SAE"] == "synth-a"].iloc[0]
    assert row["latent"] == 3 and row["top tokens"].startswith("' apple'")
    next(s for s in at.selectbox if s.label == "Open in this tab").set_value("synth-a #3").run()
    at.button(key="q_open").click().run()
    assert not at.exception
    assert at.session_state["sae"] == "synth-a" and at.session_state["latent"] == 3
    assert any("Latent 3" in m.value for m in at.markdown)  # the feature page, on latent 3
