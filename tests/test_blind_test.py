"""The blind detection test: its contexts are the autointerp eval's, its truth is known on a
planted SAE (latent i fires exactly on token i), its page scores and records submissions."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_helpers import TINY_HOOK

from saebench.blind_scores import SCHEMA, compare, read_scores, record
from saebench.blind_test import DEFAULT_TOKENS, blind_set, eval_config, eval_store, open_sae
from saebench.evals.autointerp_config import AutointerpConfig
from saebench.evals.autointerp_data import latent_contexts, latent_grid, plan_tokens
from saebench.evals.autointerp_judge import (
    detection_accuracy,
    pattern_predictions,
    token_pattern,
)
from saebench.evals.runner import open_context, run_evals
from saebench.explanations import explanation
from store.activation_store import Chunk, StoreSpec, StoreWriter
from store.caching import chunk_stats
from store.catalog import query, refresh
from store.errors import UserError

streamlit_testing = pytest.importorskip("streamlit.testing.v1")
MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
WORDS = ["<unk>", "<s>", " the", " apple", " pear", " plum", " river", " walked", " slowly",
         ",", ".", " she", " house", " green", " old", " letter", " Mr", " Darcy", " said",
         " and", " of", " to", " a", " was"]
V, CTX, N_TRAIN, N_HELD = len(WORDS), 16, 8, 60
APPLE = WORDS.index(" apple")  # latent 3 fires on " apple"
CFG = AutointerpConfig(n_latents=V, seed=3, buffer=5)


def _store(path: Path) -> None:
    """A store whose vectors are one-hot tokens scaled by position (so top contexts differ)."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(2, V, (N_TRAIN + N_HELD, CTX), generator=g)
    tokens[:, 0] = 1  # BOS
    scale = 0.5 + torch.arange(CTX, dtype=torch.float32)[None, :, None] / CTX
    acts = torch.nn.functional.one_hot(tokens, V).float() * scale
    spec = StoreSpec(model="planted", hook=TINY_HOOK, dataset="planted", ctx=CTX,
                     n_tokens=N_TRAIN * (CTX - 1), n_heldout_tokens=N_HELD * (CTX - 1), seed=0,
                     dtype="float16", with_grads=False, chunk_seqs=N_HELD)
    writer = StoreWriter(path, spec, d_in=V, vocab=WORDS, extra_meta={"bos_token_id": 1})
    for index, (split, lo, hi) in enumerate((("train", 0, N_TRAIN),
                                             ("heldout", N_TRAIN, N_TRAIN + N_HELD))):
        chunk = Chunk(index, split, lo, tokens[lo:hi].numpy().astype(np.int32), acts[lo:hi])
        norm, total, n = chunk_stats(chunk.acts)
        writer.commit(chunk, (float(norm), total.numpy(), n))
    writer.finish()
    writer.close()


def _sae(folder: Path, store: str | None) -> None:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    eye = np.eye(V, dtype=np.float32)
    save_file({"W_enc": eye, "b_enc": np.zeros(V, np.float32), "W_dec": eye,
               "b_dec": np.zeros(V, np.float32)}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({
        "d_in": V, "d_sae": V, "architecture": "standard", "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "metadata": {"model_name": "planted", "hook_name": TINY_HOOK}}))
    if store:
        (folder / "saebench_train.json").write_text(json.dumps({"arch": "relu",
                                                                "store_path": store}))


def make_planted_workspace(root: Path) -> Path:
    """`planted` (an identity SAE on a one-hot store, autointerp-evaluated) and `nostore`."""
    root.mkdir(parents=True, exist_ok=True)
    _store(root / "planted.duckdb")
    _sae(root / "saes" / "planted", "planted.duckdb")
    _sae(root / "saes" / "nostore", None)
    ctx = open_context(root / "saes" / "planted", None, "cpu")
    run_evals(ctx, root / "saes" / "planted", ("autointerp",), {"autointerp": CFG},
              echo=lambda _: None)
    refresh(root)
    return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return make_planted_workspace(tmp_path_factory.mktemp("blind") / "ws")


def test_blind_set_is_what_the_evals_judge_saw_and_its_truth_is_the_planted_one(workspace):
    bs = blind_set(workspace, "planted", APPLE)
    assert bs.same_as_eval and bs.config == CFG
    assert Counter(c.kind for c in bs.contexts) == {"top": 2, "iw": 2, "random": 10}
    assert bs.texts[0] == [WORDS[t] for t in bs.contexts[0].tokens]
    # Planted truth: the latent fires exactly where its token is (BOS is never shown).
    assert bs.truth == [APPLE in c.tokens for c in bs.contexts]
    assert all(f for c, f in zip(bs.contexts, bs.truth, strict=True) if c.kind != "random")
    firing = {i for i, t in enumerate(bs.truth) if t}
    assert bs.score(firing) == 1.0
    assert bs.score(set()) == pytest.approx(1 - len(firing) / 14)
    assert bs.score(set(range(14)) - firing) == 0.0
    # The eval encodes all sampled latents at once; one latent alone gives the same contexts,
    # and the eval's token-pattern judge scored exactly these.
    ctx, cfg, _ = open_sae(workspace, "planted")
    latents = [1, APPLE, 7, 12]
    tokens, acts = latent_grid(ctx, cfg, latents, plan_tokens(ctx, cfg))
    lc = latent_contexts(APPLE, tokens, acts[..., 1], cfg)
    assert lc.score == bs.contexts
    judge = pattern_predictions(token_pattern(lc.explain, lc.threshold, cfg.pattern_tokens),
                                bs.contexts)
    expl = explanation(workspace, "planted", APPLE)
    assert "apple" in expl.text and expl.explainer == "token-pattern"
    assert detection_accuracy(judge, bs.truth) == expl.score


def test_config_without_an_eval_and_bad_input(workspace, tmp_path):
    cfg, same = eval_config(tmp_path)
    assert not same and cfg.n_tokens == DEFAULT_TOKENS and eval_store(tmp_path) is None
    assert eval_store(workspace / "saes" / "planted").resolve() == \
        (workspace / "planted.duckdb").resolve()  # the store the eval read
    with pytest.raises(UserError, match="out of range"):
        blind_set(workspace, "planted", V)
    with pytest.raises(UserError, match="does not say where its store is"):
        blind_set(workspace, "nostore", 2)
    with pytest.raises(UserError, match="no SAE 'missing'"):
        blind_set(workspace, "missing", 2)
    assert blind_set(workspace, "planted", 0) is None  # never fires: no contexts to hold out


def test_each_submission_is_its_own_atomic_file(tmp_path):
    row = {"sae": "s", "latent": 3, "shown": "explanation", "description": "apples",
           "explainer": "token-pattern", "score": 0.5, "auto_score": float("nan"),
           "n_contexts": 2, "n_firing": 1, "ticked": [1], "truth": [True, False],
           "kinds": ["top", "random"], "seed": 0, "n_tokens": None, "same_as_eval": True}
    first = record(tmp_path, row)
    record(tmp_path, {**row, "score": 1.0, "auto_score": 0.75, "ticked": [0]})
    record(tmp_path, {**row, "sae": "other"})
    assert first.parent.name == "blind_tests"
    assert sorted(p.suffix for p in first.parent.iterdir()) == [".parquet"] * 3  # no temp files
    rows = read_scores(tmp_path, "s")
    assert [r["score"] for r in rows] == [0.5, 1.0] and rows[0]["auto_score"] is None
    assert set(rows[0]) == set(SCHEMA.names)
    assert compare(tmp_path, "s") == [{
        "latent": 3, "shown": "explanation", "description": "apples", "human_score": 0.75,
        "attempts": 2, "first_score": 0.5, "auto_score": 0.75}]
    n = query(tmp_path, "SELECT count(*) AS n FROM blind_tests").to_pylist()[0]["n"]
    assert n == 3  # the catalog view sees every submission
    with pytest.raises(ValueError, match="lacks"):
        record(tmp_path, {"sae": "s"})


def _app(workspace: Path, monkeypatch, latent: int):
    monkeypatch.setenv("SAEBENCH_WORKSPACE", str(workspace))
    at = streamlit_testing.AppTest.from_file(MAIN, default_timeout=60)
    at.run()
    at.selectbox(key="sae").set_value("planted").run()
    at.session_state["latent"] = latent
    at.switch_page("views/blind_test.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _submit(at, ticked: set[int], latent: int):
    for i in range(14):
        at.checkbox(key=f"bt_planted_{latent}_{i}").set_value(i in ticked)
    next(b for b in at.button if b.label == "Score my answers").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return {m.label: m.value for m in at.metric}


def _html(at) -> str:
    return "".join(h.proto.body for h in at.get("html"))


def test_page_scores_right_answers_1_and_none_the_silent_share(workspace, monkeypatch):
    from app.data import save_label

    truth = blind_set(workspace, "planted", APPLE).truth
    at = _app(workspace, monkeypatch, APPLE)
    assert "tokens &#x27; apple&#x27;" in _html(at)  # the explanation is shown
    assert len(at.checkbox) == 14 and not at.metric  # no answers before submitting
    values = _submit(at, {i for i, t in enumerate(truth) if t}, APPLE)
    auto = explanation(workspace, "planted", APPLE).score
    assert values["Your score"] == "1.00" and values["Autointerp judge's score"] == f"{auto:.2f}"
    assert sum("green-badge[right]" in m.value for m in at.markdown) == 14
    at.button(key="bt_again").click().run()
    values = _submit(at, set(), APPLE)
    silent = 1 - sum(truth) / len(truth)
    assert values["Your score"] == f"{silent:.2f}" == values["Ticking none would score"]
    rows = read_scores(workspace, "planted")
    assert [r["score"] for r in rows] == [1.0, pytest.approx(silent)]
    assert rows[0]["truth"] == truth and rows[0]["same_as_eval"]
    assert at.dataframe[0].value["attempts"].tolist() == [2]  # people vs the judge
    save_label(workspace, "planted", APPLE, "fruit")  # a label is judged the same way
    at.run()
    at.radio(key="bt_shown").set_value("label").run()
    assert "fruit" in _html(at) and len(at.checkbox) == 14
    values = _submit(at, set(), APPLE)
    assert values["Autointerp judge's score"] == "n/a"
    last = read_scores(workspace, "planted")[-1]
    assert (last["shown"], last["description"], last["explainer"]) == ("label", "fruit", None)


def test_page_without_explanation_or_store_is_a_message(workspace, monkeypatch):
    from app.data import save_label

    at = _app(workspace, monkeypatch, 0)  # never fires, so never explained
    assert "no explanation and no label" in at.info[0].value
    save_label(workspace, "planted", 0, "nothing at all")
    at.run()
    assert "too few distinct" in at.info[0].value
    save_label(workspace, "nostore", 0, "pears")
    at.selectbox(key="sae").set_value("nostore").run()
    assert not at.exception and "does not say where its store is" in at.error[0].value
