"""Writing an activation store: one DuckDB file plus a folder of Parquet shards.

Layout of `runs/demo.duckdb`:
- `runs/demo.duckdb`: tables meta, vocab, token_ids, chunks; views tokens, activations(_raw),
  gradients(_raw) (see store/sql.py);
- `runs/demo.shards/act-000012.parquet` (and grad-000012.parquet): the vectors of chunk 12.

Crash safety: a chunk's shard files are written first (atomically), then its token rows and
its `chunks` row are committed in one DuckDB transaction. A chunk is done
if and only if its `chunks` row exists; shard files without one are leftovers of a killed run
and are deleted on resume. So SIGINT or SIGKILL at any moment loses at most the chunks in
flight, and a rerun recomputes exactly those, with no duplicates.

Under torchrun (store/parallel_cache.py), ranks other than 0 record their chunks in their own
small manifests in the shard folder; rank 0 merges them in (store/rank_manifests.py) at the end
of the run, and every StoreWriter merges any left by a killed run before it looks for orphans.

Rot: each shard's xxh3_64 is in its `chunks` row (store/checksums.py). A resumed run checks
every done chunk first and drops (then recomputes) any whose shards fail, so rerunning
`saebench cache` repairs a store; stores from before checksums gain the columns here.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import torch

from store import checksums, rank_manifests, sql
from store.errors import UserError
from store.shards import encode_rows, write_shard

FORMAT = "saebench-store/1"


@dataclass(frozen=True)
class StoreSpec:
    """Everything that determines a store's contents; a resumed run must match it exactly."""

    model: str
    hook: str
    dataset: str
    ctx: int
    n_tokens: int
    n_heldout_tokens: int
    seed: int
    dtype: str
    with_grads: bool
    chunk_seqs: int


@dataclass
class Chunk:
    """One unit of caching and of crash recovery: `n_seq` consecutive windows of one split."""

    index: int
    split: str
    first_seq: int
    tokens: np.ndarray  # [n_seq, ctx] int32
    acts: torch.Tensor | None = None  # [n_seq, ctx, d_in]
    grads: torch.Tensor | None = None


def shard_dir(path: Path) -> Path:
    return path.with_suffix(".shards")


def connect_writer(path: Path) -> duckdb.DuckDBPyConnection:
    """Open a store for writing, turning DuckDB's lock error into one clear line."""
    try:
        return duckdb.connect(str(path))
    except duckdb.IOException as err:
        msg = str(err)
        if "lock" in msg.lower():
            pid = re.search(r"PID (\d+)", msg)
            who = f" (pid {pid.group(1)})" if pid else ""
            raise UserError(
                f"{path} is locked by another writer{who}; wait for it or kill it"
            ) from None
        raise UserError(f"{path} is not a readable DuckDB file: {msg.splitlines()[0]}") from None
    except duckdb.Error as err:
        raise UserError(f"{path} is not a saebench store: {str(err).splitlines()[0]}") from None


def read_meta(con: duckdb.DuckDBPyConnection) -> dict:
    rows = con.execute("SELECT key, value FROM meta").fetchall()
    return {k: json.loads(v) for k, v in rows}


class StoreWriter:
    """Appends chunks to a store; safe to call `commit` from several threads."""

    def __init__(self, path: Path, spec: StoreSpec, d_in: int, vocab: list[str], extra_meta: dict):
        self.path, self.spec, self.d_in = Path(path), spec, d_in
        self.shards = shard_dir(self.path)
        existed = self.path.exists()
        self.con = connect_writer(self.path)
        self._lock = threading.Lock()
        if existed:
            self._check_resumable()
            checksums.add_columns(self.con)
            self._drop_corrupt()
        else:
            self._create(vocab, extra_meta)
        self.shards.mkdir(exist_ok=True)
        # Chunks that other ranks of a killed torchrun cached count, but only once merged:
        # their shards are orphans to _remove_orphans until then.
        self.merge_ranks()
        self._remove_orphans()

    def _create(self, vocab: list[str], extra_meta: dict) -> None:
        for stmt in sql.SCHEMA:
            self.con.execute(stmt)
        self.con.execute(sql.TOKENS_VIEW.format(kind="VIEW"))
        ids = pa.table({"token_id": pa.array(range(len(vocab)), pa.int32()), "token": vocab})
        # Explicit relation, not a replacement scan of a local name (which linters cannot see).
        self.con.from_arrow(ids).insert_into("vocab")
        self.set_meta(
            format=FORMAT,
            status="partial",
            spec=asdict(self.spec),
            d_in=self.d_in,
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **asdict(self.spec),
            **extra_meta,
        )

    def _check_resumable(self) -> None:
        try:
            meta = read_meta(self.con)
        except duckdb.Error:
            raise UserError(f"{self.path} exists and is not a saebench store") from None
        if meta.get("format") != FORMAT:
            raise UserError(f"{self.path} exists and is not a saebench store")
        if meta.get("spec") != asdict(self.spec):
            diff = {k: v for k, v in meta["spec"].items() if asdict(self.spec).get(k) != v}
            raise UserError(
                f"{self.path} was cached with different settings {diff}; "
                "use another --store path or the same settings"
            )

    def _drop_corrupt(self) -> list[int]:
        """Forget every done chunk whose shards fail their checksum, so this run redoes it."""
        bad = checksums.bad_shards(self.con, self.shards)
        for chunk, name, why in bad:
            print(f"saebench: warning: {self.path}: shard {name} {why}; recomputing chunk {chunk}",
                  file=sys.stderr)
        dropped = sorted({chunk for chunk, _, _ in bad})
        for chunk in dropped:
            # One transaction per chunk, as in commit: the chunk row and its tokens go together.
            # The status goes back to partial, so no reader trusts the store until finish().
            lo, n = self.con.execute(
                "SELECT first_seq, n_seq FROM chunks WHERE chunk = ?", [chunk]
            ).fetchone()
            self.con.execute("BEGIN")
            self.con.execute("DELETE FROM token_ids WHERE seq >= ? AND seq < ?", [lo, lo + n])
            self.con.execute("DELETE FROM chunks WHERE chunk = ?", [chunk])
            self.set_meta(status="partial")
            self.con.execute("COMMIT")
        return dropped  # their shard files are now orphans, removed by _remove_orphans

    def _remove_orphans(self) -> None:
        known = {
            f
            for row in self.con.execute("SELECT act_file, grad_file FROM chunks").fetchall()
            for f in row
            if f
        }
        for f in self.shards.iterdir():
            if f.name not in known:
                f.unlink()  # a shard whose chunk never committed (killed run), or a temp file

    def set_meta(self, **items) -> None:
        for key, value in items.items():
            self.con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, json.dumps(value)])

    def done_chunks(self) -> set[int]:
        return {r[0] for r in self.con.execute("SELECT chunk FROM chunks").fetchall()}

    def commit(self, chunk: Chunk, stats: tuple[float, np.ndarray, int]) -> int:
        """Write a chunk's shards, then record it in one transaction. Returns bytes written."""
        return commit_chunk(self.con, self._lock, self.shards, self.spec.dtype, chunk, stats)

    def merge_ranks(self) -> list[int]:
        """Take in the chunks that torchrun's other ranks cached (store/rank_manifests.py)."""
        return rank_manifests.merge(self.con, self.shards, asdict(self.spec))

    def _refresh_views(self) -> None:
        rows = self.con.execute("SELECT act_file, grad_file FROM chunks ORDER BY chunk").fetchall()
        acts = [a for a, _ in rows]
        grads = [g for _, g in rows if g]
        for stmt in sql.vector_views(self.shards, acts, grads, "VIEW", self.spec.dtype, "bfloat16"):
            self.con.execute(stmt)

    def finish(self) -> dict:
        """Compute normalisation statistics over the train split and mark the store complete."""
        sum_norm, n = self.con.execute(
            "SELECT sum(sum_norm), sum(n_stat) FROM chunks WHERE split = 'train'"
        ).fetchone()
        sums = [
            r[0]
            for r in self.con.execute("SELECT sum_x FROM chunks WHERE split = 'train'").fetchall()
        ]
        mean = (np.sum(np.array(sums), axis=0) / n).tolist()
        counts = dict(
            self.con.execute("SELECT split, sum(n_tokens) FROM chunks GROUP BY split").fetchall()
        )
        self.set_meta(
            status="complete",
            n_tokens={
                "train": int(counts.get("train", 0)),
                "heldout": int(counts.get("heldout", 0)),
            },
            norm={"mean_norm": sum_norm / n, "mean": mean, "n_tokens": int(n)},
            completed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        # Views are refreshed once here, not per commit: listing every shard in every commit
        # made caching quadratic in chunks, and nobody can read the file while it is written.
        self._refresh_views()
        self.con.execute("CHECKPOINT")
        return read_meta(self.con)

    def close(self) -> None:
        self.con.close()


def commit_chunk(
    con: duckdb.DuckDBPyConnection,
    lock: threading.Lock,
    shards: Path,
    dtype: str,
    chunk: Chunk,
    stats: tuple[float, np.ndarray, int],
) -> int:
    """Write a chunk's shards, then record its manifest row and token rows in one transaction
    of `con` (a store, or a rank's own manifest). Returns bytes written."""
    assert chunk.acts is not None
    seqs = np.arange(chunk.first_seq, chunk.first_seq + len(chunk.tokens))
    act_file = f"act-{chunk.index:06d}.parquet"
    nbytes = write_shard(shards / act_file, encode_rows(seqs, chunk.acts, dtype))
    # Hashed from the file just written (still in the page cache: +4% writer time).
    act_sum, grad_file, grad_sum = checksums.file_xxh3(shards / act_file), None, None
    if chunk.grads is not None:
        grad_file = f"grad-{chunk.index:06d}.parquet"
        nbytes += write_shard(shards / grad_file, encode_rows(seqs, chunk.grads, "bfloat16"))
        grad_sum = checksums.file_xxh3(shards / grad_file)
    n_seq, ctx = chunk.tokens.shape
    toks = pa.table(
        {
            "seq": np.repeat(seqs.astype(np.int32), ctx),
            "pos": np.tile(np.arange(ctx, dtype=np.int16), n_seq),
            "token_id": chunk.tokens.reshape(-1).astype(np.int32),
        }
    )
    sum_norm, sum_x, n_stat = stats
    with lock:
        con.execute("BEGIN")
        con.from_arrow(toks).insert_into("token_ids")
        con.execute(
            # Columns named: a migrated manifest has the checksum columns last.
            "INSERT INTO chunks (chunk, split, first_seq, n_seq, n_tokens, act_file, "
            "grad_file, bytes, sum_norm, sum_x, n_stat, act_xxh3, grad_xxh3) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [chunk.index, chunk.split, chunk.first_seq, n_seq, n_seq * ctx, act_file, grad_file,
             nbytes, sum_norm, sum_x.tolist(), n_stat, act_sum, grad_sum],
        )
        con.execute("COMMIT")
    return nbytes


def open_store(path):
    """Open a finished store read-only (see store.reader)."""
    from store.reader import open_store as _open

    return _open(path)
