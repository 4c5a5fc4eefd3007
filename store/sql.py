"""The SQL face of a store: schema, decode macros and views that notebooks query.

`SELECT act FROM activations WHERE seq = 3 AND pos = 7` returns the vector as FLOAT[], decoded
from the 2-byte storage by the macros below (DuckDB has no 16-bit float type). Training never
goes through these views; they exist so that SQL reaches every vector.
"""

from __future__ import annotations

from pathlib import Path

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)",
    "CREATE TABLE IF NOT EXISTS vocab (token_id INTEGER PRIMARY KEY, token VARCHAR)",
    """CREATE TABLE IF NOT EXISTS chunks (
        chunk INTEGER PRIMARY KEY, split VARCHAR, first_seq INTEGER, n_seq INTEGER,
        n_tokens BIGINT, act_file VARCHAR, grad_file VARCHAR, bytes BIGINT,
        sum_norm DOUBLE, sum_x DOUBLE[], n_stat BIGINT,
        act_xxh3 VARCHAR, grad_xxh3 VARCHAR)""",
    "CREATE TABLE IF NOT EXISTS token_ids (seq INTEGER, pos SMALLINT, token_id INTEGER)",
    # fp16 bit pattern (as 0..65535) to a number; IEEE 754 half: 1 sign, 5 exponent, 10 mantissa.
    """CREATE OR REPLACE MACRO saebench_f16(u) AS
       (CASE WHEN u >= 32768 THEN -1.0 ELSE 1.0 END) * (CASE
         WHEN (u // 1024) % 32 = 0 THEN (u % 1024) * 5.960464477539063e-08
         WHEN (u // 1024) % 32 = 31 THEN
           CASE WHEN u % 1024 = 0 THEN 'inf'::DOUBLE ELSE 'nan'::DOUBLE END
         ELSE (1024 + u % 1024) * pow(2.0, (u // 1024) % 32 - 25) END)""",
    # bfloat16: 1 sign, 8 exponent, 7 mantissa (the top half of a float32).
    """CREATE OR REPLACE MACRO saebench_bf16(u) AS
       (CASE WHEN u >= 32768 THEN -1.0 ELSE 1.0 END) * (CASE
         WHEN (u // 128) % 256 = 0 THEN (u % 128) * pow(2.0, -133)
         WHEN (u // 128) % 256 = 255 THEN
           CASE WHEN u % 128 = 0 THEN 'inf'::DOUBLE ELSE 'nan'::DOUBLE END
         ELSE (128 + u % 128) * pow(2.0, (u // 128) % 256 - 134) END)""",
    # Little-endian 16-bit words of a blob, as integers.
    """CREATE OR REPLACE MACRO saebench_words(b) AS
       list_transform(range(octet_length(b) // 2),
         lambda i: ('0x' || substr(hex(b), 4 * i + 3, 2)
                    || substr(hex(b), 4 * i + 1, 2))::INTEGER)""",
    """CREATE OR REPLACE MACRO saebench_vec(b, dtype) AS
       list_transform(saebench_words(b), lambda u:
         (CASE WHEN dtype = 'bfloat16' THEN saebench_bf16(u) ELSE saebench_f16(u) END)::FLOAT)""",
]

TOKENS_VIEW = """CREATE OR REPLACE {kind} tokens AS
    SELECT t.seq, t.pos, t.token_id, v.token, c.split
    FROM token_ids t
    JOIN chunks c ON t.seq >= c.first_seq AND t.seq < c.first_seq + c.n_seq
    LEFT JOIN vocab v USING (token_id)"""


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def vector_views(
    shard_dir: Path,
    act_files: list[str],
    grad_files: list[str],
    kind: str,
    act_dtype: str,
    grad_dtype: str,
) -> list[str]:
    """Views over exactly the committed shards (never a glob, which could catch a shard whose
    chunk is not committed yet)."""
    sqls = []
    for name, files, dtype in (
        ("activations", act_files, act_dtype),
        ("gradients", grad_files, grad_dtype),
    ):
        if not files:
            sqls.append(f"DROP VIEW IF EXISTS {name}")
            continue
        paths = ", ".join(_quote(str(shard_dir.resolve() / f)) for f in files)
        sqls.append(
            f"CREATE OR REPLACE {kind} {name}_raw AS SELECT seq, pos, vec "
            f"FROM read_parquet([{paths}])"
        )
        sqls.append(
            f"CREATE OR REPLACE {kind} {name} AS SELECT seq, pos, "
            f"saebench_vec(vec, '{dtype}') AS {name[:3] if name == 'activations' else 'grad'} "
            f"FROM {name}_raw"
        )
    return sqls
