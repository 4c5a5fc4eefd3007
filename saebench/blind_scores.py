"""Human scores from blind detection tests, kept beside the automated ones.

Each submission is its own small Parquet file, `blind_tests/<time>-<random>.parquet`, written
atomically (temp name, then rename): two people scoring at once can never overwrite each
other's rows, which a shared file rewritten on each save (as labels are) could. The catalog
view `blind_tests` globs them all. No torch here: reading scores is cheap.
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from store.catalog import VIEWS, query, write_parquet_atomic

VIEW = "blind_tests"
SCHEMA = pa.schema([
    ("sae", pa.string()),
    ("latent", pa.int32()),
    ("shown", pa.string()),  # what the person judged against: 'explanation' or 'label'
    ("description", pa.string()),  # its text
    ("explainer", pa.string()),  # the explanation's explainer; null for a label
    ("score", pa.float64()),  # the person's detection accuracy
    ("auto_score", pa.float64()),  # the autointerp judge's, for the same explanation; or null
    ("n_contexts", pa.int32()),
    ("n_firing", pa.int32()),
    ("ticked", pa.list_(pa.int32())),  # positions, in the order shown
    ("truth", pa.list_(pa.bool_())),
    ("kinds", pa.list_(pa.string())),  # 'top', 'iw' or 'random', in the order shown
    ("seed", pa.int64()),
    ("n_tokens", pa.int64()),  # held-out tokens sampled from; null: all of them
    ("same_as_eval", pa.bool_()),  # the contexts are the ones the eval's judge saw
    ("created_at", pa.string()),
])


def record(workspace: Path, row: dict) -> Path:
    """Write one submission (keys as SCHEMA; created_at is filled in); returns its file."""
    now = datetime.now(timezone.utc)
    row = {**row, "created_at": now.isoformat(timespec="microseconds")}  # orders them
    if row.get("auto_score") is not None and math.isnan(row["auto_score"]):
        row["auto_score"] = None
    missing = set(SCHEMA.names) - set(row)
    if missing:
        raise ValueError(f"blind-test record lacks {sorted(missing)}")
    name = f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}.parquet"
    path = Path(workspace) / VIEWS[VIEW].split("/")[0] / name
    write_parquet_atomic(path, pa.Table.from_pylist([row], schema=SCHEMA))
    return path


def read_scores(workspace: Path, sae: str | None = None) -> list[dict]:
    """Every recorded submission (of one SAE), oldest first."""
    if not any(Path(workspace).glob(VIEWS[VIEW])):
        return []
    sql, params = "SELECT * FROM blind_tests", []
    if sae is not None:
        sql, params = sql + " WHERE sae = ?", [sae]
    return query(Path(workspace), sql + " ORDER BY created_at, sae, latent", params).to_pylist()


def compare(workspace: Path, sae: str) -> list[dict]:
    """Per latent and description: the people's mean score, their count and the judge's."""
    rows = read_scores(workspace, sae)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["latent"], r["shown"], r["description"]), []).append(r)
    out = []
    for (latent, shown, text), rs in sorted(groups.items(), key=lambda kv: kv[0][:2]):
        auto = next((r["auto_score"] for r in reversed(rs) if r["auto_score"] is not None), None)
        out.append({"latent": latent, "shown": shown, "description": text,
                    "human_score": sum(r["score"] for r in rs) / len(rs), "attempts": len(rs),
                    "first_score": rs[0]["score"], "auto_score": auto})
    return out
