"""benchmarks/gpu_check.py runs only where a GPU is lent; here its plan and checks are tested:
every command it would run parses with the real CLI, and its target checks read the tables."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import tyro
from safetensors.torch import save_file

from saebench.cli import COMMANDS, _load

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks/gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("quick", [True, False])
def test_every_planned_command_parses(tmp_path, quick):
    gc = _gpu_check()
    plan = gc.pipeline(tmp_path, "cuda", quick) + gc.ddp(tmp_path, "cuda", quick)
    parsed = 0
    for _, cmd in plan:
        if "saebench.cli" not in cmd:
            continue  # the weight comparison is this script itself
        argv = cmd[cmd.index("saebench.cli") + 1:]
        assert argv[0] in COMMANDS, argv
        args = tyro.cli(_load(argv[0]).Args, args=argv[1:])  # raises SystemExit on a bad flag
        assert getattr(args, "device", None) in ("cuda", None) or args.train.device == "cuda"
        parsed += 1
    assert parsed == len(plan) - 1


def test_targets_read_train_bench_tables():
    gc = _gpu_check()
    text = ("| topk | 3.1 ms | SAELens 12.4 ms (4.0× ours) |\n"
            "| mp (stop on repeat, no bias) | 9.9 (3.20×) | x |\n")
    lines = gc.targets([{"text": text}])
    assert any("≥ 4× SAELens met" in line for line in lines)
    assert any("MP step 3.20× TopK: ≤ 3× MISSED" in line for line in lines)
    assert gc.targets([{"text": "nothing"}]) == ["- (no benchmark ratios in this run)"]


def test_compare_flags_different_weights(tmp_path, capsys):
    gc = _gpu_check()
    w = {"W_dec": torch.ones(4, 3)}
    for run, delta in (("a", 0.0), ("b", 1e-4), ("c", 0.1)):
        (tmp_path / run / "s-topk").mkdir(parents=True)
        save_file({k: v + delta for k, v in w.items()},
                  tmp_path / run / "s-topk" / "sae_weights.safetensors")
    assert gc.compare(tmp_path / "a", tmp_path / "b") == 0
    assert gc.compare(tmp_path / "a", tmp_path / "c") == 1
    assert "max |Δ weight| 1.00e-01" in capsys.readouterr().out
    assert sys.modules.get("gpu_check") is None  # loaded from its file, not installed
