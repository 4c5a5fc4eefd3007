"""app/index_reader.py: keyed reads agree with a full scan, and a replaced file is re-read."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from app import index_reader


def _write(path, latents: np.ndarray, values: np.ndarray, stats=True, row_group=7) -> None:
    tmp = path.with_name(path.name + ".tmp")
    table = pa.table({"sae": ["s"] * len(latents), "latent": latents.astype(np.int32),
                      "value": values})
    pq.write_table(table, tmp, row_group_size=row_group, write_statistics=stats)
    os.replace(tmp, path)  # as every writer here does: a new inode


def test_keyed_rows_match_a_full_scan(tmp_path):
    rng = np.random.default_rng(0)
    # Sorted latents with runs that straddle row-group boundaries (groups of 7 rows).
    latents = np.sort(rng.integers(0, 40, 200))
    values = rng.standard_normal(200)
    for stats in (True, False):
        path = tmp_path / f"f{stats}.parquet"
        _write(path, latents, values, stats=stats)
        for want in ([0], [13, 39], [5, 5, 6], list(range(40)), [41], []):
            got = index_reader.rows(path, want)
            mask = np.isin(latents, want)
            assert got.num_rows == mask.sum()
            np.testing.assert_array_equal(got["value"].to_numpy(), values[mask])
    assert index_reader.rows(tmp_path / "absent.parquet", [1]) is None
    assert index_reader.rows(path, [1], columns=["latent", "not_there"]).column_names == [
        "latent"]


def test_a_replaced_file_is_read_anew(tmp_path):
    path = tmp_path / "f.parquet"
    _write(path, np.arange(10), np.zeros(10))
    assert index_reader.rows(path, [3])["value"].to_pylist() == [0.0]
    assert index_reader.num_rows(path) == 10
    assert index_reader.whole(path).num_rows == 10
    _write(path, np.arange(20), np.ones(20), row_group=3)  # other footer, same path
    assert index_reader.rows(path, [3, 15])["value"].to_pylist() == [1.0, 1.0]
    assert index_reader.num_rows(path) == 20
    assert index_reader.whole(path).num_rows == 20
