"""Reading a finished activation store (read-only; holds no DuckDB lock between calls).

The DuckDB file is opened only briefly to read meta, the chunk manifest and tokens; the
vectors are then read straight from the Parquet shards, so a long training run never keeps
the store locked and any number of readers coexist. Each shard is checked against its
manifest checksum the first time this reader opens it (store/checksums.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import torch

from store import checksums
from store.activation_store import FORMAT, read_meta, shard_dir
from store.errors import UserError
from store.shards import as_tensor, non_bos_rows, open_vectors


@dataclass(frozen=True)
class ChunkInfo:
    index: int
    split: str
    first_seq: int
    n_seq: int
    n_tokens: int
    act_file: str
    grad_file: str | None
    bytes: int
    act_xxh3: str | None = None  # None: written before checksums (unverified)
    grad_xxh3: str | None = None


def _connect_read_only(path: Path) -> duckdb.DuckDBPyConnection:
    if not path.exists():
        raise UserError(f"{path}: no such store")
    try:
        return duckdb.connect(str(path), read_only=True)
    except duckdb.IOException as err:
        if "lock" in str(err).lower():
            raise UserError(f"{path} is being written by another process; wait for it") from None
        raise UserError(f"{path} is not a saebench store (not a readable DuckDB file)") from None
    except duckdb.Error:
        raise UserError(f"{path} is not a saebench store (not a readable DuckDB file)") from None


class StoreReader:
    """A complete store: its meta, chunk manifest, token windows and vectors."""

    def __init__(self, path: Path | str, manifest: Path | None = None):
        # `manifest`: a local copy of the DuckDB file, for a store on object storage
        # (store/remote.py, which also replaces the shard methods below).
        self.path = Path(path) if manifest is None else path
        self.manifest = Path(path) if manifest is None else manifest
        self.shards = shard_dir(self.path) if manifest is None else None
        with _connect_read_only(self.manifest) as con:
            try:
                self.meta = read_meta(con)
                sums = checksums.COLUMNS if checksums.has_checksums(con) else ("NULL", "NULL")
                rows = con.execute(
                    "SELECT chunk, split, first_seq, n_seq, n_tokens, act_file, grad_file, bytes, "
                    f"{sums[0]}, {sums[1]} FROM chunks ORDER BY chunk"
                ).fetchall()
            except duckdb.Error:
                raise UserError(f"{self.path} is not a saebench store") from None
        if self.meta.get("format") != FORMAT:
            raise UserError(f"{self.path} is not a saebench store")
        self.chunks = [ChunkInfo(*r) for r in rows]
        self._verified: set[str] = set()  # shard names that passed their checksum
        if self.meta.get("status") != "complete":
            raise UserError(
                f"{self.path} is incomplete ({len(self.chunks)} chunks cached): rerun the same "
                "`saebench cache` command to finish it"
            )
        self._check_shards()
        self.d_in = int(self.meta["d_in"])
        self.dtype = self.meta["dtype"]
        self.ctx = int(self.meta["ctx"])

    def _check_shards(self) -> None:
        for c in self.chunks:
            for f in (c.act_file, c.grad_file):
                if f and not (self.shards / f).exists():
                    raise UserError(f"{self.path} is truncated: shard {self.shards / f} is missing")
        total = sum(
            (self.shards / f).stat().st_size
            for c in self.chunks
            for f in (c.act_file, c.grad_file)
            if f
        )
        if total != sum(c.bytes for c in self.chunks):
            raise UserError(f"{self.path} is truncated: shard sizes differ from the manifest")

    def disk_bytes(self) -> int:
        """The manifest's size plus every shard's (the manifest rows are checked against the
        files on open)."""
        return self.manifest.stat().st_size + sum(c.bytes for c in self.chunks)

    @property
    def checksummed(self) -> bool:
        """Whether every shard has a manifest checksum (stores from before them have none)."""
        return all(c.act_xxh3 and (c.grad_xxh3 or not c.grad_file) for c in self.chunks)

    def verify(self, name: str, expected: str | None) -> None:
        """Check one shard against its checksum, once per reader (later calls are free)."""
        if name in self._verified:
            return
        why = checksums.mismatch(self.shards / name, expected)
        if why:
            raise UserError(
                f"shard {self.shards / name} {why}; rerun the `saebench cache` command that "
                "wrote this store to rewrite it"
            )
        self._verified.add(name)  # threads may race to here; at worst a shard is hashed twice

    def bad_shards(self) -> list[str]:
        """Every shard that fails its checksum, each as '<file> <why>' (reads the whole store)."""
        bad = []
        for c in self.chunks:
            for name, expected in ((c.act_file, c.act_xxh3), (c.grad_file, c.grad_xxh3)):
                if name and (why := checksums.mismatch(self.shards / name, expected)):
                    bad.append(f"{name} {why}")
                elif name:
                    self._verified.add(name)
        return bad

    @property
    def has_grads(self) -> bool:
        return bool(self.meta.get("with_grads"))

    def split_chunks(self, split: str) -> list[ChunkInfo]:
        if split not in ("train", "heldout"):
            raise UserError(f"unknown split '{split}': expected train or heldout")
        return [c for c in self.chunks if c.split == split]

    def n_tokens(self, split: str, drop_bos: bool = True) -> int:
        """Tokens in a split; by default those that SAEs see (position 0 excluded)."""
        chunks = self.split_chunks(split)
        return sum(c.n_tokens - (c.n_seq if drop_bos else 0) for c in chunks)

    def chunk_words(self, chunk: ChunkInfo, grads: bool = False) -> np.ndarray:
        """A chunk's vectors as memory-mapped 2-byte words `[tokens, d_in]`, BOS rows included."""
        if grads and not chunk.grad_file:
            raise UserError(f"{self.path} has no gradients: cache it with --with-grads")
        name = chunk.grad_file if grads else chunk.act_file
        self.verify(name, chunk.grad_xxh3 if grads else chunk.act_xxh3)
        return open_vectors(self.shards / name, self.d_in)

    def vector_dtype(self, grads: bool = False) -> str:
        return "bfloat16" if grads else self.dtype

    def read_chunk(self, chunk: ChunkInfo, grads: bool = False, drop_bos: bool = True):
        """One chunk's vectors `[tokens, d_in]` as a tensor of the stored dtype."""
        words = self.chunk_words(chunk, grads)
        words = (
            np.take(words, non_bos_rows(len(words), self.ctx), axis=0)
            if drop_bos
            else (np.array(words))
        )
        return as_tensor(words, self.vector_dtype(grads))

    def iter_activations(
        self, split: str, batch_tokens: int = 8192, limit: int | None = None, grads: bool = False
    ) -> Iterator[torch.Tensor]:
        """Sequential, finite batches over a split (position 0 excluded), for evaluation."""
        seen = 0
        for chunk in self.split_chunks(split):
            x = self.read_chunk(chunk, grads=grads)
            for start in range(0, len(x), batch_tokens):
                part = x[start : start + batch_tokens]
                if limit is not None:
                    part = part[: limit - seen]
                if len(part):
                    yield part
                seen += len(part)
                if limit is not None and seen >= limit:
                    return

    def token_windows(self, split: str) -> torch.Tensor:
        """The token windows of a split, `[n_seq, ctx]` (position 0 is BOS)."""
        chunks = self.split_chunks(split)
        if not chunks:
            return torch.empty((0, self.ctx), dtype=torch.long)
        lo = chunks[0].first_seq
        hi = chunks[-1].first_seq + chunks[-1].n_seq
        with _connect_read_only(self.manifest) as con:
            ids = con.execute(
                "SELECT token_id FROM token_ids WHERE seq >= ? AND seq < ? ORDER BY seq, pos",
                [lo, hi],
            ).fetchnumpy()["token_id"]
        return torch.from_numpy(ids.astype("int64")).view(-1, self.ctx)

    def vocab(self):
        """The store's vocabulary as an Arrow table (token_id, token)."""
        with _connect_read_only(self.manifest) as con:
            return con.sql("SELECT token_id, token FROM vocab ORDER BY token_id").to_arrow_table()

    def source(self, split: str = "train", **kwargs):
        """An ActivationSource of shuffled batches over a split."""
        from store.streaming import StoreSource

        return StoreSource(self, split, **kwargs)


def open_store(path: str | Path) -> StoreReader:
    """Open a finished store read-only (local, or `s3://...`), or fail with one clear line."""
    from store import remote  # imports this module, and s3fs only when a URL is given

    url = remote.remote_url(path)
    return remote.RemoteStoreReader(url) if url else StoreReader(Path(path))
