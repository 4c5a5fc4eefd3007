"""A circuit's JSON, its catalog rows and the browser's Circuits page, on a workspace of tiny
random SAEs (one with a feature index and labels) where `saebench circuits` really runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_app import _index  # the synthetic feature index of the app tests
from test_circuits import HOOKS, _write_sae

from saebench.circuits import output
from saebench.circuits.plot import circuit_figure, clicked_node

streamlit_testing = pytest.importorskip("streamlit.testing.v1")
MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
NAME = "ioi-attrib"  # the default --out stem: <task>-<method>
PAGE = "views/circuits.py"


@pytest.fixture(scope="module")
def circuit(tmp_path_factory) -> tuple[Path, dict, str]:
    """(workspace, the written record, the CLI's stdout) of one `saebench circuits` run."""
    import contextlib
    import io

    import torch

    from app.data import save_label
    from saebench.cli import main as cli

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ws = tmp_path_factory.mktemp("cv") / "ws"
    folders = [_write_sae(ws / "saes" / f"sae{i}", h, seed=i) for i, h in enumerate(HOOKS)]
    _index(folders[1], "sae1", np.random.default_rng(0))
    for j in range(0, 64, 2):  # even latents of sae1 are labelled before the run
        save_label(ws, "sae1", j, f"even {j}")
    args = ["circuits", "--saes", *map(str, folders), "--n", "8", "--no-check-task",
            "--thresholds", "0.05", "0.01"]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert cli(args) == 0
    torch.set_num_threads(threads)
    return ws, json.loads((ws / "circuits" / f"{NAME}.json").read_text()), stdout.getvalue()


def _app(ws: Path, monkeypatch):
    monkeypatch.setenv("SAEBENCH_WORKSPACE", str(ws))
    at = streamlit_testing.AppTest.from_file(MAIN, default_timeout=30)
    at.run()
    at.switch_page(PAGE).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_cli_writes_json_and_catalog_into_the_saes_workspace(circuit):
    ws, rec, stdout = circuit
    for kind in ("sweep", "nodes", "edges"):
        assert (ws / "circuits" / f"{NAME}.{kind}.parquet").is_file()
    assert str(ws / "circuits" / f"{NAME}.json") in stdout and "circuit_nodes" in stdout
    assert rec["nodes"] and rec["edges"]  # the tiny model gives both at the default thresholds


def test_catalog_views_answer_sql(circuit):
    import saebench

    ws, rec, _ = circuit
    w = saebench.open_workspace(ws)
    assert {"circuit_sweeps", "circuit_nodes", "circuit_edges"} <= set(w.tables())
    count = lambda view: int(w.sql(  # noqa: E731
        f"SELECT count(*) AS n FROM {view} WHERE circuit = ?", [NAME])["n"][0])
    assert count("circuit_sweeps") == len(rec["faithfulness"]["sweep"]) == 2
    assert count("circuit_nodes") == len(rec["nodes"])
    assert count("circuit_edges") == len(rec["edges"])
    errors = w.sql("SELECT latent, pos FROM circuit_nodes WHERE is_error")
    assert len(errors) == sum(n["latent"] == "error" for n in rec["nodes"]) > 0
    assert (errors["latent"] == -1).all() and errors["pos"].isna().all()
    sweep = w.sql("SELECT * FROM circuit_sweeps ORDER BY n_nodes").to_dict("records")
    assert sweep[0]["nodes_for_80"] == pytest.approx(rec["summary"]["nodes_for_80"])
    assert list(sweep[0]["saes"]) == ["sae0", "sae1", "sae2"]
    assert list(sweep[0]["hooks"]) == list(HOOKS)


def test_nodes_carry_sae_names_labels_and_top_tokens(circuit):
    _, rec, _ = circuit
    sae_of = dict(zip(HOOKS, ("sae0", "sae1", "sae2"), strict=True))
    for n in rec["nodes"]:
        assert n["sae"] == sae_of[n["hook"]]
        indexed = n["sae"] == "sae1" and n["latent"] != "error"
        # _index: every latent promotes tok30..tok32, except latent 3 ("banana" first)
        top = ["banana" if n["latent"] == 3 else "tok30", "tok31", "tok32"]
        assert n["top_tokens"] == (top if indexed else None)
        even = indexed and n["latent"] % 2 == 0
        assert n["label"] == (f"even {n['latent']}" if even else None)
    assert any(n["sae"] == "sae1" and n["latent"] != "error" for n in rec["nodes"])
    hover = " ".join(circuit_figure(rec).data[-1].text)
    assert "promotes 'tok30'" in hover


def test_json_and_catalog_round_trip(circuit, tmp_path):
    from store.catalog import query

    ws, rec, _ = circuit
    output.write(tmp_path / "c.json", rec)
    assert json.loads((tmp_path / "c.json").read_text()) == rec
    rows = {v: query(ws, f"SELECT * FROM {v} WHERE circuit = ?", [NAME]).to_pylist()
            for v in ("circuit_sweeps", "circuit_nodes", "circuit_edges")}
    back = output.from_catalog(*rows.values())
    key = lambda n: (n["hook"], str(n["latent"]), n["pos"])  # noqa: E731
    assert sorted(back["nodes"], key=key) == sorted(rec["nodes"], key=key)
    edge = lambda e: (key(e["up"]), key(e["down"]), e["weight"])  # noqa: E731
    assert sorted(map(edge, back["edges"])) == sorted(map(edge, rec["edges"]))
    assert back["hooks"] == rec["hooks"] and back["saes"] == ["sae0", "sae1", "sae2"]


def test_page_shows_summary_charts_and_node_links(circuit, monkeypatch):
    from app.data import save_label

    ws, rec, _ = circuit
    latent = [n for n in rec["nodes"] if n["latent"] != "error"]
    first = max(latent, key=lambda n: abs(n["effect"]))
    save_label(ws, first["sae"], first["latent"], "relabelled")  # today's labels win
    at = _app(ws, monkeypatch)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Nodes for 80% faithfulness"] == f"{rec['summary']['nodes_for_80']:.0f}"
    assert metrics["Completeness"] == f"{rec['summary']['completeness']:.3f}"
    assert metrics["Nodes / edges"] == f"{len(rec['nodes'])} / {len(rec['edges'])}"
    assert len(at.get("plotly_chart")) == 2  # the faithfulness sweep and the graph
    links = [b for b in at.button if b.key and b.key.startswith("cn_")]
    assert len(links) == len(latent)  # one per latent node; error nodes have no page
    assert "relabelled" in links[0].label
    assert sum("error node" in m.value for m in at.markdown) == len(rec["nodes"]) - len(latent)
    assert links[0].label.startswith(f"{first['sae']} #{first['latent']} ")
    links[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert (at.session_state["sae"], at.session_state["latent"]) == (first["sae"],
                                                                     first["latent"])
    assert not any(b.key and b.key.startswith("cn_") for b in at.button)  # left the page


def test_graph_click_decodes_to_a_feature(circuit):
    _, rec, _ = circuit
    points = circuit_figure(rec).data[-1]
    picks = [clicked_node([{"customdata": list(cd)}]) for cd in points.customdata]
    for n, pick in zip(rec["nodes"], picks, strict=True):
        assert pick == (None if n["latent"] == "error" else (n["sae"], n["latent"]))
    assert clicked_node([]) is None and clicked_node([{"x": 0, "y": 1}]) is None  # an edge


def test_workspace_without_circuits_is_one_info_line(tmp_path, monkeypatch):
    _write_sae(tmp_path / "saes" / "lonely", HOOKS[0])
    at = _app(tmp_path, monkeypatch)
    assert len(at.info) == 1 and "No circuits" in at.info[0].value
    assert not at.get("plotly_chart")


def test_big_circuits_draw_their_largest_nodes_and_every_hook_tick(circuit):
    # Past max_nodes the graph keeps every error node and the largest latents by |effect|,
    # draws only edges between drawn nodes, and says so in its title.
    from saebench.circuits.plot import hook_tick, shown_nodes

    _, rec, _ = circuit
    n = len(rec["nodes"])
    errors = [x for x in rec["nodes"] if x["latent"] == "error"]
    cap = len(errors) + 3
    assert n > cap
    shown = shown_nodes(rec, cap)
    assert len(shown) == cap and all(e in shown for e in errors)
    latents = sorted((abs(x["effect"]) for x in rec["nodes"] if x["latent"] != "error"),
                     reverse=True)
    assert sorted((abs(x["effect"]) for x in shown if x["latent"] != "error"),
                  reverse=True) == latents[:3]
    fig = circuit_figure(rec, max_nodes=cap)
    assert len(fig.data[-1].x) == cap and f"of {n:,} nodes" in fig.layout.title.text
    assert len(circuit_figure(rec).data[-1].x) == n and "largest" not in (
        circuit_figure(rec).layout.title.text)
    # Every hook has its own two-line tick: plotly hides one-line labels that would overlap.
    assert list(fig.layout.xaxis.ticktext) == [hook_tick(h) for h in rec["hooks"]]
    assert hook_tick("blocks.6.hook_resid_post") == "blocks.6<br>hook_resid_post"
    assert hook_tick("blocks.2.attn.hook_z") == "blocks.2.attn<br>hook_z"
    assert hook_tick("hook_embed") == "hook_embed"
