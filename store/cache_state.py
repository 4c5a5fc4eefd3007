"""What a caching run starts from: the chunk plan, and the state of the stores it resumes.

Shared by the one-process run (store/caching.py) and the torchrun one (store/parallel_cache.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import duckdb
import numpy as np

from store.activation_store import Chunk, StoreSpec, connect_writer, read_meta, shard_dir
from store.checksums import bad_shards
from store.errors import UserError


def plan_chunks(train: np.ndarray, heldout: np.ndarray, chunk_seqs: int) -> list[Chunk]:
    """Split both splits' windows into chunks; sequence ids run train first, then held-out."""
    chunks, seq = [], 0
    for split, windows in (("train", train), ("heldout", heldout)):
        for lo in range(0, len(windows), chunk_seqs):
            part = windows[lo : lo + chunk_seqs]
            chunks.append(Chunk(len(chunks), split, seq, part))
            seq += len(part)
    return chunks


def check_specs(specs: Sequence[StoreSpec], paths: Sequence[Path]) -> None:
    if not specs or len(specs) != len(paths):
        raise UserError("caching needs one store path per hook (and at least one hook)")
    if len({s.hook for s in specs}) != len(specs) or len(set(paths)) != len(paths):
        raise UserError("the hooks (and their stores) of one caching pass must differ")
    same = [replace(s, hook=specs[0].hook) for s in specs]
    if any(s != same[0] for s in same):
        raise UserError("stores cached in one pass must differ only in their hook")


def remove_store(path: Path) -> None:
    for p in (path, Path(str(path) + ".wal")):
        p.unlink(missing_ok=True)
    shards = shard_dir(path)
    if shards.exists():
        for f in shards.iterdir():
            f.unlink()
        shards.rmdir()


def store_meta(path: Path) -> dict:
    with connect_writer(path) as con:
        try:
            return read_meta(con)
        except duckdb.Error:
            return {}  # not a store; StoreWriter reports that clearly


def is_complete(path: Path, spec: StoreSpec) -> bool:
    if not path.exists():
        return False
    meta = store_meta(path)
    if meta.get("status") != "complete" or meta.get("spec") != asdict(spec):
        return False
    # Re-verified, so rerunning `cache` repairs a rotten shard (StoreWriter drops its chunk).
    with connect_writer(path) as con:
        return not bad_shards(con, shard_dir(path), stop_at_first=True)
