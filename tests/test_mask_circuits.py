"""Learned node masks for per-position circuits (saebench.circuits.mask) on the planted key
task of tests/planted_key.py: the gated forward is the reference ablation, and the λ path
finds the two-node circuit."""

from __future__ import annotations

import json

import pytest
import torch
from planted_key import HOOK, HOOKS, KEYS, PlantedKey, planted_case, write_sae

from saebench.circuits import mask as M
from saebench.circuits import positional as P
from saebench.circuits.gated_run import Runner
from saebench.circuits.saes import load_set
from saebench.cli import main as cli
from saebench.tasks import TASKS

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return planted_case(tmp_path_factory.mktemp("sparse"))


@pytest.mark.parametrize("kind", ["role", "summed"])
def test_mask_runner_is_the_hard_ablation(planted, tmp_path, kind):
    # The batched, right-padded gated forward from a cached prefix must give exactly the
    # reference ablation's metric for hard 0/1 gates. Hooks in block 1, so the prefix (block 0)
    # is really skipped, and two of them, so the second SAE sees the first one's ablation.
    model = planted[0]
    hooks = ("blocks.1.hook_resid_mid", "blocks.1.hook_resid_post")
    folders = [write_sae(tmp_path / f"s{i}", h, seed=i) for i, h in enumerate(hooks)]
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
    folders = [str(write_sae(tmp_path / "saes" / f"s{i}", h, seed=i))
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
