"""Train without a cache: activations produced on the fly by the model (issue #12).

A `ModelStore` is the store `saebench cache` would write for a StoreSpec, before it exists:
the same windows, chunks and sequence ids, each chunk's vectors computed by running the model
the first time the chunk is read. `StoreSource` reads it exactly as it reads a finished store,
so its mixing buffer (a group of chunks shuffled together, visited in a seeded order), its
batches and its resume positions are those of the cached store, bit for bit: training from
the stream and training from the cache are the same run. StoreSource's loader thread is the
background producer: the model computes the next group while the SAEs train on this one, and
a resumed run skips whole groups without running the model on them.

What differs from a finished store:
- the normalisation statistics come from the first `stats_tokens` training tokens, not the
  whole split (a cache computes them at the end; a stream cannot wait for the end);
- with `cache_to`, each chunk computed is also committed to that store, and chunks it already
  holds are read back instead of recomputed; `complete()` caches what training did not visit
  (the held-out split included) and marks the store complete, ready for sweeps and evals.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from store.activation_store import StoreSpec, StoreWriter, shard_dir
from store.caching import _compute, cache, plan_chunks, prepare, store_vocab_and_meta
from store.errors import UserError
from store.reader import ChunkInfo
from store.shards import open_vectors
from store.streaming import StoreSource

# Gradients are computed with their chunk's activations and kept until StoreSource asks for
# them (right after the group's activations); older entries are dropped and recomputed.
GRAD_MEMO = 256


class Stopped(Exception):
    """Raised in the producer once the consumer has said it needs no more chunks."""


class ModelStore:
    """A StoreReader look-alike whose chunks come from the model (see module docstring)."""

    def __init__(self, spec: StoreSpec, device: str = "cpu", batch_seqs: int = 32,
                 cache_to: Path | None = None, stats_tokens: int = 1 << 15):
        model, windows, corpus, d_ins = prepare([spec], device)
        self.spec, self.model, self.device, self.batch_seqs = spec, model, device, batch_seqs
        self.d_in, self.dtype, self.ctx = d_ins[0], spec.dtype, spec.ctx
        self.path = Path(cache_to) if cache_to else Path(f"<{spec.model} at {spec.hook}>")
        self._plan = plan_chunks(windows.train, windows.heldout, spec.chunk_seqs)
        self.chunks = [
            ChunkInfo(c.index, c.split, c.first_seq, len(c.tokens), int(c.tokens.size),
                      f"act-{c.index:06d}.parquet",
                      f"grad-{c.index:06d}.parquet" if spec.with_grads else None, 0)
            for c in self._plan
        ]
        self._grads: OrderedDict[int, np.ndarray] = OrderedDict()
        # Chunks computed for the norm estimate, kept for their first read (no second forward).
        self._early: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        self._lock, self.stop = threading.Lock(), threading.Event()
        vocab, extra = store_vocab_and_meta(model, spec, windows, corpus)
        self._writer, self._done = None, set()
        if cache_to is not None:
            Path(cache_to).parent.mkdir(parents=True, exist_ok=True)
            self._writer = StoreWriter(Path(cache_to), spec, self.d_in, vocab, extra)
            self._done = self._writer.done_chunks()
        self.meta = {**asdict(spec), "spec": asdict(spec), "d_in": self.d_in, **extra,
                     "source": "stream",
                     "norm": self._estimate_norm(stats_tokens)}

    # --- the StoreReader interface that StoreSource uses ---
    @property
    def has_grads(self) -> bool:
        return self.spec.with_grads

    def split_chunks(self, split: str) -> list[ChunkInfo]:
        if split not in ("train", "heldout"):
            raise UserError(f"unknown split '{split}': expected train or heldout")
        return [c for c in self.chunks if c.split == split]

    def n_tokens(self, split: str, drop_bos: bool = True) -> int:
        return sum(c.n_tokens - (c.n_seq if drop_bos else 0) for c in self.split_chunks(split))

    def chunk_words(self, chunk: ChunkInfo, grads: bool = False) -> np.ndarray:
        """A chunk's vectors as 2-byte words `[tokens, d_in]` (BOS rows included)."""
        if grads:
            with self._lock:
                kept = self._grads.pop(chunk.index, None)
            return kept if kept is not None else self._words(chunk)[1]
        acts, g = self._words(chunk)
        if g is not None:
            with self._lock:
                self._grads[chunk.index] = g
                while len(self._grads) > GRAD_MEMO:
                    self._grads.popitem(last=False)
        return acts

    def token_windows(self, split: str) -> torch.Tensor:
        """The token windows of a split, `[n_seq, ctx]` (position 0 is BOS), as a finished
        store's reader gives them; no forward runs (end-to-end training reads these)."""
        parts = [c.tokens for c in self._plan if c.split == split]
        if not parts:
            return torch.empty((0, self.ctx), dtype=torch.long)
        return torch.from_numpy(np.concatenate(parts).astype("int64"))

    def source(self, split: str = "train", **kwargs) -> StoreSource:
        # Streaming mode by default: the in-memory mode would run the whole split up front.
        return StoreSource(self, split, **{"in_memory": False, **kwargs})

    # --- production ---
    def _words(self, info: ChunkInfo) -> tuple[np.ndarray, np.ndarray | None]:
        if self.stop.is_set():
            raise Stopped
        with self._lock:
            early = self._early.pop(info.index, None)
        if early is not None:
            return early
        if info.index in self._done:  # cached by an earlier (interrupted) run: read it back
            shards = shard_dir(self.path)
            acts = np.array(open_vectors(shards / info.act_file, self.d_in))
            g = np.array(open_vectors(shards / info.grad_file, self.d_in)) if info.grad_file \
                else None
            return acts, g
        [(done, stats)] = _compute(self.model, [self.spec], self._plan[info.index],
                                   self.batch_seqs, self.device)
        if self._writer is not None:
            self._writer.commit(done, stats)
            self._done.add(info.index)

        def words(t: torch.Tensor | None) -> np.ndarray | None:
            return None if t is None else t.reshape(-1, self.d_in).view(torch.int16).numpy()

        return words(done.acts), words(done.grads)

    def _estimate_norm(self, stats_tokens: int) -> dict:
        """Mean norm and mean from the first training chunks (positions >= 1), at least
        `stats_tokens` tokens or the whole split if smaller."""
        total, sum_x, n = 0.0, np.zeros(self.d_in), 0
        for c in self.split_chunks("train"):
            words = self._words(c)
            if self._writer is None:  # with --cache-to, the first read reads the store back
                self._early[c.index] = words
            x = words[0].reshape(c.n_seq, self.ctx, self.d_in)[:, 1:]
            v = torch.from_numpy(np.ascontiguousarray(x)).view(
                {"float16": torch.float16, "bfloat16": torch.bfloat16}[self.dtype])
            v = v.reshape(-1, self.d_in).double()
            total += float(v.norm(dim=-1).sum())
            sum_x += v.sum(0).numpy()
            n += v.shape[0]
            if n >= stats_tokens:
                break
        return {"mean_norm": total / n, "mean": (sum_x / n).tolist(), "n_tokens": n}

    def complete(self, cache_to: Path | None, progress: bool = True) -> dict | None:
        """Cache every chunk training did not visit into `cache_to` and mark it complete.

        Under torchrun every rank calls this (only rank 0 wrote while training): the missing
        chunks are then shared among the ranks by the parallel cache."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if cache_to is None:
            return None
        return cache(self.spec, Path(cache_to), self.device, self.batch_seqs, progress=progress)

    def close(self) -> None:
        self.stop.set()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
