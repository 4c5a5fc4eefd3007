"""Training curves: every run has >= 100 points by default, and logging queues rows on the
device until a flush (no host sync per logged step)."""

from __future__ import annotations

from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import torch

from store.sources import InMemorySource
from trainers import curves
from trainers.config import TrainConfig
from trainers.dead import DeadLatents
from trainers.distributed import SINGLE
from trainers.loop import train_saes
from trainers.topk import TopKConfig

META = {"model": "synthetic", "hook": "blocks.0.hook_resid_post", "d_in": 16, "ctx": 16}
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("n_steps", [1, 2, 99, 122, 1000, 1001, 1999, 2500, 10_007, 123_456])
def test_default_cadence_gives_at_least_100_points(n_steps):
    every = curves.log_every(n_steps, None)
    logged = [s for s in range(1, n_steps + 1) if curves.is_logged(s, n_steps, every)]
    assert len(logged) >= min(n_steps, curves.MIN_POINTS)
    assert logged[-1] == n_steps  # the last step always closes the curve
    assert len(logged) <= max(n_steps // every, 1) + 1  # and the cadence is regular
    assert curves.log_every(n_steps, 7) == 7  # an explicit --log-every wins


def test_a_122_step_run_draws_122_points(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(122 * 64, 16, generator=g)
    train = TrainConfig(tokens=122 * 64, batch_size=64, warmup_steps=2, progress=False)
    (out,) = train_saes(InMemorySource(x.half()), [TopKConfig(d_sae=32, k=2)],
                        [tmp_path / "saes" / "short"], META, train)
    rows = pq.read_table(out / "curves.parquet").to_pylist()
    assert [r["step"] for r in rows] == list(range(1, 123))  # was 2 points at log_every 50
    assert all(r["l0"] == pytest.approx(2.0) for r in rows)  # each row is its own step
    assert rows[-1]["loss"] < rows[0]["loss"]


def test_logged_rows_stay_on_the_device_until_flushed():
    m = SimpleNamespace(name="m", sums={}, pending=[], rows=[],
                        dead=DeadLatents(4, window=10))
    for step in (1, 2, 3):
        m.sums = {"loss": torch.tensor(2.0 * step), "l0": torch.tensor(3.0 * step), "n": 2.0}
        curves.record([m], step, batch_size=8, lrs=[1e-3], t0=0.0, tokens_run=8 * step)
    assert m.rows == [] and len(m.pending) == 3
    assert all(isinstance(v, torch.Tensor) for p in m.pending for v in p[3])  # not read back
    assert curves.flush([m], SINGLE) and m.pending == []
    assert [r["loss"] for r in m.rows] == [1.0, 2.0, 3.0]  # sums / n, in step order
    assert [r["l0"] for r in m.rows] == [1.5, 3.0, 4.5]
    assert [r["tokens"] for r in m.rows] == [8, 16, 24] and m.rows[0]["dead_frac"] == 0.0
    assert not curves.flush([m], SINGLE)  # nothing pending: nothing to do
