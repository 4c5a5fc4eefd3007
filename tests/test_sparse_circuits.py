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

from saebench.circuits import positional as P
from saebench.circuits.attribution import node_effects
from saebench.circuits.faithfulness import evaluate
from saebench.circuits.positional_sweep import evaluate as evaluate_grouped
from saebench.circuits.saes import load_set
from saebench.cli import main as cli
from saebench.tasks import TASKS, get_task
from saebench.tasks.base import LogitDiffTask, TaskBatch, pad_pairs
from store.errors import UserError
from store.models import load_model
from trainers.saelens_format import save_sae
from trainers.topk import TopKConfig, TopKSAE

pytestmark = pytest.mark.usefixtures("one_thread")

HOOK = "blocks.0.hook_resid_pre"  # the token embedding: rotary models add no position here
HOOKS = ("blocks.0.hook_resid_mid", "blocks.0.hook_resid_post")
PER_TEMPLATE = 6
KEYS, CORRUPT_KEY = (300, 301), 302


def _write_sae(folder: Path, hook: str, seed: int) -> Path:
    """A random TopK SAE (d_in 32 of random:tiny, 64 latents, k 8) saved for `hook`."""
    sae = TopKSAE(32, TopKConfig(d_sae=64, k=8), generator=torch.Generator().manual_seed(seed))
    meta = {"model_name": "random:tiny", "hook_name": hook}
    save_sae(folder, sae.export_saelens(1.0), d_in=32, d_sae=64, meta=meta, run={})
    return folder


class PlantedKey(LogitDiffTask):
    """Two templates of fixed fillers (12 and 20 tokens) ending in a key token, 300 or 301;
    corrupt prompts end in 302. Within a template only the last position varies."""

    name = "planted_key"
    summary = "two templates whose prompts differ only in the last token"
    fillers = (tuple(range(11, 23)), tuple(range(31, 51)))

    def _pairs(self, t: int) -> tuple[list, list]:
        keys = [KEYS[i % 2] for i in range(PER_TEMPLATE)]
        clean = [[0, *self.fillers[t], k] for k in keys]
        return clean, [[*c[:-1], CORRUPT_KEY] for c in clean]

    def _batch(self, clean: list, corrupt: list) -> TaskBatch:
        n = len(clean)
        return pad_pairs(clean, corrupt, [100] * n, [200] * n, ("",) * n, pad=1)

    def batch(self, tokenizer, n: int, seed: int) -> TaskBatch:
        (c0, k0), (c1, k1) = self._pairs(0), self._pairs(1)
        return self._batch(c0 + c1, k0 + k1)

    def template_batches(self, tokenizer, n: int, seed: int) -> list:
        return [(self._batch(*self._pairs(t)),
                 ("BOS", *(f"t{t}w{i}" for i in range(len(f))), "end"))
                for t, f in enumerate(self.fillers)]


def _token_sae(folder: Path, model, vocab: list[int]) -> Path:
    """An exact SAE at the embedding: one latent per token of `vocab` (decoder row = its
    unit embedding), k = 1, so every node is a token identity and the error is ~0."""
    w = model.W_E[vocab].detach()
    w = w / w.norm(dim=1, keepdim=True)
    tensors = {"W_enc": w.t().contiguous(), "b_enc": torch.zeros(len(vocab)),
               "W_dec": w.contiguous(), "b_dec": torch.zeros(w.shape[1])}
    save_sae(folder, ("topk", {"k": 1, "rescale_acts_by_decoder_norm": False}, tensors),
             d_in=w.shape[1], d_sae=len(vocab), run={},
             meta={"model_name": "random:tiny", "hook_name": HOOK})
    return folder


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    torch.manual_seed(0)
    model = load_model("random:tiny")
    task = PlantedKey()
    vocab = [0, *task.fillers[0], *task.fillers[1], *KEYS, CORRUPT_KEY, *range(400, 420)]
    sae = _token_sae(tmp_path_factory.mktemp("sparse") / "sae", model, vocab)
    sset, model = load_set([sae], model)
    groups = P.template_groups(task, model.tokenizer, 2 * PER_TEMPLATE, 0)
    g = P.role_effects(model, sset, task, groups, progress=False)
    return model, sset, task, g, vocab


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
    folders = [str(_write_sae(ws / "saes" / f"s{i}", h, seed=i)) for i, h in enumerate(HOOKS)]
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
    folders = [_write_sae(tmp_path / f"s{i}", h, seed=i) for i, h in enumerate(HOOKS)]
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


# --- learned masks (saebench.circuits.mask) --------------------------------------------------


@pytest.mark.parametrize("kind", ["role", "summed"])
def test_mask_runner_is_the_hard_ablation(planted, tmp_path, kind):
    # The batched, right-padded gated forward from a cached prefix must give exactly the
    # reference ablation's metric for hard 0/1 gates. Hooks in block 1, so the prefix (block 0)
    # is really skipped, and two of them, so the second SAE sees the first one's ablation.
    from saebench.circuits import mask as M
    from saebench.circuits.gated_run import Runner

    model = planted[0]
    hooks = ("blocks.1.hook_resid_mid", "blocks.1.hook_resid_post")
    folders = [_write_sae(tmp_path / f"s{i}", h, seed=i) for i, h in enumerate(hooks)]
    sset, model = load_set(folders, model)
    task = PlantedKey()
    g = P.role_effects(model, sset, task, P.template_groups(task, None, 0, 0), progress=False)
    run = Runner(model, sset, task, g)
    rows = 1 if kind == "summed" else len(g.roles)
    ones = {h: torch.ones(rows, s.d_sae + 1) for h, s in sset.items()}
    full = P.grouped_metric(model, sset, task, g, None)
    assert run.gated(ones, kind).item() == pytest.approx(full, rel=1e-5)
    gen = torch.Generator().manual_seed(0)
    logits = {h: torch.randn(rows, s.d_sae + 1, generator=gen) for h, s in sset.items()}
    gates = {h: (t > 0).float() for h, t in logits.items()}
    ref = P.grouped_metric(model, sset, task, g, M.hard(logits, kind))
    assert ref != pytest.approx(full, rel=1e-3)  # the ablation does change the metric
    assert run.gated(gates, kind).item() == pytest.approx(ref, rel=1e-5, abs=1e-6)
    # Counterfactual ablation: with every gate closed the residual stream at the first hook
    # is the corrupt prompt's, so the metric is the corrupt prompts' metric.
    cf = Runner(model, sset, task, g, "corrupt")
    closed = {h: torch.zeros_like(v) for h, v in ones.items()}
    corrupt = sum(grp.weight * grp.attr.corrupt_metric.mean().item() for grp in g.groups)
    assert corrupt != pytest.approx(full, rel=1e-3)
    assert cf.gated(closed, kind).item() == pytest.approx(corrupt, rel=1e-5, abs=1e-6)
    assert cf.gated(ones, kind).item() == pytest.approx(full, rel=1e-5)


@pytest.mark.parametrize("batch_pairs", [None, 4])
def test_mask_finds_the_planted_two_node_circuit(planted, batch_pairs):
    # Known answer: only the key token at the end carries the behaviour, so the λ path must
    # close every other gate and keep exactly the two key latents at the end, faithfully;
    # also when each step sees only 4 of the 12 pairs.
    from saebench.circuits import mask as M

    model, sset, task, g, vocab = planted
    settings = M.MaskSettings(lambdas=(1e-4, 1e-3, 1e-2), steps=40, seed=0,
                              batch_pairs=batch_pairs)
    path = M.learn(model, sset, task, g, "role", settings, progress=False)
    sizes = [sum(len(k) for k in c.values()) for _, c in path.circuits]
    assert sizes == sorted(sizes, reverse=True)
    end = g.roles.index("end")
    last = path.circuits[-1][1][HOOK]
    assert sorted(last.tolist()) == [[end, vocab.index(k)] for k in KEYS]
    empty = P.grouped_metric(model, sset, task, g, {HOOK: torch.zeros(0, 2, dtype=torch.long)})
    full = P.grouped_metric(model, sset, task, g, None)
    faith = (P.grouped_metric(model, sset, task, g, path.circuits[-1][1]) - empty) / (full - empty)
    assert faith >= 0.8


def test_cli_mask_needs_templates_and_records_the_lambda_path(planted, tmp_path, capsys):
    folders = [str(_write_sae(tmp_path / "saes" / f"s{i}", h, seed=i))
               for i, h in enumerate(HOOKS)]
    base = ["circuits", "--saes", *folders, "--task", PlantedKey.name, "--no-check-task",
            "--method", "mask", "--mask-steps", "2", "--mask-batch", "8", "--no-edges"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(TASKS, PlantedKey.name, PlantedKey())
        assert cli(base) == 2
        assert "--by-template" in capsys.readouterr().err
        out = tmp_path / "m.json"
        assert cli([*base, "--by-template", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    sweep = rec["faithfulness"]["sweep"]
    assert rec["settings"]["method"] == "mask" and len(sweep) == len(rec["mask"]) == 12
    assert [r["threshold"] for r in sweep] == [m["lambda"] for m in rec["mask"]]
    assert rec["summary"]["n_nodes"] == len(rec["nodes"])
    assert rec["faithfulness"]["ablate"] == "mean"
    smallest = min(sweep, key=lambda r: r["n_nodes"])
    assert rec["summary"]["n_nodes"] >= smallest["n_nodes"]
