"""Per-position feature circuits over template groups (saebench.circuits.positional).

The planted case: two templates of different lengths whose prompts differ only in their last
token (the key), so within a template every earlier position is identical across prompts and
the behaviour lives at one position, the end. Grouped by template, per-position nodes find it
there; today's summed nodes, mean-ablated per absolute position over mixed templates, must
keep far more.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from planted_key import HOOK, HOOKS, KEYS, PER_TEMPLATE, PlantedKey, planted_case, write_sae

from saebench.circuits import positional as P
from saebench.circuits.attribution import node_effects
from saebench.circuits.faithfulness import evaluate
from saebench.circuits.positional_sweep import evaluate as evaluate_grouped
from saebench.circuits.saes import load_set
from saebench.cli import main as cli
from saebench.tasks import TASKS, get_task
from store.errors import UserError
from store.models import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return planted_case(tmp_path_factory.mktemp("sparse"))


def test_planted_effect_lives_at_the_end_position(planted):
    _, _, _, g, vocab = planted
    eff = g.effects[HOOK].abs()
    end = g.roles.index("end")
    # Every earlier position equals its template-group mean: its nodes have no effect at all.
    assert eff[end].max() > 0
    assert torch.cat([eff[:end], eff[end + 1 :]]).max() <= 1e-6 * eff[end].max()
    tiny = 1e-6 * eff[end].max().item()  # float rounding of a mean of equal values
    kept = P.kept(g, "role", tiny)[HOOK]
    assert sorted(kept.tolist()) == [[end, vocab.index(k)] for k in KEYS]


def test_per_position_circuit_is_far_smaller_than_summed_and_faithful(planted):
    model, sset, task, g, _ = planted
    kw = {"progress": False, "batch_size": 16}
    sweep = lambda top: [top * f for f in (0.5, 5e-2, 5e-3, 5e-4)]  # noqa: E731
    top = g.effects[HOOK].abs().max().item()
    pos = evaluate_grouped(model, sset, task, g, "role", sweep(top), 0.1, **kw)
    batch = task.batch(model.tokenizer, 2 * PER_TEMPLATE, 0)
    today = node_effects(model, sset, task, batch, **kw)
    summed = evaluate(model, sset, task, batch, today,
                      sweep(today.effects[HOOK].abs().max().item()), 0.1, **kw)
    n_pos = pos["nodes_for_80"]
    assert n_pos is not None and n_pos <= 2
    assert pos["at_80"]["faithfulness"] >= 0.8 and pos["at_80"]["n_nodes"] <= 2
    # Mean-ablating per absolute position across templates of different lengths mixes the
    # fillers of one template into the other: the summed circuit must keep them too.
    assert summed["nodes_for_80"] is None or summed["nodes_for_80"] >= 5 * n_pos
    small = min(summed["sweep"], key=lambda r: r["n_nodes"])
    assert small["n_nodes"] <= 2 * n_pos and small["faithfulness"] < 0.5


def test_random_and_summed_kinds_match_counts(planted):
    _, _, _, g, _ = planted
    k = P.kept(g, "summed", 0.0)
    assert (k[HOOK][:, 0] == -1).all()
    rand = P.random_like(g, k, "summed", torch.Generator().manual_seed(0))
    assert len(rand[HOOK]) == len(k[HOOK])
    roles = P.kept(g, "role", 1e-6 * g.effects[HOOK].abs().max().item())
    grp = g.groups[0]
    local = P.in_group(roles[HOOK], g.roles, grp)  # (end, j) -> that template's last position
    assert local[:, 0].unique().tolist() == [len(grp.roles) - 1]


def test_ioi_templates_align():
    model = load_model("random:tiny")
    groups = get_task("ioi").template_batches(model.tokenizer, 16, 0)
    assert len(groups) == 8
    for batch, roles in groups:
        assert int(batch.pos.min()) == int(batch.pos.max()) == len(roles) - 1
        assert roles[-1] == "end" and {"A", "B", "S2"} <= set(roles)
        assert (batch.clean != batch.corrupt).sum(1).eq(1).all()  # only S2 is corrupted
        assert (batch.clean[:, roles.index("S2")] != batch.corrupt[:, roles.index("S2")]).all()


def test_ioi_template_edit_changes_only_what_it_redraws():
    from saebench.tasks.ioi import template_groups

    tok = load_model("random:tiny").tokenizer
    base = template_groups(tok, 16, 0)
    same = template_groups(tok, 16, 0, lambda d: d)
    swap = template_groups(tok, 16, 0, lambda d: (d[1], d[0], d[2], d[3], d[4]))  # IO ↔ S
    for (b0, roles), (b1, _), (b2, _) in zip(base, same, swap, strict=True):
        assert torch.equal(b0.clean, b1.clean)
        assert torch.equal(b0.answer, b2.wrong) and torch.equal(b0.wrong, b2.answer)
        fixed = [i for i, r in enumerate(roles) if r not in ("A", "B", "S2")]
        assert torch.equal(b0.clean[:, fixed], b2.clean[:, fixed])


@pytest.fixture(scope="module")
def cli_run(planted, tmp_path_factory):
    """(workspace, record) of `saebench circuits --by-template --per-position` on the plant's
    task with random SAEs at two hooks (so there are edges)."""
    ws = tmp_path_factory.mktemp("cli")
    folders = [str(write_sae(ws / "saes" / f"s{i}", h, seed=i)) for i, h in enumerate(HOOKS)]
    out = ws / "c.json"
    args = ["circuits", "--saes", *folders, "--task", PlantedKey.name, "--no-check-task",
            "--by-template", "--per-position", "--thresholds", "0.05", "--edge-pairs", "4",
            "--node-threshold", "0", "--edge-threshold", "0", "--out", str(out)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(TASKS, PlantedKey.name, PlantedKey())
        assert cli(args) == 0
    return ws, json.loads(out.read_text())


def test_cli_writes_per_position_nodes_edges_and_roles(cli_run, capsys):
    ws, rec = cli_run
    assert rec["node_kind"] == "role" and rec["nodes"] and rec["edges"]
    assert all(n["role"] == rec["roles"][n["pos"]] for n in rec["nodes"])
    # Only the end varies within a template: every node and edge with an effect is there.
    assert {n["role"] for n in rec["nodes"] if abs(n["effect"]) > 1e-6} == {"end"}
    assert {e[s]["role"] for e in rec["edges"] for s in ("up", "down")
            if abs(e["weight"]) > 1e-6} == {"end"}
    sidecar = ws / "circuits" / "c.roles.json"  # beside the catalog rows
    assert json.loads(sidecar.read_text())["roles"] == rec["roles"]
    capsys.readouterr()
    assert cli(["circuits", "--saes", str(ws / "saes" / "s0"), "--task", "sva",
                "--by-template", "--no-check-task"]) == 2
    assert "no templates" in capsys.readouterr().err


def test_circuits_page_names_nodes_latent_at_role(cli_run, monkeypatch):
    from streamlit.testing.v1 import AppTest

    ws, rec = cli_run
    monkeypatch.setenv("SAEBENCH_WORKSPACE", str(ws))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app" / "main.py"),
                           default_timeout=60)
    at.run()
    at.switch_page("views/circuits.py").run()
    assert not at.exception, [e.value for e in at.exception]
    links = [b.label for b in at.button if b.key and b.key.startswith("cn_")]
    assert links and all("@" in lab for lab in links)
    top = max((n for n in rec["nodes"] if n["latent"] != "error"), key=lambda n: abs(n["effect"]))
    assert links[0].startswith(f"{top['sae']} #{top['latent']}@{top['role']} ")


def test_untemplated_task_is_a_user_error():
    with pytest.raises(UserError, match="no templates"):
        P.template_groups(get_task("sva"), None, 4, 0)


def test_out_of_group_roles_drop_out(planted):
    _, _, _, g, _ = planted
    k = torch.tensor([[g.roles.index("t1w0"), 3], [g.roles.index("end"), 5], [-1, 7]])
    local = P.in_group(k, g.roles, g.groups[0])  # template 0 has no role t1w0
    assert local.tolist() == [[len(g.groups[0].roles) - 1, 5], [-1, 7]]


class ShortKey(PlantedKey):
    """The plant with 2- and 3-token templates: few positions, so every edge is cheap."""

    fillers = ((11, 12), (31, 32, 33))


@pytest.mark.parametrize("kind", ["role", "summed"])
def test_edges_of_all_nodes_sum_to_upstream_effects(planted, tmp_path, kind):
    # Known answer (as in test_circuits): with every node kept, the edges out of a residual
    # hook sum to its attribution effects, here pooled over template groups by role.
    model = planted[0]
    folders = [write_sae(tmp_path / f"s{i}", h, seed=i) for i, h in enumerate(HOOKS)]
    sset, model = load_set(folders, model)
    task = ShortKey()
    g = P.role_effects(model, sset, task, P.template_groups(task, None, 0, 0), progress=False)
    attr = P.as_attribution(g, kind, list(sset.hooks))
    attr.kept = P.kept(g, kind, -1.0)
    P.role_edges(model, sset, task, g, attr, progress=False)
    w = attr.edges[(HOOKS[0], HOOKS[1])]
    assert w.shape == (len(attr.kept[HOOKS[1]]), len(attr.kept[HOOKS[0]]))
    assert w.sum().item() == pytest.approx(g.effects[HOOKS[0]].sum().item(), rel=1e-4)
    # Node by node too, which checks the pooling by role: Σ_d edge(u → d) = effect(u).
    k = attr.kept[HOOKS[0]]
    eff = attr.effects[HOOKS[0]]
    per_node = eff[k[:, 1]] if kind == "summed" else eff[k[:, 0], k[:, 1]]
    assert torch.allclose(w.sum(0), per_node, atol=1e-4 * per_node.abs().max().item())
