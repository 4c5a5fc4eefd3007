"""Bad input: one line on stderr, a non-zero exit, and no artifact left behind."""

from __future__ import annotations

import shutil
import subprocess
import sys

import duckdb
import pytest
import torch
from conftest import TINY_HOOK, tiny_spec

from saebench.cli import main
from store.errors import UserError

TINY = ["--model", "random:tiny", "--hook", TINY_HOOK, "--ctx", "32"]


def _fails(capsys, argv: list[str], *needles: str) -> str:
    assert main(argv) == 2
    # The first use of the default model on a fresh machine shows its one-off dequantization
    # progress bar before the error; the error itself must be exactly one line, the last.
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if "error" in line]
    assert len(errors) == 1 and errors[0] == lines[-1], lines
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


def test_unknown_model(capsys, tmp_path):
    store = tmp_path / "s.duckdb"
    _fails(capsys, ["cache", "--model", "gtp2", "--store", str(store)], "unknown model", "gpt2")
    assert not store.exists()


def test_unknown_hook_names_the_closest(capsys, tmp_path):
    store = tmp_path / "s.duckdb"
    argv = [
        "cache",
        "--model",
        "random:tiny",
        "--hook",
        "blocks.0.hook_resid_pots",
        "--store",
        str(store),
    ]
    _fails(capsys, argv, "unknown hook", "blocks.0.hook_resid_post")
    assert not store.exists()


def test_too_many_tokens_says_how_many_there_are(capsys, tmp_path):
    store = tmp_path / "s.duckdb"
    _fails(
        capsys,
        ["cache", *TINY, "--tokens", "100000000", "--store", str(store)],
        "--tokens asks for",
        "has only",
    )
    assert not store.exists()


def test_not_a_store(capsys, tmp_path):
    bogus = tmp_path / "notes.duckdb"
    bogus.write_text("hello")
    _fails(capsys, ["info", str(bogus)], "not a saebench store")
    other = tmp_path / "other.duckdb"
    duckdb.connect(str(other)).close()
    _fails(capsys, ["info", str(other)], "not a saebench store")
    _fails(capsys, ["cache", *TINY, "--store", str(other)], "not a saebench store")


def test_truncated_store(capsys, tmp_path, tiny_store):
    copy = tmp_path / "t.duckdb"
    shutil.copy(tiny_store, copy)
    shutil.copytree(tiny_store.with_suffix(".shards"), copy.with_suffix(".shards"))
    victim = sorted(copy.with_suffix(".shards").glob("act-*"))[-1]
    victim.write_bytes(victim.read_bytes()[:1000])
    _fails(capsys, ["info", str(copy)], "truncated")
    victim.unlink()
    _fails(capsys, ["info", str(copy)], "truncated", "missing")


def test_non_finite_activations_are_located(tmp_path, monkeypatch):
    import store.caching as caching

    real = caching.forward_hooks

    def poisoned(model, hooks, tokens, with_grads):
        (x, g), = real(model, hooks, tokens, with_grads)
        x = x.clone()
        if x.shape[0] > 1:  # leave the one-window probe that sizes the store alone
            x[1, 5, 0] = torch.nan
        return [(x, g)]

    monkeypatch.setattr(caching, "forward_hooks", poisoned)
    store = tmp_path / "s.duckdb"
    with pytest.raises(UserError, match=r"non-finite activations \(.*\) at seq 1 pos 5"):
        caching.cache(tiny_spec(n_tokens=1024, n_heldout_tokens=256), store, progress=False)
    assert not store.exists() and not store.with_suffix(".shards").exists()


def test_locked_store(tmp_path, tiny_store):
    copy = tmp_path / "locked.duckdb"
    shutil.copy(tiny_store, copy)
    holder = duckdb.connect(str(copy))  # another writer holds the file
    try:
        out = subprocess.run(
            [sys.executable, "-m", "saebench.cli", "cache", *TINY, "--store", str(copy)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        holder.close()
    assert out.returncode == 2
    assert "locked by another writer" in out.stderr.strip().splitlines()[-1]


def test_settings_mismatch_on_resume(capsys, tiny_store):
    _fails(
        capsys,
        ["cache", *TINY, "--tokens", "999", "--store", str(tiny_store)],
        "different settings",
    )


def test_values_rejected_by_a_config_dataclass(capsys, tmp_path):
    # tyro builds the config, whose __post_init__ raises: still one line and exit 2.
    _fails(capsys, ["eval", "--core.batch-tokens", "0", "--sae", str(tmp_path)],
           "batch_tokens must be positive")
