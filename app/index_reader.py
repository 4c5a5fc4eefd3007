"""Keyed reads of one SAE's own files, for pages about a handful of its latents.

A feature page wants ~30 rows out of files with millions. Through the catalog, every render
opens a connection and DuckDB re-parses each file's footer and re-plans the glob, which cost
~150 of the page's ~185 ms (benchmarks/app_bench.py, 16k latents). Here each file's footer and
the latent range of every row group are parsed once per file version and kept in memory;
a lookup then reads only the row groups that can hold the wanted latents (the index writes
files sorted by latent in small row groups: saebench/index/schema.py write_index_table).

A version is (inode, mtime, size) taken from the open handle itself, so a file replaced by an
atomic rename (every writer here) is never read with the old footer. Callers fall back to SQL
when a file is absent; notebooks and the other pages keep using the catalog's views.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

_LOCK = threading.Lock()  # lru_cache is thread-safe, but one footer parse per version is enough


@dataclass(frozen=True)
class _Footer:
    metadata: pq.FileMetaData
    lo: np.ndarray
    """Smallest latent of each row group (from the writer's statistics)."""
    hi: np.ndarray
    """Largest latent of each row group."""


@lru_cache(maxsize=64)
def _footer(path: str, version: tuple) -> _Footer:
    meta = pq.read_metadata(path)
    names = meta.schema.names
    n = meta.num_row_groups
    lo, hi = np.full(n, np.iinfo(np.int64).min), np.full(n, np.iinfo(np.int64).max)
    if "latent" in names:
        col = names.index("latent")
        for g in range(n):
            st = meta.row_group(g).column(col).statistics
            if st is not None and st.has_min_max:
                lo[g], hi[g] = st.min, st.max
    return _Footer(meta, lo, hi)


def rows(path: Path, latents: list[int], columns: list[str] | None = None) -> pa.Table | None:
    """The rows of a Parquet file whose `latent` is one of `latents` (None if there is no
    file). Without statistics every row group is read, so the answer is the same, only slower.
    """
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed below; ParquetFile reads from it)
    except FileNotFoundError:
        return None
    with handle:
        st = os.fstat(handle.fileno())
        with _LOCK:
            footer = _footer(str(path), (st.st_ino, st.st_mtime_ns, st.st_size))
        want = np.asarray(sorted(set(int(i) for i in latents)), dtype=np.int64)
        if not len(want):
            return pq.ParquetFile(handle, metadata=footer.metadata).schema_arrow.empty_table()
        # A row group can hold a wanted latent iff some wanted value lies in [lo, hi].
        first = np.searchsorted(want, footer.lo, side="left")
        groups = np.nonzero((first < len(want)) & (want[np.minimum(first, len(want) - 1)]
                                                   <= footer.hi))[0]
        pf = pq.ParquetFile(handle, metadata=footer.metadata)
        if columns is not None:  # an older index may lack a newer column: leave it out
            columns = [c for c in columns if c in pf.schema_arrow.names]
        table = (pf.read_row_groups(groups.tolist(), columns=columns) if len(groups)
                 else pf.schema_arrow.empty_table())
    if "latent" not in table.column_names:
        return table
    return table.filter(pc.is_in(table["latent"], pa.array(want, type=table["latent"].type)))


def num_rows(path: Path) -> int | None:
    """Rows in a Parquet file, from its footer (None if there is no file)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    with _LOCK:
        return _footer(str(path), (st.st_ino, st.st_mtime_ns, st.st_size)).metadata.num_rows


_WHOLE: dict[str, tuple[tuple, pa.Table]] = {}  # path -> (version, table); at most 16


def whole(path: Path) -> pa.Table | None:
    """A small file (a vocabulary, explanations, labels) read once per version."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed by the with block)
    except FileNotFoundError:
        return None
    with handle, _LOCK:
        st = os.fstat(handle.fileno())
        version = (st.st_ino, st.st_mtime_ns, st.st_size)
        hit = _WHOLE.get(str(path))
        if hit is not None and hit[0] == version:
            return hit[1]
        table = pq.read_table(handle)
        if len(_WHOLE) >= 16 and str(path) not in _WHOLE:
            _WHOLE.pop(next(iter(_WHOLE)))
        _WHOLE[str(path)] = (version, table)
        return table
