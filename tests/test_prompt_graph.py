"""Prompt graphs (saebench.circuits.prompt_graph) on the tiny random model: a planted latent
that alone carries the target logit, agreement with real zero-ablation, the edge identity, the
JSON and catalog rows, the CLI, the Python API and the browser page."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from eval_helpers import signed_basis_coder
from test_circuits import HOOKS, _write_sae

from saebench.circuits.attribution import node_effects
from saebench.circuits.graph_output import read_graph, saved_graphs, slug, write_graph
from saebench.circuits.plot import clicked_node
from saebench.circuits.prompt_graph import (
    PromptMetric,
    encode_prompt,
    prompt_graph,
    zero_effects,
)
from saebench.circuits.prompt_graph_config import GraphSettings
from saebench.circuits.prompt_plot import graph_figure
from saebench.circuits.saes import SAESet, load_set
from saebench.circuits.splice import ablate_hook, metric
from saebench.cli import main as cli
from store.errors import UserError
from store.models import load_model

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT, TARGET = "When Mary and John went to the store, John gave a drink to", " Mary"
LAST = "blocks.1.hook_resid_post"  # the tiny model's last residual: only ln_final after it
MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace of three random TopK SAEs at the tiny model's HOOKS (sae0, sae1, sae2)."""
    root = tmp_path_factory.mktemp("pg") / "ws"
    for i, hook in enumerate(HOOKS):
        _write_sae(root / "saes" / f"sae{i}", hook, seed=i)
    return root


@pytest.fixture(scope="module")
def setup(ws):
    model = load_model("random:tiny", "cpu")
    return model, load_set([ws / "saes" / f"sae{i}" for i in range(3)], model)[0]


@pytest.fixture(scope="module")
def full(setup) -> dict:
    """The graph with every nonzero node and every edge kept."""
    model, sset = setup
    return prompt_graph(model, sset, PROMPT, TARGET,
                        settings=GraphSettings(nodes=10**6, edges=10**7))


def _zero_ablated(model, sset, batch, hook: str, pos: int, j: int) -> float:
    """m(clean) − m(node j at `pos` of `hook` set to 0, every other node as it is)."""
    sae = dict(sset.items())[hook]
    s = batch.clean.shape[1]
    keep = torch.ones(s, sae.d_sae + 1, dtype=torch.bool)
    keep[pos, j] = False
    zero = {"c": torch.zeros(s, sae.d_sae), "e": torch.zeros(s, sae.d_in)}
    with torch.no_grad():
        m0 = metric(model, PromptMetric(), batch, batch.clean, [])
        m1 = metric(model, PromptMetric(), batch, batch.clean, [(hook, ablate_hook(sae, keep,
                                                                                    zero))])
    return (m0 - m1).item()


def test_planted_latent_alone_carries_the_target_logit(setup, tmp_path):
    # An SAE at the last residual whose latent 0 reads and writes the one direction the
    # target's unembedding sees (ln_final's weight ⊙ W_U[:, target]); the other latents span
    # its orthogonal complement, so zero-ablating latent 0 sends the logit to b_U exactly.
    model, _ = setup
    batch = encode_prompt(model.tokenizer, PROMPT, TARGET, None, True, model.cfg.n_ctx)
    seen = {}
    with torch.no_grad():
        model.run_with_hooks(batch.clean, fwd_hooks=[(LAST, lambda x, hook: seen.setdefault(
            "x", x[0, -1].clone()))])
    u = model.ln_final.w * model.W_U[:, batch.answer[0]]
    u = u / u.norm() * torch.sign(seen["x"] @ u)  # latent 0 fires (its code is x·u > 0)
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.cat([u[:, None], torch.randn(32, 31, generator=g)], 1))[0]
    basis *= torch.sign(basis[:, 0] @ u)
    sset = SAESet("random:tiny", [LAST], [tmp_path / "planted"], [signed_basis_coder(basis,
                                                                                   torch.zeros(32))])
    rec = prompt_graph(model, sset, PROMPT, TARGET, settings=GraphSettings(nodes=5))
    top = rec["nodes"][0]
    assert (top["latent"], top["pos"], top["token"]) == (0, len(rec["tokens"]) - 1, " to")
    exact = _zero_ablated(model, sset, batch, LAST, top["pos"], 0)
    assert exact == pytest.approx(rec["value"] - model.b_U[batch.answer[0]].item(), abs=1e-5)
    # Linearised through ln_final's rescaling: off by the latent's share of |x|², here ~6%.
    assert top["effect"] == pytest.approx(exact, rel=0.1)
    assert abs(top["effect"]) > 3 * abs(rec["nodes"][1]["effect"])
    assert top["activation"] == pytest.approx(abs(seen["x"] @ u).item(), rel=1e-4)


@pytest.mark.parametrize("contrast", [None, " John"])
def test_attribution_agrees_with_zero_ablation_for_top_latents(setup, contrast):
    model, sset = setup
    rec = prompt_graph(model, sset, PROMPT, TARGET, contrast, settings=GraphSettings(nodes=12))
    batch = encode_prompt(model.tokenizer, PROMPT, TARGET, contrast, True, model.cfg.n_ctx)
    # Latents only: an error node is a whole residual-sized vector, far outside the linear
    # regime of a zero-ablation (its sign can flip, as Marks et al. 2024 warn for large Δ).
    latents = [n for n in rec["nodes"] if n["latent"] != "error"][:5]
    assert len(latents) == 5
    exact = [_zero_ablated(model, sset, batch, n["hook"], n["pos"], n["latent"]) for n in latents]
    for n, e in zip(latents, exact, strict=True):
        assert n["effect"] * e > 0, (n["id"], n["effect"], e)  # the same sign
        assert 0.4 < n["effect"] / e < 2.5, (n["id"], n["effect"], e)  # the rough size
    approx = torch.tensor([n["effect"] for n in latents])
    assert torch.corrcoef(torch.stack([approx, torch.tensor(exact)]))[0, 1] > 0.8


def test_one_prompt_shortcut_equals_node_effects(setup):
    model, sset = setup
    batch = encode_prompt(model.tokenizer, PROMPT, TARGET, " John", True, model.cfg.n_ctx)
    ours = zero_effects(model, sset, PromptMetric(), batch)
    theirs = node_effects(model, sset, PromptMetric(), batch, patch="zero", per_position=True,
                          batch_size=1, progress=False)
    for h in HOOKS:
        assert torch.allclose(ours.effects[h], theirs.effects[h], atol=1e-5)
        assert torch.allclose(ours.means[h]["c"], theirs.means[h]["c"], atol=1e-5)
    assert ours.effects[HOOKS[0]].abs().sum() > 0


def test_edges_out_of_each_node_sum_to_its_effect(full, setup):
    # Chain rule: m depends on a node only through every node at the next hook (errors
    # included), so with nothing pruned its out-edges sum to its effect (a check of the VJPs).
    out = defaultdict(float)
    for e in full["edges"]:
        out[e["source"]] += e["weight"]
    hooks = setup[1].hooks
    for n in full["nodes"]:
        assert out[n["id"]] == pytest.approx(n["effect"], rel=1e-3, abs=1e-5), n["id"]
    by_id = {n["id"]: n for n in full["nodes"]}
    for e in full["edges"]:
        up = by_id[e["source"]]["hook"]
        down = by_id[e["target"]]["hook"] if e["target"] != "output" else "output"
        assert down == (hooks + ["output"])[hooks.index(up) + 1]
        if down == "output":
            assert e["weight"] == by_id[e["source"]]["effect"]


def test_budget_keeps_the_largest_nodes_and_never_bos(full, setup):
    model, sset = setup
    rec = prompt_graph(model, sset, PROMPT, TARGET, settings=GraphSettings(nodes=7, edges=5))
    assert [n["id"] for n in rec["nodes"]] == [n["id"] for n in full["nodes"][:7]]
    assert rec["bos"] and all(n["pos"] >= 1 for n in full["nodes"])
    # The top 7 skip the middle hook: edges then join the first and last hooks directly.
    assert {n["hook"] for n in rec["nodes"]} == {HOOKS[0], LAST}
    assert sum(e["target"] != "output" for e in rec["edges"]) == 5
    assert sum(e["target"] == "output" for e in rec["edges"]) == sum(
        n["hook"] == LAST for n in rec["nodes"])
    assert 0 < rec["kept_share"] < full["kept_share"] == pytest.approx(1.0)


def test_metrics_read_the_last_position(setup):
    model, sset = setup
    batch = encode_prompt(model.tokenizer, PROMPT, TARGET, " John", True, model.cfg.n_ctx)
    with torch.no_grad():
        last = model(batch.clean)[0, -1]
    target, john = batch.answer[0], batch.wrong[0]

    def value(contrast=None, **kw) -> dict:
        return prompt_graph(model, sset, PROMPT, TARGET, contrast,
                            settings=GraphSettings(nodes=3, **kw))

    assert value(" John")["value"] == pytest.approx((last[target] - last[john]).item(), abs=1e-4)
    assert value(metric="logprob")["value"] == pytest.approx(
        last.log_softmax(-1)[target].item(), abs=1e-4)
    assert value()["target_is_top"] == (last.argmax() == target).item()


def test_bad_prompts_and_targets_fail_in_one_line(setup):
    model, _ = setup
    cases = {"is 2 tokens": (PROMPT, " Mary Jane"), "is 0 tokens": (PROMPT, ""),
             "prompt is empty": ("  ", TARGET)}
    for words, (prompt, target) in cases.items():
        with pytest.raises(UserError, match=words) as err:
            encode_prompt(model.tokenizer, prompt, target, None, True, model.cfg.n_ctx)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="reads at most 8"):
        encode_prompt(model.tokenizer, PROMPT, TARGET, None, True, 8)


def test_json_and_catalog_round_trip(full, ws):
    import saebench

    path = write_graph(ws, full)
    assert path == ws / "graphs" / f"{slug(full)}.json" and slug(full) in saved_graphs(ws)
    assert json.loads(path.read_text()) == full == read_graph(ws, slug(full))
    w = saebench.open_workspace(ws)
    nodes = w.sql("SELECT * FROM graph_nodes WHERE graph = ?", [slug(full)])
    assert len(nodes) == len(full["nodes"]) and set(nodes["sae"]) == {"sae0", "sae1", "sae2"}
    assert (nodes["latent"][nodes["is_error"]] == -1).all()
    edges = w.sql("SELECT count(*) AS n FROM graph_edges WHERE graph = ?", [slug(full)])
    assert int(edges["n"][0]) == len(full["edges"])
    with pytest.raises(UserError, match="use letters"):
        write_graph(ws, full, name="../escape")


def test_figure_nodes_decode_to_feature_pages(full):
    fig = graph_figure(full)
    points = fig.data[-1]
    picks = [clicked_node([{"customdata": list(cd)}]) for cd in points.customdata]
    for n, pick, x in zip(full["nodes"], picks, points.x, strict=True):
        assert pick == (None if n["latent"] == "error" else (n["sae"], n["latent"]))
        assert abs(x - n["pos"]) < 0.5  # x is the token position
    assert clicked_node([{"customdata": list(fig.data[-2].customdata[0])}]) is None  # output


def test_cli_writes_the_graph_and_fails_in_one_line(ws, capsys):
    args = ["graph", "--saes", str(ws / "saes" / "sae0"), str(ws / "saes" / "sae2"),
            "--prompt", PROMPT, "--target", TARGET, "--nodes", "9", "--name", "cli-graph"]
    assert cli(args) == 0
    rec = read_graph(ws, "cli-graph")
    assert rec["hooks"] == [HOOKS[0], HOOKS[2]] and len(rec["nodes"]) == 9
    assert str(ws / "graphs" / "cli-graph.json") in capsys.readouterr().out
    for bad in (["--target", " Mary Jane"], ["--prompt", ""], ["--nodes", "0"]):
        assert cli([*args, *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("saebench graph: error:"), err


def test_workspace_api(ws):
    import saebench

    rec = saebench.open_workspace(ws).prompt_graph(["sae2"], PROMPT, TARGET, nodes=4)
    assert rec["hooks"] == [LAST] and len(rec["nodes"]) == 4
    assert {n["sae"] for n in rec["nodes"]} == {"sae2"}


def test_page_opens_a_saved_graph_and_computes_one(ws, monkeypatch):
    testing = pytest.importorskip("streamlit.testing.v1")
    monkeypatch.setenv("SAEBENCH_WORKSPACE", str(ws))
    at = testing.AppTest.from_file(MAIN, default_timeout=30)
    at.run()
    at.switch_page("views/prompt_graph.py").run()
    assert not at.exception, [e.value for e in at.exception]
    newest = saved_graphs(ws)[0]
    assert at.selectbox(key="pg_saved").value == newest  # the newest saved graph opens
    rec = read_graph(ws, newest)
    table = at.dataframe[0].value
    assert len(table) == len(rec["nodes"]) and len(at.get("plotly_chart")) == 1
    first = next(n for n in rec["nodes"] if n["latent"] != "error")
    assert f"feature?sae={first['sae']}&latent={first['latent']}" in set(table["feature"])
    at.selectbox(key="pg_saved").set_value("(compute a new graph)").run()
    at.multiselect(key="pg_saes").set_value(["sae1"]).run()
    at.text_input(key="pg_target").set_value(" Mary Jane").run()
    at.button(key="pg_go").click().run()
    assert len(at.error) == 1 and "is 2 tokens" in at.error[0].value
    at.text_input(key="pg_target").set_value(TARGET).run()
    at.button(key="pg_go").click().run()
    assert not at.exception and not at.error
    assert set(at.dataframe[0].value["sae"]) == {"sae1"} and len(at.get("plotly_chart")) == 1
