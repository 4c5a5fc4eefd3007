"""`saebench cache` under torchrun: N ranks cache disjoint chunks into ONE store (DESIGN §6).

    torchrun --nproc-per-node 4 -m saebench cache --model ... --store runs/s.duckdb

DuckDB allows one writer per file, so:
1. rank 0 alone opens the store (creating it, or resuming it: merging the rank manifests a
   killed run left, dropping rotten chunks, deleting orphan shards) and tells every rank
   which chunks are done;
2. the chunks still missing are dealt round-robin, `todo[rank::size]`: ownership is a pure
   function of (the missing chunks, the world size), which every rank agrees on, so ranks
   never overlap, and a rerun with any world size splits the remaining work evenly again;
3. rank 0 commits its chunks to the store itself, as a one-process run does; rank r > 0
   writes its shards into the store's shard folder and its rows into its own manifest
   (store/rank_manifests.py), one transaction per chunk;
4. after a barrier, rank 0 merges the rank manifests in one transaction and finishes the
   store (norm statistics, views) exactly as a one-process run does.
A chunk exists iff its row is in the store, so killing any rank at any moment loses at most
the chunks in flight, and any rerun, with any world size, merges what the killed ranks had
committed and computes only the rest. Multi-hook passes (`--hook resid:4`) work the same way,
one store (and one manifest per rank) per hook. On several nodes the store's folder must be
on a filesystem every node sees.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from store import rank_manifests
from store.activation_store import Chunk, StoreSpec, StoreWriter, commit_chunk, shard_dir
from store.cache_state import is_complete, plan_chunks, store_meta
from store.caching import _run, prepare, store_vocab_and_meta
from store.ranks import Ranks, process_group

# Test hook for crash safety (tests/test_parallel_cache.py): "R:N" makes rank R (R > 0) die
# with os._exit right after its N-th committed chunk, as a kill at that moment would.
EXIT_AFTER = "SAEBENCH_TEST_CACHE_EXIT"


class RankWriter:
    """Rank r > 0's side of a store: shards into its folder, rows into its own manifest."""

    def __init__(self, path: Path, spec: StoreSpec, rank: int, done: set[int]):
        self.shards, self.spec, self._done = shard_dir(path), spec, done
        self.con = rank_manifests.create(self.shards, rank, asdict(spec))
        self._lock = threading.Lock()
        who, _, n = os.environ.get(EXIT_AFTER, "").partition(":")
        self._exit_after = int(n) if who == str(rank) else 0
        self._commits = 0

    def done_chunks(self) -> set[int]:
        return set(self._done)  # the store's, as rank 0 read it at the start

    def commit(self, chunk: Chunk, stats: tuple[float, np.ndarray, int]) -> int:
        nbytes = commit_chunk(self.con, self._lock, self.shards, self.spec.dtype, chunk, stats)
        with self._lock:
            self._commits += 1
            if self._commits == self._exit_after:
                os._exit(1)
        return nbytes

    def close(self) -> None:
        self.con.close()


def cache_ranks(
    ranks: Ranks,
    specs: Sequence[StoreSpec],
    paths: Sequence[Path],
    device: str,
    batch_seqs: int,
    writers: int,
    progress: bool,
) -> list[dict]:
    """This rank's share of `cache_hooks`; every rank returns the stores' metas."""
    if device.startswith("cuda") and ":" not in device:
        device = f"cuda:{ranks.local_rank}"
    with process_group(ranks):
        # Only rank 0 opens the stores, even to read: a reader would block its writer.
        complete = ranks.broadcast(
            [is_complete(p, s) for s, p in zip(specs, paths, strict=True)]
            if ranks.is_main else None
        )
        if not all(complete):
            todo = [(s, p) for s, p, c in zip(specs, paths, complete, strict=True) if not c]
            _cache_missing(ranks, [s for s, _ in todo], [p for _, p in todo], device,
                           batch_seqs, writers, progress)
        return ranks.broadcast([store_meta(p) for p in paths] if ranks.is_main else None)


def _cache_missing(ranks, specs, paths, device, batch_seqs, writers, progress) -> None:
    model, windows, corpus, d_ins = prepare(specs, device)
    vocab, extra = store_vocab_and_meta(model, specs[0], windows, corpus)
    chunks = plan_chunks(windows.train, windows.heldout, specs[0].chunk_seqs)
    opened: list = []
    try:
        if ranks.is_main:
            for s, p, d_in in zip(specs, paths, d_ins, strict=True):
                p.parent.mkdir(parents=True, exist_ok=True)
                opened.append(StoreWriter(p, s, d_in, vocab, extra))  # merges leftovers
        # Also the barrier that keeps other ranks from writing before rank 0 has merged and
        # deleted the orphans (a rank's new shards would be orphans to it).
        done = ranks.broadcast([w.done_chunks() for w in opened] if ranks.is_main else None)
        if not ranks.is_main:
            opened = [RankWriter(p, s, ranks.rank, d)
                      for s, p, d in zip(specs, paths, done, strict=True)]
        todo = [c for c in chunks if any(c.index not in d for d in done)]
        _run(model, specs, opened, todo[ranks.rank :: ranks.size], batch_seqs, writers, device,
             progress and ranks.is_main)
        if not ranks.is_main:
            for w in opened:
                w.close()  # rank 0 may open a manifest only once its writer has let go
        ranks.barrier()
        if ranks.is_main:
            for w in opened:
                w.merge_ranks()
                w.finish()
    finally:
        # Committed chunks stay (in the store or a rank manifest); a rerun merges them.
        for w in opened:
            w.close()
