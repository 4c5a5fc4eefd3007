"""Head identification: scoring by hand, two planted circuits, discrete SAEs, the CLI."""

from __future__ import annotations

import os
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from saebench.circuits import planted_dup
from saebench.circuits.heads import rank_heads
from saebench.circuits.planted import (
    PlantedConfig,
    attention_roles,
    circuit_heads,
    patching_effects,
    planted_batch,
    train_planted,
)
from saebench.circuits.scoring import best_f1, roc_auc
from store.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_auc_and_f1_known_answers():
    truth = {"1.0", "1.1"}
    perfect = {"1.0": 0.9, "1.1": 0.8, "0.0": 0.1, "0.1": 0.2}
    assert roc_auc(perfect, truth) == 1.0
    assert best_f1(perfect, truth) == (1.0, 0.8)
    inverted = {h: -s for h, s in perfect.items()}
    assert roc_auc(inverted, truth) == 0.0
    ties = dict.fromkeys(perfect, 0.5)
    assert roc_auc(ties, truth) == 0.5
    assert best_f1(ties, truth)[0] == pytest.approx(2 * 2 / (2 * 2 + 2))  # all predicted
    # One circuit head at the top, one below a non-circuit head: 3 of 4 pairs ordered.
    mixed = {"1.0": 0.9, "0.0": 0.5, "1.1": 0.4, "0.1": 0.1}
    assert roc_auc(mixed, truth) == 0.75
    assert best_f1(mixed, truth)[0] == pytest.approx(max(2 / 3, 0.8))
    with pytest.raises(UserError):
        roc_auc(perfect, {"5.5"})


@pytest.fixture(scope="module")
def planted():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = PlantedConfig()
    model = train_planted(cfg)
    torch.set_num_threads(n)
    return cfg, model


def test_patching_finds_the_planted_circuit(planted):
    cfg, model = planted
    batch = planted_batch(cfg, 64, seed=1)
    effects = patching_effects(model, batch)
    truth = circuit_heads(effects)
    writers = {(layer, head) for layer, head in enumerate(cfg.writers)}
    assert truth == writers
    assert all(effects[h] > 0.5 for h in writers)
    # By construction: layer 0's writer attends to the previous token, layer 1's writer to the
    # token after the current token's earlier occurrence, each far more than any other head.
    roles = attention_roles(model, batch)
    prev_head, ind_head = (0, cfg.writers[0]), (1, cfg.writers[1])
    assert roles[prev_head][0] > 0.35
    assert roles[ind_head][1] > 0.6
    others = [h for h in roles if h not in writers]
    assert roles[prev_head][0] > 2 * max(roles[h][0] for h in others)
    assert roles[ind_head][1] > 3 * max(roles[h][1] for h in others)


def _sae_scores(planted, seed):
    cfg, model = planted
    batch = planted_batch(cfg, 10, seed=100 + seed)
    return rank_heads(model, batch.clean, batch.corrupt)


def test_discrete_sae_ranking_is_deterministic_and_scored(planted):
    cfg, _ = planted
    truth = {f"{layer}.{head}" for layer, head in enumerate(cfg.writers)}
    scores = _sae_scores(planted, 0)
    assert scores == _sae_scores(planted, 0)
    assert len(scores) == cfg.n_layers * cfg.n_heads
    assert list(scores.values()) == sorted(scores.values(), reverse=True)
    auc, (f1, _) = roc_auc(scores, truth), best_f1(scores, truth)
    print(f"discrete-SAE heads on the planted circuit: AUC {auc:.2f}, best F1 {f1:.2f}")
    assert 0.0 <= auc <= 1.0 and 0.0 < f1 <= 1.0


def test_discrete_sae_auc_on_planted_circuit(planted):
    """Discrete SAEs rank the induction plant's heads better than chance, not perfectly.

    The previous-token head behaves alike on clean and corrupt prompts, so codes unique to
    positives cannot single it out, and random distractors sometimes outrank it. Mean AUC over
    prompt seeds 0-2 measured 0.71 (AMD EPYC, no AVX-512), 0.83 (Intel Xeon with AVX-512; per
    seed 0.92, 0.63, 0.96) and >= 0.9 on a third machine: the planted model's training differs
    in the last bits between CPUs' kernels, and the ranking amplifies that. So this asserts the
    bound that holds on all three, better than chance (0.6), not the 0.9 of the gated plant
    below, which reaches 1.0 on every machine. (It was an xfail at 0.9: it passed on one CPU.)
    """
    cfg, _ = planted
    truth = {f"{layer}.{head}" for layer, head in enumerate(cfg.writers)}
    aucs = [roc_auc(_sae_scores(planted, seed), truth) for seed in range(3)]
    print(f"discrete-SAE heads on the induction plant: AUC per seed {aucs}")
    assert sum(aucs) / len(aucs) >= 0.6


@pytest.fixture(scope="module")
def dup_plant():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = planted_dup.DupConfig()
    model = planted_dup.train_dup(cfg)
    torch.set_num_threads(n)
    return cfg, model


def test_patching_finds_the_gated_circuit(dup_plant):
    cfg, model = dup_plant
    batch = planted_dup.dup_batch(cfg, 64, seed=1)
    # The task is learned: YES on every clean prompt's repeats, NO on every corrupt prompt.
    assert (planted_dup.dup_metric(model(batch.clean), batch) > 0).all()
    assert (planted_dup.dup_metric(model(batch.corrupt), batch) < 0).all()
    effects = planted_dup.patching_effects(model, batch)
    writers = {(layer, head) for layer, head in enumerate(cfg.writers)}
    assert planted_dup.circuit_heads(effects) == writers
    assert all(effects[h] > 0.9 for h in writers)
    assert all(abs(effects[h]) < 1e-6 for h in effects if h not in writers)
    # By construction: the duplicate-token head attends from a repeat to its first occurrence,
    # the previous-token head from p to p-1; no other head does either.
    roles = planted_dup.attention_roles(model, batch)
    dup_head, prev_head = (0, cfg.writers[0]), (1, cfg.writers[1])
    assert roles[dup_head][0] > 0.99 and roles[prev_head][1] > 0.99
    assert all(max(roles[h]) < 0.3 for h in roles if h not in writers)


def test_discrete_sae_auc_on_gated_circuit(dup_plant):
    cfg, model = dup_plant
    truth = {f"{layer}.{head}" for layer, head in enumerate(cfg.writers)}
    aucs, f1s = [], []
    for seed in range(3):  # 10 prompts of each kind, as in O'Neill & Bui 2024 (5-10)
        batch = planted_dup.dup_batch(cfg, 10, seed=100 + seed)
        scores = rank_heads(model, batch.clean, batch.corrupt)
        aucs.append(roc_auc(scores, truth))
        f1s.append(best_f1(scores, truth)[0])
    print(f"discrete-SAE heads on the gated plant: AUC {aucs}, best F1 {f1s}")
    assert sum(aucs) / len(aucs) >= 0.9
    assert sum(f1s) / len(f1s) >= 0.9


class _FakeTask:
    name = "fake"
    summary = "repeat a random segment (test only)"

    def batch(self, tokenizer, n, seed):
        g = torch.Generator().manual_seed(seed)
        a, b = torch.randint(100, 200, (2, n, 5), generator=g)
        bos = torch.full((n, 1), tokenizer.bos_token_id or 0)
        clean, corrupt = torch.cat([bos, a, a], 1), torch.cat([bos, b, a], 1)
        pos = torch.full((n,), clean.shape[1] - 1)
        return SimpleNamespace(
            clean=clean, corrupt=corrupt, pos=pos, answer=a[:, 0], wrong=-torch.ones(n),
            prompts=("",) * n,
        )

    def metric(self, logits, batch):
        return logits[torch.arange(len(batch.pos)), batch.pos, batch.answer]


@pytest.fixture
def fake_tasks(monkeypatch):
    def get_task(name):
        if name != "fake":
            raise UserError(f"unknown task '{name}'; choose from fake")
        return _FakeTask()

    module = types.ModuleType("saebench.tasks")
    module.TASKS, module.get_task = {"fake": _FakeTask()}, get_task
    monkeypatch.setitem(sys.modules, "saebench.tasks", module)


def test_cli_ranks_heads(fake_tasks, capsys):
    from saebench.cli import main

    assert main(["heads", "--task", "fake", "--model", "random:tiny", "--n", "6"]) == 0
    out = capsys.readouterr().out
    assert "top 8 of 8 heads" in out
    lines = out.splitlines()
    ranked = [line.split() for line in lines[lines.index("head     score") + 1 :]]
    assert len(ranked) == 8 and all(len(row) == 2 and "." in row[0] for row in ranked)


def test_cli_unknown_task_exits_2(fake_tasks, capsys):
    from saebench.cli import main

    assert main(["heads", "--task", "nope", "--model", "random:tiny"]) == 2
    assert "unknown task" in capsys.readouterr().err


# Wang et al. 2022, Fig. 2: name movers, negative name movers, S-inhibition, induction,
# duplicate-token and previous-token heads of GPT-2 small's IOI circuit.
IOI_GPT2 = {
    "9.6", "9.9", "10.0", "10.7", "11.10", "7.3", "7.9", "8.6", "8.10", "5.5", "6.9", "5.8",
    "5.9", "0.1", "3.0", "0.10", "2.2", "4.11", "10.1", "10.2", "10.6", "10.10", "11.2", "9.7",
    "9.0", "11.9",
}


def test_gpt2_ioi_heads_when_online(monkeypatch):
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        pytest.skip("HF_HUB_OFFLINE=1")
    tasks = pytest.importorskip("saebench.tasks", reason="saebench.tasks is not available")
    try:
        from huggingface_hub import constants
        from transformer_lens import HookedTransformer

        # Never hang on a download: only weights already in the local cache are used.
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        model = HookedTransformer.from_pretrained("gpt2", device="cpu")
    except Exception as err:  # no cached weights, no network
        pytest.skip(f"gpt2 cannot be loaded offline: {type(err).__name__}")
    batch = tasks.get_task("ioi").batch(model.tokenizer, 10, 0)
    scores = rank_heads(model, batch.clean, batch.corrupt, last=batch.pos)
    print(f"GPT-2 IOI: AUC {roc_auc(scores, IOI_GPT2):.2f}")
    assert roc_auc(scores, IOI_GPT2) > 0.5
