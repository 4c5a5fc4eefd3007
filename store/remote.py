"""Stores on object storage: `s3://bucket/prefix/name.duckdb` beside `.../name.shards/`.

Any S3-compatible endpoint (AWS, MinIO, R2). Credentials, endpoint and region come from the
environment, as for the AWS CLI: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL
(or AWS_ENDPOINT_URL_S3), AWS_DEFAULT_REGION. Writing is not supported: cache locally, then
upload the .duckdb file and its .shards/ folder side by side (`aws s3 sync`, fsspec).
- The manifest (the DuckDB file: meta, chunks, token ids, vocab) is downloaded once into the
  user cache, keyed by URL, ETag and size, and opened read-only from there; a re-uploaded
  store has a new ETag, so a stale copy is never used.
- Shards are read whole into memory (np.memmap needs a local file), and all shards of a
  StoreSource group are requested at once on fsspec's event loop: many GETs in flight make
  a group's load bandwidth-bound rather than latency-bound (benchmarks/remote_bench.py).
- Every download is checked against its manifest xxh3 (store/checksums.py). Each read is a
  new transfer, so each is hashed; at 4-11 GB/s that is small next to the network.
- Transient failures (reset connections, timeouts, errors botocore gave up on) are retried
  with exponential backoff, ATTEMPTS times in all, then reported as one line naming the file.
SQL views over remote shards would need DuckDB's httpfs extension, which is not built for the
DuckDB we use (2.x): the views work on local stores, so download a store to query it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import posixpath
import time
from pathlib import Path

import numpy as np

from store import checksums
from store.errors import UserError
from store.paths import cache_dir
from store.reader import ChunkInfo, StoreReader
from store.shards import vectors_from_bytes

ATTEMPTS = 4  # per file; waits between them: BACKOFF_S, then doubling (0.5 + 1 + 2 s)
BACKOFF_S = 0.5
IN_FLIGHT = 16  # concurrent GETs; also bounds the shards `info --verify` holds in memory


def remote_url(path: str | Path) -> str | None:
    """The `s3://` URL that `path` names, or None for a local path."""
    s = str(path)
    if s.startswith("s3://"):
        return s
    # pathlib collapses "//", so a CLI argument typed Path arrives as "s3:/bucket/key".
    return "s3://" + s[len("s3:/") :] if s.startswith("s3:/") else None


def _filesystem():
    try:
        import s3fs
    except ImportError:
        raise UserError("reading s3:// stores needs s3fs: pip install s3fs") from None
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    fs = s3fs.S3FileSystem(
        # Recent botocore reads these variables itself; passing them helps older ones.
        endpoint_url=endpoint or None,
        skip_instance_cache=True,  # a fresh listing cache per open sees a re-uploaded store
        config_kwargs={
            "connect_timeout": 10,
            "read_timeout": 60,
            "retries": {"total_max_attempts": 1},  # retried by _fetch, with backoff
            "max_pool_connections": IN_FLIGHT,  # botocore's default (10) would queue GETs
        },
    )
    # s3fs itself retries dropped bodies and throttling (SlowDown); kept low because _fetch
    # retries around it, and attempts multiply.
    fs.retries = 3
    # One GET per shard: s3fs would otherwise send a HEAD first (for the size) and split large
    # objects into range reads, one more round trip per shard; _fetch's concurrency is across
    # shards instead.
    fs.max_concurrency = 1
    return fs


def _permanent(err: Exception, url: str) -> str | None:
    """The one-line reason for a failure that no retry can fix, or None if worth retrying."""
    from botocore.exceptions import NoCredentialsError, PartialCredentialsError

    if isinstance(err, NoCredentialsError | PartialCredentialsError):
        return (f"{url}: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(and AWS_ENDPOINT_URL for a non-AWS endpoint such as MinIO or R2)")
    if isinstance(err, FileNotFoundError):
        bucket = url[len("s3://") :].split("/", 1)[0]
        return f"{url}: not found (no such object, or no bucket '{bucket}')"
    if isinstance(err, PermissionError):
        return f"{url}: access denied ({_first_line(err)}); check the credentials"
    if isinstance(err, ValueError | TypeError):
        return f"{url}: {_first_line(err)}"  # a malformed URL or setting
    return None


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _fetch(fs, urls: list[str]) -> list[bytes]:
    """Whole objects, all requested concurrently; transient failures retried with backoff."""
    from fsspec.asyn import sync

    async def one(url: str, gate: asyncio.Semaphore):
        async with gate:
            try:
                return await fs._cat_file(url)
            except Exception as err:  # classified below, in the calling thread
                return err

    async def gather(todo: list[str]):
        gate = asyncio.Semaphore(IN_FLIGHT)
        return await asyncio.gather(*(one(u, gate) for u in todo))

    got: dict[str, bytes] = {}
    todo = list(dict.fromkeys(urls))
    for attempt in range(ATTEMPTS):
        failed: dict[str, Exception] = {}
        for url, out in zip(todo, sync(fs.loop, gather, todo), strict=True):
            if not isinstance(out, Exception):
                got[url] = out
            elif why := _permanent(out, url):
                raise UserError(why)
            else:
                failed[url] = out
        if not failed:
            return [got[u] for u in urls]
        todo = list(failed)
        if attempt + 1 < ATTEMPTS:
            time.sleep(BACKOFF_S * 2**attempt)
    url, err = next(iter(failed.items()))
    raise UserError(f"{url}: could not read it in {ATTEMPTS} attempts ({_first_line(err)}); "
                    "check the network and AWS_ENDPOINT_URL")


def _once(fs, url: str, call):
    """`call()` with the same retries and one-line errors as _fetch."""
    for attempt in range(ATTEMPTS):
        try:
            return call()
        except Exception as err:
            if why := _permanent(err, url):
                raise UserError(why) from None
            last = err
        if attempt + 1 < ATTEMPTS:
            time.sleep(BACKOFF_S * 2**attempt)
    raise UserError(f"{url}: could not reach it in {ATTEMPTS} attempts ({_first_line(last)}); "
                    "check the network and AWS_ENDPOINT_URL")


def cached_manifest(fs, url: str) -> Path:
    """A local copy of the store's DuckDB file, downloaded unless this version is cached."""
    info = _once(fs, url, lambda: fs.info(url))
    if info.get("type") != "file":
        raise UserError(f"{url}: not found (a folder, not a .duckdb file)")
    version = f"{url}\n{info.get('ETag', '')}\n{info['size']}"
    folder = cache_dir() / "remote-stores" / hashlib.sha256(version.encode()).hexdigest()[:16]
    path = folder / posixpath.basename(url)
    if path.exists() and path.stat().st_size == info["size"]:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # rename: readers see all or none
    try:
        _once(fs, url, lambda: fs.get_file(url, str(tmp)))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed download leaves nothing behind
    return path


class RemoteStoreReader(StoreReader):
    """A complete store on object storage; the same interface as StoreReader."""

    def __init__(self, url: str):
        self.fs = _filesystem()
        super().__init__(url, manifest=cached_manifest(self.fs, url))

    def _shard_url(self, name: str) -> str:
        return f"{self.shards}/{name}"

    def _check_shards(self) -> None:
        # Called by StoreReader.__init__. One LIST (paged by s3fs) gives every shard's
        # existence and size.
        self.shards = posixpath.splitext(self.path)[0] + ".shards"
        try:
            found = {
                posixpath.basename(e["name"]): e["size"]
                for e in _once(self.fs, self.shards, lambda: self.fs.ls(self.shards, detail=True))
            }
        except UserError:
            found = {}  # no shard folder: reported below as the first missing shard
        names = [f for c in self.chunks for f in (c.act_file, c.grad_file) if f]
        for f in names:
            if f not in found:
                raise UserError(f"{self.path} is truncated: shard {self._shard_url(f)} is missing")
        if sum(found[f] for f in names) != sum(c.bytes for c in self.chunks):
            raise UserError(f"{self.path} is truncated: shard sizes differ from the manifest")

    def _checked(self, name: str, data: bytes, expected: str | None) -> bytes:
        if why := checksums.bytes_mismatch(data, expected):
            raise UserError(f"shard {self._shard_url(name)} {why}; re-upload it from the local "
                            "store, or rerun the `saebench cache` command that wrote it")
        self._verified.add(name)
        return data

    def chunk_words_many(self, chunks: list[ChunkInfo], grads: bool = False) -> list[np.ndarray]:
        """Several chunks' vectors (as chunk_words), their shards fetched concurrently."""
        if grads and not self.has_grads:
            raise UserError(f"{self.path} has no gradients: cache it with --with-grads")
        files = [(c.grad_file, c.grad_xxh3) if grads else (c.act_file, c.act_xxh3) for c in chunks]
        blobs = _fetch(self.fs, [self._shard_url(name) for name, _ in files])
        return [
            vectors_from_bytes(self._checked(name, blob, expected), self.d_in)
            for (name, expected), blob in zip(files, blobs, strict=True)
        ]

    def chunk_words(self, chunk: ChunkInfo, grads: bool = False) -> np.ndarray:
        return self.chunk_words_many([chunk], grads)[0]

    def verify(self, name: str, expected: str | None) -> None:
        if name not in self._verified:
            self._checked(name, _fetch(self.fs, [self._shard_url(name)])[0], expected)

    def bad_shards(self) -> list[str]:
        """Every shard that fails its checksum, as '<url> <why>' (downloads the whole store)."""
        files = [(n, s) for c in self.chunks
                 for n, s in ((c.act_file, c.act_xxh3), (c.grad_file, c.grad_xxh3)) if n]
        bad = []
        for i in range(0, len(files), IN_FLIGHT):
            part = files[i : i + IN_FLIGHT]
            blobs = _fetch(self.fs, [self._shard_url(n) for n, _ in part])
            for (name, expected), blob in zip(part, blobs, strict=True):
                if why := checksums.bytes_mismatch(blob, expected):
                    bad.append(f"{self._shard_url(name)} {why}")
                else:
                    self._verified.add(name)
        return bad
