"""The training loop: known-answer synthetic data, exact resume, sweeps, outputs, bad input."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import tyro
from safetensors.torch import load_file

from saebench.commands.train import Args, main, plan, run
from store.catalog import query
from store.errors import UserError
from store.sources import InMemorySource
from trainers import checkpoint
from trainers.config import TrainConfig
from trainers.dead import DeadLatents, fires
from trainers.loop import geometric_median, train_saes
from trainers.saelens_format import load_sae, read_meta
from trainers.schedule import default_lr, lr_factor, warmup_steps
from trainers.topk import TopKConfig

META = {"model": "synthetic", "hook": "blocks.0.hook_resid_post", "d_in": 32, "ctx": 16}


pytestmark = pytest.mark.usefixtures("one_thread")


def sparse_data(n: int, d_in=32, n_atoms=64, k=3, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows that are exactly k-sparse, positive combinations of a random unit dictionary."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d_in, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    offset = 3.0 * torch.randn(d_in, generator=g)  # a large mean, as residual streams have
    idx = torch.rand(n, n_atoms, generator=g).topk(k, dim=1).indices
    coef = torch.rand(n, k, generator=g) + 0.5
    return torch.zeros(n, n_atoms).scatter_(1, idx, coef) @ atoms + offset, atoms


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return float((x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def test_topk_recovers_a_k_sparse_dictionary(tmp_path):
    x, atoms = sparse_data(32768)
    train = TrainConfig(tokens=200_000, batch_size=256, progress=False)
    (out,) = train_saes(InMemorySource(x.half()), [TopKConfig(d_sae=128, k=3)],
                        [tmp_path / "saes" / "syn"], META, train)
    sae = load_sae(out)
    held, _ = sparse_data(36864)
    held = held[-4096:]  # same dictionary and mean, rows not trained on
    with torch.no_grad():
        assert fvu(held, sae(held)) < 0.08  # measured 0.046; the mean alone gives 1.0
        best_cos = (sae.W_dec @ atoms.T).max(dim=0).values
    assert (best_cos > 0.95).float().mean() >= 0.95  # measured: every atom, median cos 0.999
    curves = pq.read_table(out / "curves.parquet").to_pylist()
    assert {r["sae"] for r in curves} == {"syn"}
    assert curves[-1]["step"] == 200_000 // 256 and curves[-1]["l0"] == pytest.approx(3.0)
    assert curves[-1]["fvu"] < curves[0]["fvu"]
    rows = query(tmp_path, "SELECT count(*) AS n FROM training_curves WHERE sae = 'syn'")
    assert rows.to_pylist()[0]["n"] == len(curves)  # the catalog view sees the curves
    assert not (out / checkpoint.CKPT_DIR).exists()
    run_meta = read_meta(out)["run"]
    assert run_meta["store"] == META and run_meta["tokens_trained"] == 781 * 256


def _resumable(tmp_path: Path, name: str, on_step=None) -> Path:
    x, _ = sparse_data(4096, n_atoms=32)
    # A short dead window so that AuxK, and hence the dead counters, matter before the cut.
    train = TrainConfig(tokens=40 * 128, batch_size=128, checkpoint_every=7, log_every=5,
                        dead_window=1024, warmup_steps=4, progress=False)
    (out,) = train_saes(InMemorySource(x), [TopKConfig(d_sae=96, k=3)],
                        [tmp_path / "saes" / name], META, train, on_step=on_step)
    return out


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    whole = _resumable(tmp_path, "whole")

    def ctrl_c(step: int) -> None:
        if step == 17:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        _resumable(tmp_path, "cut", on_step=ctrl_c)
    cut = tmp_path / "saes" / "cut"
    assert checkpoint.steps_in(cut) == {17}  # Ctrl-C saved the state it stopped at
    assert not (cut / "cfg.json").exists()
    with pytest.raises(UserError, match="not finished"):
        load_sae(cut)
    _resumable(tmp_path, "cut")  # the same call again resumes
    a = load_file(whole / "sae_weights.safetensors")
    b = load_file(cut / "sae_weights.safetensors")
    for name in a:
        assert torch.equal(a[name], b[name]), name  # on CPU: bitwise
    curves_a = pq.read_table(whole / "curves.parquet").to_pylist()
    curves_b = pq.read_table(cut / "curves.parquet").to_pylist()
    assert any(r["auxk"] == r["auxk"] for r in curves_a)  # AuxK ran (not NaN) in this test
    assert _comparable(curves_a) == _comparable(curves_b)


def _comparable(rows: list[dict]) -> list[dict]:
    """Curve rows without run-specific columns, NaN as None (NaN != NaN)."""
    return [{k: None if v != v else v for k, v in r.items() if k not in ("sae", "tokens_per_s")}
            for r in rows]


def test_sweep_trains_every_combination_from_one_command(tmp_path, capsys):
    x, _ = sparse_data(4096)
    argv = ["--store", "unused.duckdb", "--out", str(tmp_path / "saes" / "sw"), "--k", "2", "4",
            "--width", "64", "--tokens", "2048", "--batch-size", "256", "--no-progress"]
    args = tyro.cli(Args, args=argv)
    outs = run(args, InMemorySource(x), META)
    assert [o.name for o in outs] == ["sw-k2-w64", "sw-k4-w64"]
    for out, k in zip(outs, (2, 4), strict=True):
        cfg = json.loads((out / "cfg.json").read_text())
        assert (cfg["architecture"], cfg["k"], cfg["d_sae"], cfg["d_in"]) == ("topk", k, 64, 32)
        assert cfg["metadata"]["hook_name"] == META["hook"]
    run(args, InMemorySource(x), META)
    assert "already trained" in capsys.readouterr().out


def test_main_trains_from_a_store(tiny_store, tmp_path, capsys):
    out = tmp_path / "saes" / "tiny"
    args = tyro.cli(Args, args=["--store", str(tiny_store), "--out", str(out), "--k", "4",
                                "--width", "64", "--tokens", "2048", "--batch-size", "256",
                                "--no-progress"])
    main(args)
    assert str(out) in capsys.readouterr().out
    meta = read_meta(out)
    assert meta["cfg"]["metadata"]["hook_name"] == "blocks.0.hook_resid_post"
    assert meta["run"]["store"]["norm"]["mean_norm"] > 0
    assert Path(meta["run"]["store_path"]) == tiny_store.resolve()  # evals find it from here
    assert load_sae(out).d_in == meta["cfg"]["d_in"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--k", "64", "--width", "64"], "smaller than --width"),
     (["--k", "8", "--width", "64", "4"], "smaller than --width"),
     (["--arch", "nope"], "unknown architecture"),
     (["--tokens", "100"], "at least --batch-size")],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, flags, message):
    base = {"--store": "s.duckdb", "--out": str(tmp_path / "saes" / "bad"), "--tokens": "4096",
            "--batch-size": "256", "--k": "4", "--width": "32"}
    for flag in flags[::2]:
        base.pop(flag, None)
    argv = [s for kv in base.items() for s in kv] + flags
    args = tyro.cli(Args, args=argv)
    with pytest.raises(UserError, match=message) as err:
        run(args, InMemorySource(torch.randn(512, 32)), META)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "saes").exists()


def test_out_folder_of_another_run_is_refused(tmp_path):
    x, _ = sparse_data(2048)
    train = TrainConfig(tokens=1024, batch_size=256, progress=False)
    out = tmp_path / "saes" / "a"
    train_saes(InMemorySource(x), [TopKConfig(d_sae=64, k=2)], [out], META, train)
    with pytest.raises(UserError, match="different SAE"):
        train_saes(InMemorySource(x), [TopKConfig(d_sae=64, k=3)], [out], META, train)


def test_schedule_warms_up_and_decays_over_the_last_fifth():
    assert default_lr(2**14) == pytest.approx(2e-4)
    assert default_lr(2**16) == pytest.approx(1e-4)
    n, warm = 1000, warmup_steps(1000, 1000)
    assert warm == 50  # capped at 5% of the run
    factors = [lr_factor(s, n, warm, 0.2) for s in range(n)]
    assert factors[0] == pytest.approx(1 / 50) and factors[49] == 1.0
    assert factors[799] == 1.0 and factors[800] == pytest.approx(1.0)
    assert factors[900] == pytest.approx(0.5) and 0 < factors[-1] < 0.01


def test_dead_latents_count_tokens_since_last_fire():
    dead = DeadLatents(4, window=300)
    codes = torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0]])
    fired, l0 = fires(codes, 4)
    assert fired.tolist() == [True, True, False, False] and float(l0) == 1.0
    for _ in range(3):
        dead.update(fired, 100)
    assert dead.mask().tolist() == [False, False, True, True]
    fired_sparse, _ = fires(codes.to_sparse(), 4)
    assert fired_sparse.tolist() == fired.tolist()


def test_geometric_median_ignores_outliers():
    x = torch.cat([torch.zeros(90, 4), torch.full((10, 4), 100.0)])
    assert geometric_median(x).abs().max() < 1.0 < x.mean(0).abs().max()


def test_plan_names_sweep_folders():
    args = Args(store=Path("s"), out=Path("runs/saes/x"), train=TrainConfig(tokens=1),
                k=(8, 16), width=(64, 128))
    configs, outs = plan(args)
    assert [o.name for o in outs] == ["x-k8-w64", "x-k8-w128", "x-k16-w64", "x-k16-w128"]
    assert [(c.k, c.d_sae) for c in configs] == [(8, 64), (8, 128), (16, 64), (16, 128)]
