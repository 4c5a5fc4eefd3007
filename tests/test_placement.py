"""Sweep placement (`--devices`): members spread over devices train what they train on one.

CI has no GPU, so the test places a sweep on two CPU "devices" (the same device twice): the
placement code paths run (round-robin build, per-device batch copies, per-member autocast and
checkpoint map_location) and the weights must be bitwise those of the plain sweep."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from test_train_loop import META, sparse_data

from store.errors import UserError
from store.sources import InMemorySource
from trainers.batchtopk import BatchTopKConfig
from trainers.config import TrainConfig
from trainers.loop import train_saes
from trainers.topk import TopKConfig

CONFIGS = [TopKConfig(d_sae=64, k=3), BatchTopKConfig(d_sae=64, k=3), TopKConfig(d_sae=96, k=4)]


def _sweep(tmp_path, name: str, **train_kw):
    x, _ = sparse_data(2048, n_atoms=32)
    train = TrainConfig(tokens=12 * 128, batch_size=128, progress=False, warmup_steps=2,
                        **train_kw)
    return train_saes(InMemorySource(x), CONFIGS,
                      [tmp_path / name / f"m{i}" for i in range(len(CONFIGS))], META, train)


@pytest.mark.usefixtures("one_thread")
def test_devices_round_robin_trains_the_same_weights(tmp_path):
    plain = _sweep(tmp_path, "plain", device="cpu")
    spread = _sweep(tmp_path, "spread", devices=("cpu", "cpu:0"))
    for a, b in zip(plain, spread, strict=True):
        wa, wb = (load_file(f / "sae_weights.safetensors") for f in (a, b))
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_unavailable_device_is_a_one_line_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UserError, match="--device cuda:1: CUDA is not available"):
        _sweep(tmp_path, "x", devices=("cpu", "cuda:1"))
    assert not (tmp_path / "x").exists()
