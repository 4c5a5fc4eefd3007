"""Feature circuits collapsed to heads, scored against both planted circuits (ground truth by
exact patching: saebench/circuits/planted.py and planted_dup.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from saebench.circuits import planted, planted_dup
from saebench.circuits.attribution import kept_nodes, node_effects
from saebench.circuits.collapse import collapse, head_effects
from saebench.circuits.heads import DiscreteSAEConfig, train_codebook
from saebench.circuits.planted import PlantedConfig, circuit_heads, planted_batch, train_planted
from saebench.circuits.planted_dup import DupConfig, dup_batch, train_dup
from saebench.circuits.saes import SAESet
from saebench.circuits.scoring import best_f1, roc_auc
from saebench.tasks import TaskBatch
from store.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


def _as_task_batch(b, pos: int, answer: torch.Tensor) -> TaskBatch:
    n = len(b.clean)
    return TaskBatch(clean=b.clean, corrupt=b.corrupt, pos=torch.full((n,), pos), answer=answer,
                     wrong=-torch.ones(n, dtype=torch.long), prompts=("",) * n)


class InductionAt:
    """Induction prompts as a task: log-probability of the last induced token at position
    2L−1, which only the previous-token → induction composition can retrieve."""

    def __init__(self, cfg: PlantedConfig) -> None:
        self.cfg = cfg

    def pairs(self, n: int, seed: int, length: int = 5):
        return planted_batch(self.cfg, n, seed, length)

    def batch(self, n: int, seed: int) -> TaskBatch:
        b = self.pairs(n, seed)
        last = 2 * b.length - 1
        return _as_task_batch(b, last, b.clean[:, last + 1])

    def metric(self, logits, batch):
        logp = logits[torch.arange(len(batch)), batch.pos].log_softmax(-1)
        return logp.gather(-1, batch.answer[:, None]).squeeze(-1)

    def correct(self, logits, batch):
        return logits[torch.arange(len(batch)), batch.pos].argmax(-1) == batch.answer


class SeenBefore:
    """Duplicate-token prompts as a task: the YES−NO logit at the last position, which asks
    about a repeated token on clean prompts and a fresh one on corrupt prompts."""

    def __init__(self, cfg: DupConfig) -> None:
        self.cfg = cfg

    def pairs(self, n: int, seed: int, length: int = 5):
        return dup_batch(self.cfg, n, seed, length)

    def batch(self, n: int, seed: int) -> TaskBatch:
        b = self.pairs(n, seed)
        return _as_task_batch(b, 2 * b.length, torch.full((n,), self.cfg.yes))

    def metric(self, logits, batch):
        at = logits[torch.arange(len(batch)), batch.pos]
        return at[:, self.cfg.yes] - at[:, self.cfg.no]

    def correct(self, logits, batch):
        return self.metric(logits, batch) > 0


PLANTS = {
    "induction": (PlantedConfig(), train_planted, InductionAt, planted.patching_effects),
    "duplicate": (DupConfig(), train_dup, SeenBefore, planted_dup.patching_effects),
}


@pytest.fixture(scope="module", params=list(PLANTS))
def plant(request):
    """(writers, model, task, SAEs at every layer's hook_z, ground-truth circuit heads)."""
    torch.set_num_threads(1)
    cfg, train, task_of, patching = PLANTS[request.param]
    model, task = train(cfg), task_of(cfg)
    hooks = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    acts: dict[str, list] = {h: [] for h in hooks}
    for length in range(3, 7):  # clean and corrupt prompts of every segment length
        pairs = task.pairs(48, seed=100 + length, length=length)
        for tokens in (pairs.clean, pairs.corrupt):
            _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in hooks)
            for h in hooks:
                acts[h].append(cache[h].flatten(2).flatten(0, 1))  # head-major, as splice
    sae_cfg = DiscreteSAEConfig(d_sae=64, k=4, steps=200, lr=3e-3)
    saes = [train_codebook(torch.cat(acts[h]), sae_cfg) for h in hooks]
    sset = SAESet("planted", hooks, [Path(h) for h in hooks], saes)
    truth = {f"{a}.{b}" for a, b in circuit_heads(patching(model, task.pairs(64, seed=1)))}
    return cfg.writers, model, task, sset, truth


@pytest.mark.parametrize("patch", ["corrupt", "mean"])
def test_head_parts_sum_to_node_effects(plant, patch):
    writers, model, sset, task = plant[0], plant[1], plant[3], plant[2]
    batch = task.batch(32, seed=3)
    by_head = head_effects(model, sset, task, batch, patch=patch, batch_size=16)
    attr = node_effects(model, sset, task, batch, patch=patch, batch_size=16, progress=False)
    for hook in sset.hooks:
        assert torch.allclose(by_head[hook].sum(1), attr.effects[hook], atol=1e-5, rtol=1e-4)
    # Heads that never write (W_O = 0 by construction) receive exactly nothing.
    silent = [h for h in range(model.cfg.n_heads) if h != writers[0]]
    assert by_head[sset.hooks[0]][:, silent].abs().max() == 0
    assert by_head[sset.hooks[0]][:, writers[0]].abs().max() > 0


def test_collapsed_circuit_finds_the_planted_heads(plant):
    writers, model, task, sset, truth = plant
    assert truth == {f"{layer}.{head}" for layer, head in enumerate(writers)}
    batch = task.batch(64, seed=7)
    attr = node_effects(model, sset, task, batch, progress=False)
    assert attr.accuracy > 0.9
    top = max(e.abs().max().item() for e in attr.effects.values())
    kept = {h: kept_nodes(attr.effects[h], 0.05 * top) for h in sset.hooks}
    assert 0 < sum(len(k) for k in kept.values()) < sum(s.d_sae for s in sset.saes)
    scores = collapse(head_effects(model, sset, task, batch), sset, kept)
    auc, (f1, _) = roc_auc(scores, truth), best_f1(scores, truth)
    print(f"collapsed feature circuit: AUC {auc:.2f}, best F1 {f1:.2f}")
    assert auc >= 0.9 and f1 == 1.0


def test_collapse_needs_per_head_hooks(plant):
    sset = plant[3]
    resid = SAESet("planted", ["blocks.0.hook_resid_post"], [Path("x")], sset.saes[:1])
    with pytest.raises(UserError, match="attn.hook_z"):
        collapse({"blocks.0.hook_resid_post": torch.zeros(3, 4)}, resid)


def test_cli_ranks_heads_for_attention_saes(tmp_path, capsys):
    from saebench.cli import main
    from trainers.saelens_format import save_sae
    from trainers.topk import TopKConfig, TopKSAE

    folders = []
    for layer in range(2):  # random:tiny: 2 layers of 4 heads, d_head 8
        sae = TopKSAE(32, TopKConfig(d_sae=64, k=8), generator=torch.Generator().manual_seed(layer))
        folder = tmp_path / "saes" / f"z{layer}"
        meta = {"model_name": "random:tiny", "hook_name": f"blocks.{layer}.attn.hook_z"}
        save_sae(folder, sae.export_saelens(1.0), d_in=32, d_sae=64, meta=meta, run={})
        folders.append(str(folder))
    out = tmp_path / "c.json"
    assert main(["circuits", "--saes", *folders, "--n", "8", "--no-check-task",
                 "--thresholds", "0.01", "--out", str(out)]) == 0
    import json

    heads = json.loads(out.read_text())["heads"]
    assert len(heads) == 8 and list(heads.values()) == sorted(heads.values(), reverse=True)
    assert "heads by the circuit's effect" in capsys.readouterr().out
