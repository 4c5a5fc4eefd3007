"""Feature circuits (Marks et al. 2024) on a tiny random model with tiny random TopK SAEs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from saebench.circuits import output
from saebench.circuits.attribution import edge_effects, kept_nodes, node_effects
from saebench.circuits.faithfulness import (
    SweepRow,
    circuit_metric,
    evaluate,
    keep_of,
    nodes_for,
    random_kept,
)
from saebench.circuits.plot import circuit_figure
from saebench.circuits.saes import load_set
from saebench.circuits.splice import encode_split, leaf_hook, metric, record_hook
from saebench.cli import main as cli
from saebench.tasks import get_task
from store.errors import UserError
from store.models import load_model
from trainers.saelens_format import save_sae
from trainers.topk import TopKConfig, TopKSAE

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = "random:tiny"
HOOKS = ("blocks.0.hook_resid_mid", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post")
D_IN, D_SAE = 32, 64


def _write_sae(folder: Path, hook: str, *, model: str = MODEL, d_in: int = D_IN, seed: int = 0):
    sae = TopKSAE(d_in, TopKConfig(d_sae=D_SAE, k=8), generator=torch.Generator().manual_seed(seed))
    meta = {"model_name": model, "hook_name": hook}
    save_sae(folder, sae.export_saelens(1.0), d_in=d_in, d_sae=D_SAE, meta=meta, run={})
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("saes")
    return [_write_sae(root / f"sae{i}", h, seed=i) for i, h in enumerate(HOOKS)]


@pytest.fixture(scope="module")
def setup(folders):
    torch.manual_seed(0)
    model = load_model(MODEL)
    sset, model = load_set(folders[::-1], model)  # any order in, execution order out
    task = get_task("ioi")
    return model, sset, task, task.batch(model.tokenizer, 12, 0)


@pytest.fixture(scope="module")
def attr(setup):
    model, sset, task, batch = setup
    return node_effects(model, sset, task, batch, patch="corrupt", batch_size=5, progress=False)


def test_set_is_in_execution_order(setup):
    assert setup[1].hooks == list(HOOKS)


def test_splicing_with_error_terms_leaves_the_logits_unchanged(setup):
    model, sset, task, batch = setup
    rec: dict = {}
    hooks = [(h, leaf_hook(sae, rec, attached=True)) for h, sae in sset.items()]
    with torch.no_grad():
        clean = model(batch.clean)
        spliced = model.run_with_hooks(batch.clean, fwd_hooks=hooks)
    assert torch.equal(clean, spliced)
    assert set(rec) == set(HOOKS) and rec[HOOKS[0]]["c"].shape == (batch.clean.numel(), D_SAE)


def test_nodes_match_saelens_error_term_splice(setup, folders):
    # SAELens's own splice (use_error_term=True) gives the same latents and error nodes.
    from sae_lens import SAE

    model, sset, _, batch = setup
    _, cache = model.run_with_cache(batch.clean, names_filter=HOOKS[1])
    x = cache[HOOKS[1]].reshape(-1, D_IN)
    lens = SAE.load_from_disk(str(folders[1]))
    lens._use_error_term = True  # what HookedSAETransformer.add_sae(use_error_term=True) sets
    with torch.no_grad():
        out, theirs = lens.run_with_cache(x)
        codes, err = encode_split(sset.saes[1], x)
    assert torch.allclose(out, x, atol=1e-5)
    assert torch.allclose(theirs["hook_sae_acts_post"], codes, atol=1e-5)
    assert torch.allclose(theirs["hook_sae_error"], err, atol=1e-5)


def _exact_patch(setup, hook: str) -> float:
    """m(clean) − m(clean with every node at `hook` patched to its corrupt value)."""
    model, sset, task, batch = setup
    store: dict = {}

    def grab(x, hook):
        store["x"] = x.clone()
        return x

    with torch.no_grad():
        metric(model, task, batch, batch.corrupt, [(hook, grab)])
        patched = metric(model, task, batch, batch.clean, [(hook, lambda x, hook: store["x"])])
        clean = metric(model, task, batch, batch.clean, [])
    return (clean - patched).mean().item()


def _exact_mean_ablation(setup, hook: str) -> float:
    """m(clean) − m(clean with the activation at `hook` set to its clean mean per position)."""
    model, sset, task, batch = setup
    store: dict = {}

    def grab(x, hook):
        store["x"] = x.clone()
        return x

    with torch.no_grad():
        metric(model, task, batch, batch.clean, [(hook, grab)])
        keep = batch.mask.float()[..., None]
        mean = (store["x"] * keep).sum(0) / keep.sum(0)
        ablated = metric(model, task, batch, batch.clean,
                         [(hook, lambda x, hook: mean.expand_as(x).clone())])
        clean = metric(model, task, batch, batch.clean, [])
    return (clean - ablated).mean().item()


@pytest.mark.parametrize("patch", ["corrupt", "mean"])
def test_integrated_gradients_sum_to_exact_patching(setup, patch):
    model, sset, task, batch = setup
    ig = node_effects(model, sset, task, batch, method="ig", patch=patch, batch_size=12,
                      progress=False)
    exact = _exact_patch if patch == "corrupt" else _exact_mean_ablation
    for hook in HOOKS:  # IG's completeness axiom: the effects at a hook sum to the patch
        assert ig.effects[hook].sum().item() == pytest.approx(exact(setup, hook), rel=0.02)


def test_attribution_agrees_with_single_node_patching(setup, attr):
    model, sset, task, batch = setup
    hook, sae = sset.items()[-1]
    corrupt: dict = {}
    with torch.no_grad():
        metric(model, task, batch, batch.corrupt, [(hook, record_hook(sae, corrupt))])
        cc = corrupt[hook]["c"].view(*batch.clean.shape, -1)
        base = metric(model, task, batch, batch.clean, []).mean()
        for j in attr.effects[hook][:-1].abs().topk(2).indices.tolist():

            def patch(x, hook, j=j):
                c = sae.encode(x.reshape(-1, x.shape[-1])).view(*x.shape[:2], -1)
                return x + (cc[..., j : j + 1] - c[..., j : j + 1]) * sae.W_dec[j]

            exact = (base - metric(model, task, batch, batch.clean, [(hook, patch)]).mean())
            assert attr.effects[hook][j].item() == pytest.approx(exact.item(), rel=0.25)


def test_per_position_effects_sum_to_summed_effects(setup, attr):
    model, sset, task, batch = setup
    per = node_effects(model, sset, task, batch, patch="corrupt", per_position=True,
                       batch_size=5, progress=False)
    assert per.effects[HOOKS[0]].shape == (int(batch.pos.max()) + 1, D_SAE + 1)
    for h in HOOKS:
        assert torch.allclose(per.effects[h].sum(0), attr.effects[h], atol=1e-6)


def test_faithfulness_of_everything_is_one_and_of_nothing_zero(setup, attr):
    model, sset, task, batch = setup
    run = lambda keep: circuit_metric(model, sset, task, batch, attr, keep, 5)  # noqa: E731
    everything = {h: kept_nodes(attr.effects[h], -1.0) for h in HOOKS}
    nothing = {h: torch.zeros(0, 2, dtype=torch.long) for h in HOOKS}
    m_full, m_empty = run({h: None for h in HOOKS}), run(keep_of(attr, nothing))
    assert m_full != m_empty
    assert (run(keep_of(attr, everything)) - m_empty) / (m_full - m_empty) == 1.0
    assert (run(keep_of(attr, nothing)) - m_empty) / (m_full - m_empty) == 0.0
    # completeness of the empty circuit: ablating nothing leaves the full model
    assert (run(keep_of(attr, nothing, invert=True)) - m_empty) / (m_full - m_empty) == 1.0
    assert m_full == pytest.approx(attr.clean_metric.mean().item(), abs=1e-5)


def test_random_control_is_reproducible_and_matches_counts(attr):
    kept = {h: kept_nodes(attr.effects[h], 0.01) for h in HOOKS}
    a = random_kept(attr, kept, torch.Generator().manual_seed(3))
    b = random_kept(attr, kept, torch.Generator().manual_seed(3))
    c = random_kept(attr, kept, torch.Generator().manual_seed(4))
    assert all(torch.equal(a[h], b[h]) for h in HOOKS)
    assert any(not torch.equal(a[h], c[h]) for h in HOOKS)
    assert all(len(a[h]) == len(kept[h]) for h in HOOKS)


def test_nodes_for_80_interpolates():
    rows = [SweepRow(0.1, 10, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0),
            SweepRow(0.05, 30, 0.9, 0.1, 0.0, 0.0, 0.0, 0.0)]
    assert nodes_for(rows) == pytest.approx(25.0)
    assert nodes_for(rows[:1]) is None


def test_edges_only_between_kept_nodes_at_consecutive_hooks(setup, attr):
    model, sset, task, batch = setup
    edge_effects(model, sset, task, batch, attr, 0.02, batch_size=5, progress=False)
    assert set(attr.edges) == {(HOOKS[0], HOOKS[1]), (HOOKS[1], HOOKS[2])}
    faith = evaluate(model, sset, task, batch, attr, [0.05, 0.01], 0.02, batch_size=12,
                     progress=False)
    rec = output.record("ioi", sset, attr, faith, {"method": "attrib", "edge_threshold": 0.0})
    kept = {(n["hook"], n["latent"], n["pos"]) for n in rec["nodes"]}
    assert rec["edges"]
    for e in rec["edges"]:
        assert HOOKS.index(e["down"]["hook"]) == HOOKS.index(e["up"]["hook"]) + 1
        for end in (e["up"], e["down"]):
            assert (end["hook"], end["latent"], end["pos"]) in kept
    assert len(output.catalog_rows(rec)) == 2
    fig = circuit_figure(rec)
    points = fig.data[-1]
    assert len(points.x) == len(rec["nodes"]) and len(fig.data) <= 9
    assert tuple(points.customdata[0][:2]) == (str(sset.folders[0]), rec["nodes"][0]["latent"])


@pytest.mark.parametrize("patch", ["corrupt", "mean"])
def test_edges_of_all_nodes_sum_to_upstream_effects(setup, patch):
    # Σ_d ∇_d m·d = ∇_x m·(x − b_dec) at a residual hook, so with every node kept the edges
    # out of a hook sum to its attribution effects (a known-answer check of the VJPs).
    model, sset, task, batch = setup
    attr = node_effects(model, sset, task, batch, patch=patch, batch_size=12, progress=False)
    edge_effects(model, sset, task, batch, attr, -1.0, batch_size=12, progress=False)
    for (up, _), w in attr.edges.items():
        assert w.sum().item() == pytest.approx(attr.effects[up].sum().item(), rel=1e-4)


def test_set_validation(folders, tmp_path, setup):
    model = setup[0]
    other = _write_sae(tmp_path / "other", "blocks.1.hook_resid_mid", model="gpt2")
    cases = {
        "different models": [folders[0], other],
        "two SAEs at hook": [folders[0], folders[0]],
        "no hook": [_write_sae(tmp_path / "nohook", "blocks.9.hook_resid_post")],
        "does not match": [_write_sae(tmp_path / "wide", "blocks.1.hook_resid_mid", d_in=16)],
    }
    for words, fs in cases.items():
        with pytest.raises(UserError, match=words):
            load_set(fs, model)


def test_cli_writes_a_circuit_and_fails_in_one_line(folders, tmp_path, capsys, monkeypatch):
    out = tmp_path / "c.json"
    args = ["circuits", "--saes", *map(str, folders), "--n", "8", "--out", str(out)]
    assert cli([*args, "--no-check-task", "--thresholds", "0.05", "0.01"]) == 0
    rec = json.loads(out.read_text())
    assert rec["model"] == MODEL and rec["hooks"] == list(HOOKS) and len(rec["nodes"]) > 0
    assert {"nodes_for_80", "faithfulness", "completeness"} <= set(rec["summary"])
    out.unlink()
    other = _write_sae(tmp_path / "other", "blocks.1.hook_resid_mid", model="gpt2")
    monkeypatch.setattr("saebench.tasks.run.MIN_ACCURACY", 1.01)  # the model "fails" the task
    for bad in (["--task", "nope"], ["--saes", str(folders[0]), str(other)], []):
        capsys.readouterr()
        assert cli([*args, *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]  # after any progress bars
        assert err.startswith("saebench circuits: error:")
        assert not out.exists()


def test_corrupt_patch_gives_shared_context_exactly_zero_effect(setup):
    # Corrupt only each prompt's last token: every earlier position computes the same values on
    # both prompts, so patching to the corrupt value moves nothing there, while patching to
    # the clean mean does (the reason `--patch mean` is the default).
    from dataclasses import replace

    model, sset, task, batch = setup
    corrupt = batch.clean.clone()
    rows = torch.arange(len(batch))
    corrupt[rows, batch.pos] = (batch.clean[rows, batch.pos] + 1) % model.cfg.d_vocab
    batch = replace(batch, corrupt=corrupt)
    shared = int(batch.pos.min())
    kw = {"per_position": True, "batch_size": 12, "progress": False}
    by_corrupt = node_effects(model, sset, task, batch, patch="corrupt", **kw)
    by_mean = node_effects(model, sset, task, batch, patch="mean", **kw)
    for hook in HOOKS:
        assert by_corrupt.effects[hook][:shared].abs().max() == 0
    for hook in HOOKS[:-1]:  # the last layer's output at earlier positions reaches nothing
        assert (by_mean.effects[hook][1:shared].abs().sum(1) > 0).all()
