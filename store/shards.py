"""Parquet shards that hold a store's vectors, one file per chunk of sequences.

Why Parquet files behind DuckDB views rather than a native DuckDB table (measured on this
2-core machine, random fp16 at d_in 576; see BENCHMARKS.md for the full table):
- native `SMALLINT[576]` INSERT from Arrow: 0.06 GB/s; native per-sequence BLOBs: 0.08 GB/s
  and 1.8x the raw size (large blobs go to overflow blocks);
- a Parquet file with one uncompressed FIXED_LEN_BYTE_ARRAY column: 0.5 GB/s per writer
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


def write_shard(path: Path, table: pa.Table) -> int:
    """Write atomically (temp name, then rename) and return the file size in bytes."""
    tmp = path.with_name(path.name + ".tmp")
    # No compression and no dictionary: activations are incompressible, and encoding work
    # is what limits write throughput. One row group per shard keeps reads to one seek.
    pq.write_table(
        table,
        tmp,
        compression="none",
        use_dictionary=False,
        write_statistics=["seq"],
        row_group_size=max(1, table.num_rows),
    )
    os.replace(tmp, path)
    return path.stat().st_size


def read_vectors(path: Path, d_in: int, dtype: str, drop_bos: bool = True) -> torch.Tensor:
    """All vectors in a shard as a `[tokens, d_in]` tensor of the stored dtype."""
    table = pq.read_table(path, columns=["pos", "vec"] if drop_bos else ["vec"])
    col = table.column("vec").combine_chunks()
    # Zero-copy view of the fixed-size binary column's data buffer.
    buf = col.buffers()[1]
    start = col.offset * 2 * d_in
    flat = np.frombuffer(buf, dtype=np.int16, count=len(col) * d_in, offset=start * 1)
    vecs = torch.from_numpy(flat.reshape(len(col), d_in).copy()).view(STORED_DTYPES[dtype])
    if drop_bos:
        keep = torch.from_numpy(table.column("pos").to_numpy() != 0)
        vecs = vecs[keep]
    return vecs
