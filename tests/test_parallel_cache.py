"""Parallel caching (store/parallel_cache.py): 2 gloo ranks launched by torchrun cache what one
process caches, and a rank killed mid-run loses nothing that a rerun (2 ranks or 1) cannot
finish exactly."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import torch
from conftest import TINY_HOOK

from saebench.cli import main
from store.errors import UserError
from store.parallel_cache import EXIT_AFTER
from store.reader import open_store

pytestmark = pytest.mark.usefixtures("one_thread")

# 16 train chunks + 4 held-out chunks: enough for both ranks to own several.
ARGS = ["cache", "--model", "random:tiny", "--hook", TINY_HOOK, "--ctx", "32", "--tokens",
        "4096", "--heldout-tokens", "1024", "--chunk-seqs", "8", "--batch-seqs", "8",
        "--writers", "1"]


def _torchrun(store: Path, **env: str) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(port),
           "-m", "saebench.cli", *ARGS, "--store", str(store)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def _contents(store: Path) -> dict:
    s = open_store(store)
    words = torch.cat([s.read_chunk(c, drop_bos=False).view(torch.int16) for c in s.chunks])
    with duckdb.connect(str(store), read_only=True) as con:
        n_rows = con.execute("SELECT count(*) FROM token_ids").fetchone()[0]
    return dict(
        words=words,
        windows=torch.cat([s.token_windows("train"), s.token_windows("heldout")]),
        n_rows=n_rows,
        chunks=[(c.index, c.split, c.first_seq, c.n_seq) for c in s.chunks],
        norm=s.meta["norm"],
        n_tokens=s.meta["n_tokens"],
        leftovers=sorted(f.name for f in store.with_suffix(".shards").iterdir()
                         if not f.name.startswith("act-")),
    )


def _assert_same(got: dict, ref: dict) -> None:
    assert got["chunks"] == ref["chunks"]
    assert got["n_rows"] == ref["n_rows"] == got["windows"].numel()  # no duplicate token rows
    assert torch.equal(got["windows"], ref["windows"])
    assert torch.equal(got["words"], ref["words"])
    assert got["n_tokens"] == ref["n_tokens"]
    # Statistics are sums over chunks, merged in another order: equal up to rounding.
    norm, ref_norm = got["norm"], ref["norm"]
    assert norm["n_tokens"] == ref_norm["n_tokens"]
    assert norm["mean_norm"] == pytest.approx(ref_norm["mean_norm"], rel=1e-9)
    assert norm["mean"] == pytest.approx(ref_norm["mean"], rel=1e-9, abs=1e-12)
    assert got["leftovers"] == []  # rank manifests merged and deleted, no temp files


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    store = tmp_path_factory.mktemp("one") / "s.duckdb"
    assert main([*ARGS, "--store", str(store)]) == 0
    return _contents(store)


def test_killed_rank_resumes_exactly_with_two_ranks_or_one(tmp_path, reference, capsys):
    store = tmp_path / "s.duckdb"
    killed = _torchrun(store, **{EXIT_AFTER: "1:1"})  # rank 1 dies after its first commit
    assert killed.returncode != 0
    # Rank 1's chunk is in its own manifest only: rank 0 never reached the merge.
    rank1 = store.with_suffix(".shards") / "manifest-rank1.duckdb"
    assert rank1.exists()
    with pytest.raises(UserError, match="incomplete"):
        open_store(store)
    # A copy, resumed by one process, with rank 1's shard rotten: its row must be dropped.
    copy = tmp_path / "copy" / "s.duckdb"
    shutil.copytree(store.with_suffix(".shards"), copy.with_suffix(".shards"))
    for f in (store, Path(str(store) + ".wal")):
        if f.exists():
            shutil.copy(f, copy.with_name(f.name))
    with duckdb.connect(str(copy.with_suffix(".shards") / rank1.name)) as con:
        [(shard,)] = con.execute("SELECT act_file FROM chunks").fetchall()
    victim = copy.with_suffix(".shards") / shard
    victim.write_bytes(victim.read_bytes()[:-100] + bytes(100))

    # Two ranks finish it (the clean 2-rank path: the rerun shares the missing chunks).
    resumed = _torchrun(store)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("tokens    train") == 1  # rank 0 alone prints the summary
    _assert_same(_contents(store), reference)

    capsys.readouterr()
    assert main([*ARGS, "--store", str(copy)]) == 0
    assert f"{shard} is corrupt" in capsys.readouterr().err
    _assert_same(_contents(copy), reference)
