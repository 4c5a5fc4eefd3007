"""Shuffled training batches from a store: in memory when it fits, streamed when it does not.

Both modes cut one shuffled token stream per epoch into batches:
- in memory: all chunks are loaded once (one contiguous array), and each epoch is a fresh
  permutation of every token;
- streaming: each epoch visits the chunks in a seeded random order, in groups of about
  `buffer_tokens` tokens; a group is shuffled internally while the next one loads in a
  background thread.
Everything is a function of (seed, epoch, group), and every chunk's token count is in the
manifest, so `start=N` skips N batches without reading them.

Vectors stay as 2-byte words in numpy until a batch is gathered: numpy's row gather on int16
is 5-20x faster than torch's fp16 indexing on the CPU (measured; BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, runtime_checkable

import numpy as np

from store.errors import UserError
from store.reader import ChunkInfo
from store.shards import as_tensor, non_bos_rows
from store.sources import Batch, NormStats, epoch_permutation


@runtime_checkable
class ChunkReader(Protocol):
    """What StoreSource reads: a finished store (store.reader.StoreReader) or one whose chunks
    a model computes on first read (store.model_source.ModelStore)."""

    d_in: int
    dtype: str
    ctx: int
    meta: dict

    @property
    def has_grads(self) -> bool: ...

    def split_chunks(self, split: str) -> list[ChunkInfo]: ...

    def n_tokens(self, split: str, drop_bos: bool = True) -> int: ...

    def chunk_words(self, chunk: ChunkInfo, grads: bool = False) -> np.ndarray: ...


class StoreSource:
    """ActivationSource over one split of a store."""

    def __init__(
        self,
        reader: ChunkReader,
        split: str = "train",
        buffer_tokens: int = 1 << 19,
        in_memory: bool | None = None,
        memory_budget_gb: float = 4.0,
    ):
        self.reader, self.split = reader, split
        self.chunks = reader.split_chunks(split)
        self.d_in = reader.d_in
        self.has_grads = reader.has_grads
        self.n_tokens = reader.n_tokens(split)
        self.buffer_tokens = buffer_tokens
        nbytes = self.n_tokens * self.d_in * 2 * (2 if self.has_grads else 1)
        self.in_memory = nbytes <= memory_budget_gb * 1e9 if in_memory is None else in_memory
        self._resident: dict[bool, tuple] = {}  # in-memory mode: loaded once per with_grads

    def stats(self) -> NormStats:
        norm = self.reader.meta["norm"]
        return NormStats(mean_norm=norm["mean_norm"], mean=norm["mean"], n_tokens=norm["n_tokens"])

    def _served(self, c: ChunkInfo) -> int:
        return c.n_tokens - c.n_seq  # position 0 of every window is not served

    def _load(self, chunks: list[ChunkInfo], grads: bool):
        """A group's words (one contiguous copy), its grads, and the rows that may be served."""
        x = np.concatenate(self._words(chunks, False))
        g = np.concatenate(self._words(chunks, True)) if grads else None
        return x, g, non_bos_rows(len(x), self.reader.ctx)

    def _words(self, chunks: list[ChunkInfo], grads: bool) -> list[np.ndarray]:
        # A remote store (store/remote.py) fetches a group's shards concurrently, so a load
        # costs one round trip, not one per chunk; local shards are mapped one by one.
        many = getattr(self.reader, "chunk_words_many", None)
        if many is not None:
            return many(chunks, grads)
        return [self.reader.chunk_words(c, grads) for c in chunks]

    def _groups(self, seed: int, epoch: int) -> list[list[ChunkInfo]]:
        if self.in_memory:
            return [self.chunks]
        order = [self.chunks[i] for i in epoch_permutation(len(self.chunks), seed, epoch)]
        groups, cur, size = [], [], 0
        for c in order:
            cur.append(c)
            size += self._served(c)
            if size >= self.buffer_tokens:
                groups.append(cur)
                cur, size = [], 0
        return groups + ([cur] if cur else [])

    def _fetch(self, pool, group: list[ChunkInfo], grads: bool):
        if not self.in_memory:
            return pool.submit(self._load, group, grads)
        if grads not in self._resident:
            self._resident[grads] = self._load(group, grads)
        done = pool.submit(lambda: self._resident[grads])
        return done

    def batches(
        self, batch_size: int, *, seed: int = 0, start: int = 0, with_grads: bool = False
    ) -> Iterator[Batch]:
        if with_grads and not self.has_grads:
            raise ValueError("this store holds no gradients: cache it with --with-grads")
        per_epoch = self.n_tokens // batch_size
        if per_epoch == 0:
            raise UserError(f"--batch-size {batch_size} exceeds the {self.n_tokens} tokens the "
                            "store holds (BOS excluded): lower --batch-size or cache more tokens")
        epoch, offset = divmod(start, per_epoch)
        with ThreadPoolExecutor(max_workers=1) as pool:
            while True:
                yield from self._epoch(
                    pool, batch_size, seed, epoch, offset * batch_size, with_grads
                )
                epoch, offset = epoch + 1, 0

    def _epoch(self, pool, batch_size: int, seed: int, epoch: int, skip: int, grads: bool):
        """Batches of one epoch, starting `skip` tokens into its shuffled stream."""
        end = (self.n_tokens // batch_size) * batch_size  # the ragged tail is dropped
        todo, pos = [], 0  # pos: stream position of the group's first token
        for gi, group in enumerate(self._groups(seed, epoch)):
            n = sum(self._served(c) for c in group)
            if pos + n > skip and pos < end:
                todo.append((gi, group, pos))
            pos += n
        carry: list[tuple[np.ndarray, np.ndarray | None]] = []
        future = self._fetch(pool, todo[0][1], grads) if todo else None
        for i, (gi, _, gpos) in enumerate(todo):
            x, g, rows = future.result()
            if i + 1 < len(todo):
                future = self._fetch(pool, todo[i + 1][1], grads)
            order = rows[np.random.default_rng([seed, epoch, gi]).permutation(len(rows))]
            order = order[max(0, skip - gpos) : max(0, end - gpos)]
            # The first batch of a group may need the previous groups' leftover rows.
            if carry:
                take = order[: batch_size - sum(len(c[0]) for c in carry)]
                carry.append(self._gather(x, g, take))
                order = order[len(take) :]
                if sum(len(c[0]) for c in carry) < batch_size:
                    continue  # a group smaller than the gap: keep carrying
                yield self._emit(carry, grads)
                carry = []
            n_full = len(order) // batch_size
            for b in range(n_full):
                rows_b = order[b * batch_size : (b + 1) * batch_size]
                yield self._emit([self._gather(x, g, rows_b)], grads)
            rest = order[n_full * batch_size :]
            if len(rest):
                carry.append(self._gather(x, g, rest))

    @staticmethod
    def _gather(x: np.ndarray, g: np.ndarray | None, rows: np.ndarray):
        return np.take(x, rows, axis=0), (np.take(g, rows, axis=0) if g is not None else None)

    def _emit(self, parts: list[tuple[np.ndarray, np.ndarray | None]], grads: bool) -> Batch:
        x = as_tensor(np.concatenate([p[0] for p in parts]), self.reader.dtype)
        if not grads:
            return x
        return x, as_tensor(np.concatenate([p[1] for p in parts]), "bfloat16")
