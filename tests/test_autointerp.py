"""Autointerp: the detection score, the token-pattern explainer and the OpenAI-compatible path,
on planted latents whose answers are known, against a local fake chat server."""

from __future__ import annotations

import json
import random
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pytest
import torch
from eval_helpers import TINY_HOOK, MemoryStore, ReluCoder

from saebench.evals import get_eval
from saebench.evals.autointerp import run
from saebench.evals.autointerp_api import ChatClient
from saebench.evals.autointerp_config import AutointerpConfig
from saebench.evals.autointerp_data import Context, latent_contexts, latent_grid
from saebench.evals.autointerp_judge import (
    EXPLAIN_SYSTEM,
    detection_accuracy,
    parse_predictions,
    pattern_predictions,
    token_pattern,
)
from saebench.evals.context import EvalContext
from saebench.evals.runner import run_evals
from store.catalog import query
from store.errors import UserError

VOCAB, CTX, N_SEQ = 24, 17, 120
SILENT = (0, 1)  # token 0 never occurs and 1 is BOS: latents 0 and 1 never fire


class VocabStore(MemoryStore):
    """A memory store with a vocab table, as real stores have."""

    def vocab(self):
        return pa.table({"token_id": list(range(VOCAB)), "token": [f"t{i}" for i in range(VOCAB)]})


def planted():
    """Latent i fires exactly on token i, with an activation that grows along the window."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(2, VOCAB, (N_SEQ, CTX), generator=g)
    tokens[:, 0] = 1
    scale = 0.5 + torch.arange(CTX, dtype=torch.float32)[None, :, None] / CTX
    x = (torch.nn.functional.one_hot(tokens, VOCAB).float() * scale)[:, 1:].reshape(-1, VOCAB)
    meta = {"model": "none", "hook": TINY_HOOK, "d_in": VOCAB, "ctx": CTX, "dtype": "float32"}
    sae = ReluCoder(torch.eye(VOCAB), torch.zeros(VOCAB), torch.eye(VOCAB), torch.zeros(VOCAB))
    return EvalContext(sae, {"hook_name": TINY_HOOK}, VocabStore(meta, x, tokens))


CFG = AutointerpConfig(n_latents=6, buffer=3, seed=1, retry_wait_s=0.01, timeout_s=5.0)


# ---- the detection score -----------------------------------------------------------------


def _contexts(n_pos: int, n_neg: int, marker: int, seed: int) -> tuple[list[Context], list[bool]]:
    """Windows of random tokens 2..9; positives hold `marker` once, where the latent fires."""
    rng = random.Random(seed)
    out, truth = [], []
    for i in range(n_pos + n_neg):
        toks = [rng.randrange(2, 10) for _ in range(7)]
        acts = [0.0] * 7
        if i < n_pos:
            at = rng.randrange(7)
            toks[at], acts[at] = marker, 1.0
        out.append(Context(tuple(toks), tuple(acts), "top" if i < n_pos else "random"))
        truth.append(i < n_pos)
    return out, truth


def test_detection_scores_perfect_explainer_1_and_random_judge_chance():
    explain, _ = _contexts(10, 0, marker=42, seed=0)
    pattern = token_pattern(explain, 0.0, n_tokens=3)
    assert [tok for _, tok in pattern.items] == [42]
    test, truth = _contexts(4, 10, marker=42, seed=1)
    assert detection_accuracy(pattern_predictions(pattern, test), truth) == 1.0
    # A judge that guesses scores 1/2 on average; one that names a wrong token scores the
    # share of silent contexts (10/14): the chance levels a real explanation must beat.
    rng = random.Random(2)
    guesses = [
        detection_accuracy({i for i in range(14) if rng.random() < 0.5}, truth)
        for _ in range(4000)
    ]
    assert sum(guesses) / len(guesses) == pytest.approx(0.5, abs=0.01)
    wrong = token_pattern(_contexts(10, 0, marker=43, seed=3)[0], 0.0, n_tokens=1)
    assert detection_accuracy(pattern_predictions(wrong, test), truth) == pytest.approx(10 / 14)


def test_parse_predictions():
    assert parse_predictions("2, 5 and 11.", 14) == {1, 4, 10}
    assert parse_predictions("None", 14) == set()
    assert parse_predictions("1, 99", 14) == {0}
    assert parse_predictions("I think 3", 14) is None


# ---- the offline explainer on planted latents --------------------------------------------


def test_token_pattern_recovers_the_planted_token_and_scores_1(tmp_path):
    ctx = planted()
    sae_dir = tmp_path / "runs" / "saes" / "planted"
    sae_dir.mkdir(parents=True)
    cfg = AutointerpConfig(n_latents=30, buffer=3, seed=1)
    get_eval("autointerp").load().check(ctx, cfg)
    result = run_evals(ctx, sae_dir, ("autointerp",), {"autointerp": cfg},
                       echo=lambda _: None)["autointerp"]
    m = result.metrics
    n_alive = VOCAB - len(SILENT)
    assert m["n_alive"] == n_alive == m["n_sampled"] == m["lexical_detection_accuracy_n"]
    assert m["lexical_detection_accuracy"] == 1.0 and m["n_skipped"] == 0
    assert 0.3 < m["all_silent_accuracy"] < 1.0  # random contexts do contain the token at times
    assert "autointerp_score" not in m  # never presented as LLM interpretability
    rows = query(tmp_path / "runs", "SELECT latent, explanation, explainer, score "
                 "FROM explanations WHERE sae = 'planted' ORDER BY latent").to_pylist()
    assert [r["latent"] for r in rows] == list(range(2, VOCAB))
    for r in rows:
        assert r["explanation"] == f"tokens 't{r['latent']}'" and r["explainer"] == "token-pattern"
        assert r["score"] == 1.0


def test_contexts_follow_the_protocol():
    ctx = planted()
    tokens, acts = latent_grid(ctx, CFG, [5], ctx.n_heldout)
    assert torch.equal(acts[..., 0] > 0, tokens == 5)
    lc = latent_contexts(5, tokens, acts[..., 0], CFG)
    kinds = [c.kind for c in lc.score]
    assert (kinds.count("top"), kinds.count("iw"), kinds.count("random")) == (2, 2, 10)
    assert kinds != sorted(kinds)  # shuffled
    assert [c.kind for c in lc.explain].count("top") == 10 and len(lc.explain) == 15
    weakest_top = min(max(c.acts) for c in lc.explain + lc.score if c.kind == "top")
    assert all(max(c.acts) < weakest_top for c in lc.explain + lc.score if c.kind == "iw")
    assert lc == latent_contexts(5, tokens, acts[..., 0], CFG)  # seeded


# ---- the OpenAI-compatible path against a local server -----------------------------------


class FakeChat(BaseHTTPRequestHandler):
    """Canned chat completions; `fail_first` requests get HTTP 500 first."""

    fail_first = 0
    seen: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((body, self.headers.get("Authorization")))
        if len(type(self).seen) <= type(self).fail_first:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b'{"error": "overloaded"}')
            return
        explain = body["messages"][0]["content"] == EXPLAIN_SYSTEM
        text = "This latent fires on the token t5." if explain else "1, 3"
        reply = {"choices": [{"message": {"role": "assistant", "content": text}}]}
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(reply).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    FakeChat.fail_first, FakeChat.seen = 0, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeChat)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def test_llm_path_scores_the_judges_answers(server, monkeypatch):
    from dataclasses import replace

    monkeypatch.setenv("FAKE_KEY", "sk-test")
    cfg = replace(CFG, n_latents=3, base_url=server, model="fake", api_key_env="FAKE_KEY")
    ctx = planted()
    result = run(ctx, cfg)
    latents = result.tables["explanations"]["latent"].tolist()
    tokens, acts = latent_grid(ctx, cfg, latents, ctx.n_heldout)
    expected = []
    for j, latent in enumerate(latents):  # the judge always answers "1, 3"
        lc = latent_contexts(latent, tokens, acts[..., j], cfg)
        expected.append(detection_accuracy({0, 2}, [c.fires(lc.threshold) for c in lc.score]))
    assert result.tables["explanations"]["score"].tolist() == expected
    assert result.metrics["autointerp_score"] == pytest.approx(sum(expected) / 3)
    assert set(result.tables["explanations"]["explanation"]) == {"the token t5"}
    assert set(result.tables["explanations"]["explainer"]) == {"llm:fake"}
    assert len(FakeChat.seen) == 6 and FakeChat.seen[0][0]["model"] == "fake"
    assert FakeChat.seen[0][1] == "Bearer sk-test"
    assert "<<t" in FakeChat.seen[0][0]["messages"][1]["content"]  # firing tokens marked


def test_transient_errors_are_retried(server):
    FakeChat.fail_first = 2
    client = ChatClient(server, "fake", retries=3, retry_wait_s=0.01)
    assert client.complete([{"role": "system", "content": "x"}], 5) == "1, 3"
    assert len(FakeChat.seen) == 3
    FakeChat.fail_first, FakeChat.seen = 10, []
    with pytest.raises(UserError, match="HTTP 500.*after 2 attempts"):
        ChatClient(server, "fake", retries=1, retry_wait_s=0.01).complete([], 5)


def test_unreachable_endpoint_is_a_one_line_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    client = ChatClient(f"http://127.0.0.1:{port}/v1", "fake", retries=1, retry_wait_s=0.01)
    with pytest.raises(UserError, match="cannot reach") as err:
        client.complete([], 5)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="base_url"):
        get_eval("autointerp").load().check(planted(), AutointerpConfig(base_url="localhost:1"))
