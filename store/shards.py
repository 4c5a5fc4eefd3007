"""Parquet shards that hold a store's vectors, one file per chunk of sequences.

Why Parquet files behind DuckDB views rather than a native DuckDB table (measured on this
2-core machine, random fp16 at d_in 576; see BENCHMARKS.md for the full table):
- native `SMALLINT[576]` INSERT from Arrow: 0.06 GB/s; native per-sequence BLOBs: 0.08 GB/s
  and 1.8x the raw size (large blobs go to overflow blocks);
- a Parquet file with one uncompressed FIXED_LEN_BYTE_ARRAY column: 1.0-2.7 GB/s per writer
  thread, 1.007x the raw size, and shards are written in parallel because each is its own file.
Each row is one token: (seq, pos, vector bytes). Vectors are 2 bytes per element: fp16 for
activations, bf16 for gradients (whose magnitudes underflow fp16).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

# torch dtype of the stored vectors, by the name recorded in meta.
STORED_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def encode_rows(seqs: np.ndarray, vectors: torch.Tensor, dtype: str) -> pa.Table:
    """A table of one row per token from `vectors [n_seq, ctx, d]` for sequence ids `seqs`."""
    n_seq, ctx, d = vectors.shape
    raw = vectors.to(STORED_DTYPES[dtype]).contiguous().view(torch.int16).numpy()
    col = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(2 * d), n_seq * ctx, [None, pa.py_buffer(raw)]
    )
    return pa.table(
        {
            "seq": pa.array(np.repeat(seqs.astype(np.int32), ctx)),
            "pos": pa.array(np.tile(np.arange(ctx, dtype=np.int16), n_seq)),
            "vec": col,
        }
    )


LAYOUT_KEY = b"saebench.layout"
LAYOUT = b"one-plain-page"


def write_shard(path: Path, table: pa.Table) -> int:
    """Write atomically (temp name, then rename) and return the file size in bytes."""
    tmp = path.with_name(path.name + ".tmp")
    # No compression, no dictionary, and one data page per column: the vectors then sit in
    # the file as one contiguous run of raw bytes, which readers memory-map like an .npy
    # (see open_vectors). Measured cost of the single page: ~20% of write speed, which is
    # still above 1 GB/s per thread on 2 cores (BENCHMARKS.md).
    table = table.replace_schema_metadata({LAYOUT_KEY: LAYOUT})
    pq.write_table(
        table,
        tmp,
        compression="none",
        use_dictionary=False,
        write_statistics=["seq"],
        row_group_size=max(1, table.num_rows),
        data_page_size=1 << 40,
    )
    os.replace(tmp, path)
    return path.stat().st_size


def _plain_vectors_offset(meta: pq.FileMetaData, d_in: int) -> int | None:
    """Where the raw vectors start in a shard written by write_shard, else None."""
    col = meta.row_group(0).column(2) if meta.num_row_groups == 1 else None
    rows, row_bytes = meta.num_rows, 2 * d_in
    if (
        col is not None
        and (meta.metadata or {}).get(LAYOUT_KEY) == LAYOUT
        and col.compression == "UNCOMPRESSED"
        and col.dictionary_page_offset is None
        and 0 <= col.total_compressed_size - rows * row_bytes < 4096
    ):
        # PLAIN fixed-size values are the last bytes of the single page (after its header
        # and the definition levels).
        return col.data_page_offset + col.total_compressed_size - rows * row_bytes
    return None


def _vectors_via_arrow(source, meta: pq.FileMetaData, d_in: int) -> np.ndarray:
    vec = pq.read_table(source, columns=["vec"]).column("vec").combine_chunks()
    data = np.frombuffer(
        vec.buffers()[1], dtype=np.int16, count=meta.num_rows * d_in, offset=vec.offset * 2 * d_in
    )
    return data.reshape(meta.num_rows, d_in)


def open_vectors(path: Path, d_in: int) -> np.ndarray:
    """All rows of a shard as an int16 array `[rows, d_in]` (2-byte words), memory-mapped.

    Shards written by write_shard are mapped without parsing; any other Parquet file with the
    same columns (or a layout we do not recognise) is read through pyarrow instead.
    """
    meta = pq.read_metadata(path)
    offset = _plain_vectors_offset(meta, d_in)
    if offset is None:
        return _vectors_via_arrow(path, meta, d_in)
    return np.memmap(path, dtype=np.int16, mode="r", offset=offset, shape=(meta.num_rows, d_in))


def vectors_from_bytes(data: bytes, d_in: int) -> np.ndarray:
    """open_vectors for a shard held in memory (read from object storage): a read-only view."""
    meta = pq.read_metadata(pa.BufferReader(data))
    offset = _plain_vectors_offset(meta, d_in)
    if offset is None:
        return _vectors_via_arrow(pa.BufferReader(data), meta, d_in)
    words = np.frombuffer(data, dtype=np.int16, count=meta.num_rows * d_in, offset=offset)
    return words.reshape(meta.num_rows, d_in)


def non_bos_rows(n_rows: int, ctx: int) -> np.ndarray:
    """Row indices of a chunk's positions >= 1 (rows are whole windows, ordered seq, pos)."""
    return np.arange(n_rows).reshape(-1, ctx)[:, 1:].reshape(-1)


def as_tensor(words: np.ndarray, dtype: str) -> torch.Tensor:
    """2-byte words (an owned array, not a memmap) as a tensor of the stored float type."""
    return torch.from_numpy(words).view(STORED_DTYPES[dtype])
