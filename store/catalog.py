"""The workspace catalog: one DuckDB file of views over files that each writer owns.

DuckDB allows one writing process *or* many readers per file. If training, evaluation,
indexing and the browser all wrote into one catalog table they would block each other, so
instead every writer writes its own small Parquet files inside the SAE's folder
(`saes/<name>/curves.parquet`, `saes/<name>/evals/core.parquet`, ...), atomically, and
`catalog.duckdb` only holds views that glob them. Globs are evaluated at query time, so a
reader sees new rows without the catalog ever being rewritten, and nothing blocks anything.

Views are stored with absolute paths (so a notebook can open catalog.duckdb directly);
`connect()` re-creates them as TEMP views at the workspace's current location, so a moved
workspace still works through saebench.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

CATALOG_FILE = "catalog.duckdb"

# view name -> glob relative to the workspace. Each file carries an `sae` column, except the
# circuit files, which span several SAEs and carry a `circuit` column (the file's name).
VIEWS: dict[str, str] = {
    "training_curves": "saes/*/curves.parquet",
    "eval_metrics": "saes/*/evals/*.parquet",
    "feature_counts": "saes/*/features/fire_counts.parquet",
    # Written by `saebench eval --evals autointerp`: one explanation and score per latent.
    "explanations": "saes/*/features/explanations.parquet",
    # Written by `saebench eval --evals synthetic`: one wide row per SAE.
    "synthetic_metrics": "saes/*/synthetic.parquet",
    # Written by `saebench index` (schema: saebench/index/schema.py).
    "features": "saes/*/index/features.parquet",
    "contexts": "saes/*/index/contexts.parquet",
    "logit_effects": "saes/*/index/logits.parquet",
    "neighbours": "saes/*/index/neighbours.parquet",
    "vocab": "saes/*/index/vocab.parquet",
    "head_attribution": "saes/*/index/head_attribution.parquet",  # attn.hook_z SAEs only
    # Written by `saebench circuits` (saebench/circuits/output.py write_catalog).
    "circuit_sweeps": "circuits/*.sweep.parquet",
    "circuit_nodes": "circuits/*.nodes.parquet",
    "circuit_edges": "circuits/*.edges.parquet",
    # Written by `saebench graph` (saebench/circuits/graph_output.py): one prompt's graph.
    "graph_nodes": "graphs/*.nodes.parquet",
    "graph_edges": "graphs/*.edges.parquet",
    # Written by the browser only: one small file, rewritten atomically on each save.
    "labels": "labels.parquet",
    # Written by the browser's blind test: one file per submission (saebench/blind_scores.py).
    "blind_tests": "blind_tests/*.parquet",
}


def workspace_of(sae_dir: Path) -> Path:
    """The workspace that holds an SAE folder: `runs/` for `runs/saes/NAME`."""
    sae_dir = Path(sae_dir).resolve()
    return sae_dir.parent.parent if sae_dir.parent.name == "saes" else sae_dir.parent


def write_parquet_atomic(path: Path, rows: list[dict] | pa.Table) -> None:
    """Write a small table so that readers see either the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _view_sql(workspace: Path, name: str, temp: bool) -> str | None:
    if not list(workspace.glob(VIEWS[name])):
        return None  # read_parquet fails on an empty glob; the view appears with its first file
    kind = "TEMP VIEW" if temp else "VIEW"
    return (
        f"CREATE OR REPLACE {kind} {name} AS "
        f"SELECT * FROM read_parquet({_glob_literal(workspace, name)}, union_by_name = true)"
    )


def refresh(workspace: Path, attempts: int = 20) -> bool:
    """(Re)create the persistent views; returns False if a reader held the file throughout."""
    workspace = Path(workspace)
    workspace.mkdir(parents=True, exist_ok=True)
    for attempt in range(attempts):
        try:
            with duckdb.connect(str(workspace / CATALOG_FILE)) as con:
                for name in VIEWS:
                    sql = _view_sql(workspace, name, temp=False)
                    if sql:
                        con.execute(sql)
            return True
        except duckdb.IOException:
            # Someone has the catalog open; the old views glob the same files, so new rows
            # are visible anyway. Retry briefly, then give up quietly.
            time.sleep(0.05 * (attempt + 1))
    return False


def connect(workspace: Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection to a workspace's catalog, views pointing at where it is now."""
    workspace = Path(workspace)
    path = workspace / CATALOG_FILE
    con = duckdb.connect(str(path), read_only=True) if path.exists() else duckdb.connect()
    # Binding a view reads its Parquet footers, so re-create only the views that the file
    # lacks or that point elsewhere (a moved workspace); this halves a page's query time.
    stored = dict(con.execute(
        "SELECT view_name, sql FROM duckdb_views() WHERE NOT internal AND NOT temporary"
    ).fetchall())
    for name in VIEWS:
        sql = _view_sql(workspace, name, temp=True)
        if sql and _glob_literal(workspace, name) not in stored.get(name, ""):
            con.execute(sql)
    return con


def _glob_literal(workspace: Path, name: str) -> str:
    return "'" + str(workspace.resolve() / VIEWS[name]).replace("'", "''") + "'"


def query(workspace: Path, sql: str, params: list | None = None) -> pa.Table:
    """Run one read-only query against a workspace's catalog."""
    with connect(workspace) as con:
        return con.sql(sql, params=params or None).to_arrow_table()
