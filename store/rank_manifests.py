"""Per-rank manifests: how ranks other than 0 record chunks in a store they may not write.

DuckDB allows one writer per file, so under torchrun (store/parallel_cache.py) rank r > 0
commits each chunk (its manifest row and token rows, in one transaction, after its shards)
to its own small DuckDB file, `<store>.shards/manifest-rank<r>.duckdb`, with the store's
schema and the store's spec in its meta. `merge` moves every such row into the store in ONE
transaction, then deletes the rank files. A chunk exists iff its row is in the store: until
the merge a rank's shards are not part of it, and a rank row whose shard is missing or fails
its checksum (or whose manifest is unreadable, or from other settings) is dropped, its
shards then being orphans that StoreWriter deletes and the run recomputes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import duckdb

from store import checksums, sql

PATTERN = "manifest-rank*.duckdb"
# Named, so that a store migrated to checksums (columns last) takes rows in the right order.
COLUMNS = ("chunk, split, first_seq, n_seq, n_tokens, act_file, grad_file, bytes, sum_norm, "
           "sum_x, n_stat, act_xxh3, grad_xxh3")


def path_of(shards: Path, rank: int) -> Path:
    return shards / f"manifest-rank{rank}.duckdb"


def create(shards: Path, rank: int, spec: dict) -> duckdb.DuckDBPyConnection:
    """Open (or create) rank `rank`'s manifest for writing."""
    con = duckdb.connect(str(path_of(shards, rank)))
    for stmt in sql.SCHEMA:
        con.execute(stmt)
    con.execute("INSERT OR REPLACE INTO meta VALUES ('spec', ?)", [json.dumps(spec)])
    return con


def _escape(path: Path) -> str:
    return str(path).replace("'", "''")


def _warn(msg: str) -> None:
    print(f"saebench: warning: {msg}", file=sys.stderr)


def _good_chunks(con, name: str, shards: Path, spec: dict, done: set[int]) -> list[int]:
    """The chunks of attached manifest `name` to merge: new ones whose shards check out."""
    spec_rows = con.execute(f"SELECT value FROM {name}.meta WHERE key = 'spec'").fetchall()
    if not spec_rows or json.loads(spec_rows[0][0]) != spec:
        _warn(f"{shards.name}/{name}: cached with other settings; its chunks are recomputed")
        return []
    good = []
    rows = con.execute(f"SELECT chunk, act_file, act_xxh3, grad_file, grad_xxh3 "
                       f"FROM {name}.chunks ORDER BY chunk").fetchall()
    for chunk, act, act_sum, grad, grad_sum in rows:
        if chunk in done:
            continue  # merged before (a merge killed between its commit and the deletions)
        bad = [(f, why) for f, expected in ((act, act_sum), (grad, grad_sum))
               if f and (why := checksums.mismatch(shards / f, expected))]
        if bad:
            _warn(f"{shards.name}/{bad[0][0]} {bad[0][1]}; recomputing chunk {chunk}")
            continue
        good.append(chunk)
        done.add(chunk)
    return good


def merge(con: duckdb.DuckDBPyConnection, shards: Path, spec: dict) -> list[int]:
    """Move every rank manifest's good rows into the store `con` in one transaction, then
    delete the rank manifests. Returns the chunks merged. No other process may hold them."""
    files = sorted(shards.glob(PATTERN)) if shards.is_dir() else []
    if not files:
        return []
    done = {r[0] for r in con.execute("SELECT chunk FROM chunks").fetchall()}
    take: dict[str, list[int]] = {}
    try:
        for i, f in enumerate(files):
            name = f"rank_manifest_{i}"
            try:
                # Read-write, so DuckDB replays the WAL a killed rank left.
                con.execute(f"ATTACH '{_escape(f)}' AS {name}")
            except duckdb.Error as err:
                _warn(f"{f} is unreadable ({str(err).splitlines()[0]}); its chunks are "
                      "recomputed")
                continue
            take[name] = _good_chunks(con, name, shards, spec, done)
        merged = sorted(c for chunks in take.values() for c in chunks)
        if merged:
            _insert(con, take)
    finally:
        for name in take:
            con.execute(f"DETACH {name}")
    for f in files:
        for p in (f, Path(str(f) + ".wal")):
            p.unlink(missing_ok=True)
    return merged


def _insert(con: duckdb.DuckDBPyConnection, take: dict[str, list[int]]) -> None:
    con.execute("BEGIN")
    try:
        for name, chunks in take.items():
            if not chunks:
                continue
            con.execute(f"INSERT INTO chunks ({COLUMNS}) SELECT {COLUMNS} FROM {name}.chunks "
                        "WHERE list_contains(?, chunk)", [chunks])
            con.execute(
                f"INSERT INTO token_ids SELECT t.seq, t.pos, t.token_id FROM {name}.token_ids t "
                f"JOIN {name}.chunks c ON t.seq >= c.first_seq AND t.seq < c.first_seq + c.n_seq "
                "WHERE list_contains(?, c.chunk)", [chunks])
        # Whatever the store said, it lacked these chunks: no reader trusts it until finish().
        con.execute("INSERT OR REPLACE INTO meta VALUES ('status', ?)", [json.dumps("partial")])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
