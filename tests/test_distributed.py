"""Data-parallel training (trainers/distributed.py): 2 gloo ranks on the CPU train what 1 rank
trains on the same global batch, and an interrupted 2-rank run resumes exactly.

The ranks are spawned with torch.multiprocessing and the environment torchrun would set
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so train_saes takes the torchrun path.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from store.errors import UserError
from store.sources import InMemorySource
from trainers import checkpoint
from trainers.batchtopk import BatchTopKConfig
from trainers.config import TrainConfig
from trainers.feature_choice import FeatureChoiceConfig
from trainers.gsae import GSAEConfig
from trainers.loop import train_saes
from trainers.mp import MPConfig
from trainers.mutual_choice import MutualChoiceConfig
from trainers.topk import TopKConfig

D_IN, D_SAE, K, BATCH, STEPS = 16, 128, 4, 128, 24
META = {"model": "synthetic", "hook": "blocks.0.hook_resid_post", "d_in": D_IN, "ctx": 16}
CONFIGS = {
    "topk": TopKConfig(d_sae=D_SAE, k=K),
    "batchtopk": BatchTopKConfig(d_sae=D_SAE, k=K),
    # dying_ratio 1: aux_zipf's dying latents (a per-latent top-n over the global batch) run
    "mutual_choice": MutualChoiceConfig(d_sae=D_SAE, k=K, dying_ratio=1.0),
    "mp": MPConfig(d_sae=D_SAE, k=K),
    # capacity 2: the global budget binds after the per-latent caps
    "feature_choice": FeatureChoiceConfig(d_sae=D_SAE, k=K, dying_ratio=1.0, capacity=2.0),
    "gsae": GSAEConfig(d_sae=D_SAE, k=K, effect_bf16=False),  # the global gradient scale
}
# A dead window of one step, so latents die (AuxK and the reduced counters matter).
# adam_eps 1e-6, not our 6.25e-10: with a tiny eps Adam's update g/(|g| + eps) is about
# sign(g), so a gradient element within rounding of 0 (one W_dec entry here) moves by up to
# lr·δg/eps when the summation order changes, 2.5e-4 for TopK after 24 steps (1e-7 for the
# others); with 1e-6 that amplification is gone and what remains is the reductions' rounding.
TRAIN = TrainConfig(tokens=STEPS * BATCH, batch_size=BATCH, warmup_steps=2, log_every=4,
                    checkpoint_every=1000, dead_window=BATCH, adam_eps=1e-6,
                    progress=False)
CUT = 9  # the interrupted run stops after this step
# fp32 on the CPU: reductions change the summation order, nothing else (see the report below).
ATOL = 1e-5


def source() -> InMemorySource:
    """Sparse-ish positive combinations of 48 atoms plus a mean, with random "gradients"."""
    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(48, D_IN, generator=g)
    codes = torch.rand(2048, 48, generator=g).pow(8)
    x = codes @ atoms + 2.0 * torch.randn(D_IN, generator=g)
    return InMemorySource(x, grads=1e-3 * torch.randn(x.shape, generator=g))


def folders(root: Path) -> list[Path]:
    return [root / name for name in CONFIGS]


def _rank(rank: int, port: int, jobs: list[tuple[str, int | None]]) -> None:
    """One rank: the environment torchrun sets, then train_saes for each (root, cut) job."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    for root, cut in jobs:

        def ctrl_c(step: int, cut: int | None = cut) -> None:
            if step == cut and rank == 1:  # one rank's Ctrl-C must stop both
                os.kill(os.getpid(), signal.SIGINT)

        try:
            train_saes(source(), list(CONFIGS.values()), folders(Path(root)),
                       META, TRAIN, on_step=ctrl_c)
        except KeyboardInterrupt:
            assert cut is not None


def two_ranks(jobs: list[tuple[Path, int | None]]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(port, [(str(r), c) for r, c in jobs]), nprocs=2, join=True)


def max_diff(a: Path, b: Path) -> float:
    wa, wb = load_file(a / "sae_weights.safetensors"), load_file(b / "sae_weights.safetensors")
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """One rank's run, two ranks' run, and an interrupted two-rank run resumed twice: by two
    ranks, and (a copy) by one rank."""
    root = tmp_path_factory.mktemp("dist")
    os.environ.pop("WORLD_SIZE", None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_saes(source(), list(CONFIGS.values()), folders(root / "one"),
                   META, TRAIN)
        two_ranks([(root / "two", None), (root / "cut", CUT)])
        shutil.copytree(root / "cut", root / "cut1")
        two_ranks([(root / "cut", None)])
        train_saes(source(), list(CONFIGS.values()), folders(root / "cut1"),
                   META, TRAIN)
    finally:
        torch.set_num_threads(threads)
    return root


@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_ranks_train_what_one_rank_trains(runs, name):
    diff = max_diff(runs / "one" / name, runs / "two" / name)
    print(f"{name}: 1 vs 2 ranks, max |Δweight| = {diff:.2e}")
    assert diff <= ATOL


@pytest.mark.parametrize("name", list(CONFIGS))
def test_interrupted_two_rank_run_resumes_exactly(runs, name):
    assert not (runs / "cut" / name / checkpoint.CKPT_DIR).exists()
    assert max_diff(runs / "two" / name, runs / "cut" / name) == 0.0  # same ranks: bitwise
    # Resumed by one rank: the data position is in global batches and every rank's state is
    # the same, so only the summation order differs from two ranks.
    assert max_diff(runs / "one" / name, runs / "cut1" / name) <= ATOL


def test_batch_size_must_divide_by_the_ranks(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    train = TrainConfig(tokens=4 * BATCH, batch_size=BATCH, progress=False)
    # The check runs before any process group is made, so this does not wait for rank 1.
    with pytest.raises(UserError, match="must divide by the number of ranks"):
        train_saes(source(), [CONFIGS["topk"]], [tmp_path / "x"], META, train)


@pytest.mark.parametrize("name", ["topk", "mutual_choice"])
def test_curves_agree_and_the_dead_latents_mattered(runs, name):
    one = pq.read_table(runs / "one" / name / "curves.parquet").to_pylist()
    two = pq.read_table(runs / "two" / name / "curves.parquet").to_pylist()
    aux = "auxk" if name == "topk" else "aux_zipf"
    assert any(r["dead_frac"] > 0 for r in one)  # AuxK and the reduced counters took part
    assert any(r[aux] == r[aux] for r in one)  # not NaN: the aux loss ran
    for a, b in zip(one, two, strict=True):  # logged values are the global batch's
        assert a["dead_frac"] == b["dead_frac"] and a["l0"] == pytest.approx(b["l0"])
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
