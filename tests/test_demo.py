"""`saebench demo` on a tiny random model: two architectures end to end, resumable, planned."""

from __future__ import annotations

import json

import pytest

from saebench.cli import main
from saebench.commands.demo_plan import ROUND, choose_tokens, load_or_make

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--model", "random:tiny", "--hook", "blocks.0.hook_resid_post", "--width", "64",
        "--k", "4", "--ce-tokens", "256", "--explain-latents", "8", "--epochs", "1"]


def test_token_budget_is_rate_times_seconds_in_whole_chunks():
    assert choose_tokens(1000.0, 100.0, ROUND, 20 * ROUND) == 98_304  # 100k rounded down
    assert choose_tokens(10.0, 1.0, 3 * ROUND, 10 * ROUND) == 3 * ROUND  # the floor
    assert choose_tokens(1e6, 1e3, ROUND, 10 * ROUND) == 10 * ROUND  # the cap


def test_the_plan_is_kept_so_a_rerun_resumes_the_same_store(tmp_path, monkeypatch):
    import saebench.commands.demo_plan as plan_mod

    monkeypatch.setattr(plan_mod, "measure_rate", lambda model, hook: 2000.0)
    plan = load_or_make(tmp_path, "m", "h", None, 60.0, ROUND, 100 * ROUND)
    assert plan.tokens == 114_688 and plan.forward_tokens_per_s == 2000.0
    monkeypatch.setattr(plan_mod, "measure_rate", lambda model, hook: 10.0)  # a slower rerun
    assert load_or_make(tmp_path, "m", "h", None, 60.0, ROUND, 100 * ROUND) == plan
    assert json.loads((tmp_path / "demo_plan.json").read_text())["tokens"] == 114_688


def test_demo_trains_evaluates_explains_and_indexes_two_archs(tmp_path, capsys):
    ws = tmp_path / "ws"
    assert main(["demo", "--workspace", str(ws), "--tokens", "8192", *TINY]) == 0
    out = capsys.readouterr().out
    for arch in ("topk", "batchtopk"):
        sae = ws / "saes" / f"demo-{arch}"
        assert (sae / "evals" / "core.json").is_file()
        interp = json.loads((sae / "evals" / "autointerp.json").read_text())
        assert interp["metrics"]["lexical_detection_accuracy"] >= 0
        assert (sae / "index").is_dir()
        assert f"SAE demo-{arch}" in out
    assert "8,192 tokens given" in out
    graph = json.loads((ws / "graphs" / "demo.json").read_text())
    assert graph["nodes"] and graph["target"] == " Mary"
    # A rerun does nothing but summarise: every step finds its output.
    assert main(["demo", "--workspace", str(ws), "--tokens", "8192", *TINY]) == 0
    assert "time: eval          " in capsys.readouterr().out


def test_bad_sizes_are_one_line_errors(tmp_path, capsys):
    rc = main(["demo", "--workspace", str(tmp_path / "w"), "--min-tokens", "10",
               "--max-tokens", "5"])
    assert rc != 0 and not (tmp_path / "w").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "min_tokens <= max_tokens" in err[0]
