"""Killing `saebench cache` at any moment loses nothing and duplicates nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
import torch
from conftest import TINY_HOOK

from store.reader import open_store

ARGS = [
    "--model",
    "random:tiny",
    "--hook",
    TINY_HOOK,
    "--ctx",
    "32",
    "--tokens",
    "16384",
    "--heldout-tokens",
    "1024",
    "--chunk-seqs",
    "4",
    "--batch-seqs",
    "4",
    "--writers",
    "1",
]


def _cmd(store: Path) -> list[str]:
    return [sys.executable, "-m", "saebench.cli", "cache", *ARGS, "--store", str(store)]


def _committed(store: Path) -> int:
    try:
        with duckdb.connect(str(store), read_only=True) as con:
            return con.execute("SELECT count(*) FROM chunks").fetchone()[0]
    except duckdb.Error:
        return 0  # not created yet, or held by the writer


def _interrupt_after_some_chunks(store: Path, sig: int) -> int:
    # A shell without job control starts background jobs with SIGINT ignored, and children
    # inherit that (`make test &` in a script): give the child the default handler back.
    proc = subprocess.Popen(_cmd(store), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    shards = store.with_suffix(".shards")
    deadline = time.time() + 120
    # Wait until a few shards exist, so the kill lands mid-run rather than before any work.
    while time.time() < deadline and len(list(shards.glob("act-*.parquet"))) < 5:
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    return proc.returncode


def _contents(store: Path) -> tuple[torch.Tensor, torch.Tensor, int]:
    s = open_store(store)
    acts = torch.cat([s.read_chunk(c, drop_bos=False) for c in s.chunks])
    with duckdb.connect(str(store), read_only=True) as con:
        n_rows = con.execute("SELECT count(*) FROM token_ids").fetchone()[0]
    return acts, torch.cat([s.token_windows("train"), s.token_windows("heldout")]), n_rows


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple:
    store = tmp_path_factory.mktemp("ref") / "ref.duckdb"
    subprocess.run(_cmd(store), check=True, capture_output=True)
    return _contents(store)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_interrupted_cache_resumes_exactly(tmp_path, reference, sig):
    store = tmp_path / "s.duckdb"
    code = _interrupt_after_some_chunks(store, sig)
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 130)
    assert _committed(store) > 0
    with pytest.raises(Exception, match="incomplete"):  # stopped part-way
        open_store(store)
    subprocess.run(_cmd(store), check=True, capture_output=True)
    acts, windows, n_rows = _contents(store)
    ref_acts, ref_windows, ref_rows = reference
    assert n_rows == ref_rows == windows.numel()  # no duplicate token rows
    assert torch.equal(windows, ref_windows)
    assert torch.equal(acts, ref_acts)
    leftovers = [f for f in store.with_suffix(".shards").iterdir() if "tmp" in f.name]
    assert not leftovers


def test_rerun_of_complete_store_is_a_no_op(tmp_path):
    store = tmp_path / "s.duckdb"
    args = [sys.executable, "-m", "saebench.cli", "cache", *ARGS[:7], "2048", "--store", str(store)]
    subprocess.run(args, check=True, capture_output=True)
    mtime = store.stat().st_mtime_ns
    t = time.time()
    out = subprocess.run(args, check=True, capture_output=True, text=True)
    assert store.stat().st_mtime_ns == mtime
    assert "complete" in out.stdout and time.time() - t < 30
    assert os.path.exists(store)
