"""Data that cannot rot silently: shard checksums, verification, repair, and binary corpora."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest
import torch
from conftest import TINY_HOOK

from saebench.cli import main
from store.checksums import file_xxh3
from store.errors import UserError
from store.reader import open_store

pytestmark = pytest.mark.usefixtures("one_thread")

# Small on purpose: 6 train chunks + 1 held-out chunk, with gradients (their shards too).
ARGS = ["--model", "random:tiny", "--hook", TINY_HOOK, "--ctx", "32", "--tokens", "1536",
        "--heldout-tokens", "256", "--chunk-seqs", "8", "--batch-seqs", "8", "--writers", "1",
        "--with-grads"]
VICTIM = "act-000002.parquet"


def _cache(store: Path) -> int:
    return main(["cache", *ARGS, "--store", str(store)])


def _copy(src: Path, dest: Path) -> Path:
    shutil.copy(src, dest)
    shutil.copytree(src.with_suffix(".shards"), dest.with_suffix(".shards"))
    return dest


def _flip(shard: Path, n: int = 4096) -> None:
    """Invert n bytes in the middle of a file (its size stays the same)."""
    data = bytearray(shard.read_bytes())
    mid = len(data) // 2
    data[mid : mid + n] = bytes(b ^ 0xFF for b in data[mid : mid + n])
    shard.write_bytes(bytes(data))


def _contents(store: Path) -> tuple[torch.Tensor, ...]:
    s = open_store(store)
    acts = torch.cat([s.read_chunk(c, drop_bos=False) for c in s.chunks])
    grads = torch.cat([s.read_chunk(c, grads=True, drop_bos=False) for c in s.chunks])
    with duckdb.connect(str(store), read_only=True) as con:
        n_rows = con.execute("SELECT count(*) FROM token_ids").fetchone()[0]
    windows = torch.cat([s.token_windows("train"), s.token_windows("heldout")])
    return acts.view(torch.int16), grads.view(torch.int16), windows, torch.tensor(n_rows)


def _one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("orig") / "s.duckdb"
    assert _cache(store) == 0
    return store


@pytest.fixture
def corrupt(original, tmp_path) -> Path:
    store = _copy(original, tmp_path / "c.duckdb")
    _flip(store.with_suffix(".shards") / VICTIM)
    return store


def test_every_shard_checksum_is_recorded(original):
    shards = original.with_suffix(".shards")
    with duckdb.connect(str(original), read_only=True) as con:
        rows = con.execute("SELECT act_file, act_xxh3, grad_file, grad_xxh3 FROM chunks").fetchall()
    assert len(rows) == 7
    for act, act_sum, grad, grad_sum in rows:
        assert act_sum == file_xxh3(shards / act) and len(act_sum) == 16
        assert grad_sum == file_xxh3(shards / grad)


def test_flipped_bytes_fail_the_read_naming_the_shard(corrupt):
    s = open_store(corrupt)
    victim = next(c for c in s.chunks if c.act_file == VICTIM)
    s.read_chunk(s.chunks[0])  # a healthy shard reads fine
    with pytest.raises(UserError, match=rf"shard .*{VICTIM} is corrupt") as err:
        s.read_chunk(victim)
    assert "\n" not in str(err.value)
    # The training path (shuffled batches over every chunk) fails the same way.
    source = open_store(corrupt).source("train")
    with pytest.raises(UserError, match=VICTIM):
        next(source.batches(64))


def test_info_verify_names_the_bad_shard(capsys, original, corrupt):
    assert main(["info", "--verify", str(original)]) == 0
    assert "14 shards verified OK" in capsys.readouterr().out
    assert main(["info", "--verify", str(corrupt)]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("saebench info: error:") and VICTIM in line and "1 of 14" in line


def test_rerunning_cache_rewrites_the_bad_chunk(capsys, original, corrupt):
    shards = corrupt.with_suffix(".shards")
    before = {f.name: f.stat().st_mtime_ns for f in shards.iterdir()}
    assert _cache(corrupt) == 0
    assert VICTIM in capsys.readouterr().err  # the warning says what is being recomputed
    after = {f.name: f.stat().st_mtime_ns for f in shards.iterdir()}
    assert after.keys() == before.keys()
    assert {n for n in after if after[n] != before[n]} == {VICTIM, "grad-000002.parquet"}
    for ours, ref in zip(_contents(corrupt), _contents(original), strict=True):
        assert torch.equal(ours, ref)
    assert main(["info", "--verify", str(corrupt)]) == 0


def test_store_without_checksum_columns_opens_and_resumes(capsys, original, tmp_path):
    old = _copy(original, tmp_path / "old.duckdb")
    with duckdb.connect(str(old)) as con:
        con.execute("ALTER TABLE chunks DROP COLUMN act_xxh3")
        con.execute("ALTER TABLE chunks DROP COLUMN grad_xxh3")
    s = open_store(old)
    assert not s.checksummed
    s.read_chunk(s.chunks[0], grads=True)
    assert main(["info", "--verify", str(old)]) == 0
    assert "unverified" in capsys.readouterr().out
    # An interrupted old store: its resume migrates the manifest and checksums new shards.
    with duckdb.connect(str(old)) as con:
        con.execute("DELETE FROM token_ids WHERE seq >= 16 AND seq < 24")
        con.execute("DELETE FROM chunks WHERE chunk = 2")
        con.execute("""UPDATE meta SET value = '"partial"' WHERE key = 'status'""")
    assert _cache(old) == 0
    with duckdb.connect(str(old), read_only=True) as con:
        sums = dict(con.execute("SELECT chunk, act_xxh3 FROM chunks").fetchall())
    assert sums[2] is not None and sum(v is None for v in sums.values()) == 6
    for ours, ref in zip(_contents(old), _contents(original), strict=True):
        assert torch.equal(ours, ref)


@pytest.mark.parametrize("name", ["random.txt", "corpus.gz"])
def test_binary_dataset_is_one_line(capsys, tmp_path, name):
    data = tmp_path / name
    data.write_bytes(b"\x1f\x8b\x08\x00" + torch.randint(0, 256, (4096,)).byte().numpy().tobytes())
    store = tmp_path / "s.duckdb"
    argv = ["cache", *ARGS, "--dataset", str(data), "--store", str(store)]
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert "not UTF-8 text" in line and str(data) in line
    assert not store.exists() and not store.with_suffix(".shards").exists()
