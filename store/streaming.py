"""Shuffled training batches from a store: in memory when it fits, streamed when it does not.

Streaming shuffle: each epoch visits the chunks in a seeded random order, loads them in groups
of about `buffer_tokens` tokens (the next group is read by a background thread while the
current one is consumed), shuffles the tokens inside each group, and cuts the resulting stream
into batches. Everything is a function of (seed, epoch, group), and the token count of every
chunk is known from the manifest, so `start=N` skips N batches without reading them.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from store.reader import ChunkInfo, StoreReader
from store.sources import Batch, InMemorySource, NormStats, epoch_permutation


class StoreSource:
    """ActivationSource over one split of a store."""

    def __init__(
        self,
        reader: StoreReader,
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
        self._memory: InMemorySource | None = None

    def stats(self) -> NormStats:
        norm = self.reader.meta["norm"]
        return NormStats(mean_norm=norm["mean_norm"], mean=norm["mean"], n_tokens=norm["n_tokens"])

    def _chunk_tokens(self, c: ChunkInfo) -> int:
        return c.n_tokens - c.n_seq  # position 0 of every window is not served

    def _load(self, chunks: list[ChunkInfo], grads: bool):
        xs = torch.cat([self.reader.read_chunk(c) for c in chunks])
        if not grads:
            return xs, None
        return xs, torch.cat([self.reader.read_chunk(c, grads=True) for c in chunks])

    def batches(
        self, batch_size: int, *, seed: int = 0, start: int = 0, with_grads: bool = False
    ) -> Iterator[Batch]:
        if with_grads and not self.has_grads:
            raise ValueError("this store holds no gradients: cache it with --with-grads")
        if self.in_memory:
            if self._memory is None:
                x, g = self._load(self.chunks, self.has_grads)
                self._memory = InMemorySource(x, g, stats=self.stats())
            yield from self._memory.batches(
                batch_size, seed=seed, start=start, with_grads=with_grads
            )
            return
        per_epoch = self.n_tokens // batch_size
        if per_epoch == 0:
            raise ValueError(f"batch_size {batch_size} exceeds the {self.n_tokens} tokens held")
        epoch, offset = divmod(start, per_epoch)
        with ThreadPoolExecutor(max_workers=1) as pool:
            while True:
                yield from self._epoch(
                    pool, batch_size, seed, epoch, offset * batch_size, with_grads
                )
                epoch, offset = epoch + 1, 0

    def _groups(self, seed: int, epoch: int) -> list[list[ChunkInfo]]:
        order = [self.chunks[i] for i in epoch_permutation(len(self.chunks), seed, epoch)]
        groups, cur, size = [], [], 0
        for c in order:
            cur.append(c)
            size += self._chunk_tokens(c)
            if size >= self.buffer_tokens:
                groups.append(cur)
                cur, size = [], 0
        return groups + ([cur] if cur else [])

    def _epoch(self, pool, batch_size: int, seed: int, epoch: int, skip: int, grads: bool):
        """Batches of one epoch, starting `skip` tokens into its shuffled stream."""
        groups = self._groups(seed, epoch)
        end = (self.n_tokens // batch_size) * batch_size  # the ragged tail is dropped
        pos = 0  # stream position of the first token of the current group
        todo = []
        for gi, group in enumerate(groups):
            n = sum(self._chunk_tokens(c) for c in group)
            if pos + n > skip:
                todo.append((gi, group, pos))
            pos += n
        carry_x: list[torch.Tensor] = []
        carry_g: list[torch.Tensor] = []
        future = pool.submit(self._load, todo[0][1], grads) if todo else None
        for i, (gi, _, gpos) in enumerate(todo):
            x, g = future.result()
            if i + 1 < len(todo):
                future = pool.submit(self._load, todo[i + 1][1], grads)
            perm = torch.from_numpy(np.random.default_rng([seed, epoch, gi]).permutation(len(x)))
            lo = max(0, skip - gpos)
            hi = min(len(x), end - gpos)
            carry_x.append(x[perm[lo:hi]])
            if g is not None:
                carry_g.append(g[perm[lo:hi]])
            yield_from = torch.cat(carry_x)
            yg = torch.cat(carry_g) if g is not None else None
            n_full = len(yield_from) // batch_size
            for b in range(n_full):
                sl = slice(b * batch_size, (b + 1) * batch_size)
                yield (yield_from[sl], yg[sl]) if yg is not None else yield_from[sl]
            carry_x = [yield_from[n_full * batch_size :]]
            carry_g = [yg[n_full * batch_size :]] if yg is not None else []
