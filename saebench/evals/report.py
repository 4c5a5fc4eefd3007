"""Eval artifacts: a versioned JSON file, catalog rows (Parquet) and a table on stdout.

For an SAE folder `saes/<name>/` and eval `core`:
- `saes/<name>/evals/core.json`: format version, code version, eval config, SAE cfg, store
  meta, notes and the flat metrics;
- `saes/<name>/evals/core.parquet`: one row per metric (sae, eval, metric, value, ...), seen
  through the catalog's `eval_metrics` view;
- `saes/<name>/features/<table>.parquet` for each per-feature table (core: `fire_counts`,
  seen as `feature_counts`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pyarrow as pa

from saebench.evals.context import EvalResult, sae_name
from store.catalog import refresh, workspace_of, write_parquet_atomic

FORMAT = "saebench-eval/1"
_EVALS_DIR = Path(__file__).parent


def code_version() -> dict[str, str]:
    """The package version, a hash of the eval sources (no git needed) and key libraries."""
    digest = hashlib.sha256()
    for path in sorted(_EVALS_DIR.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    out = {"evals_sha256": digest.hexdigest()[:16]}
    for package in ("saebench", "torch", "transformer-lens", "sae-lens"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "unknown"
    return out


def _json_safe(value):
    """NaN and inf are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(_json_safe(payload), indent=2, default=str) + "\n")
    os.replace(tmp, path)


def write_result(
    sae_dir: Path,
    eval_name: str,
    config,
    result: EvalResult,
    sae_cfg: dict,
    store_meta: dict,
    store_path: str,
) -> Path:
    """Write one eval's JSON, metric rows and feature tables; refresh the catalog views."""
    sae_dir = Path(sae_dir)
    name = sae_name(sae_dir)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    payload = {
        "format": FORMAT,
        "eval": eval_name,
        "sae": name,
        "created_at": created,
        "code": code_version(),
        "config": asdict(config),
        "sae_cfg": sae_cfg,
        "store": {"path": store_path, "meta": store_meta},
        "notes": result.notes,
        "metrics": result.metrics,
    }
    json_path = sae_dir / "evals" / f"{eval_name}.json"
    write_json_atomic(json_path, payload)
    rows = [
        {"sae": name, "eval": eval_name, "metric": metric, "value": float(value),
         "store": store_path, "created_at": created, "format": FORMAT}
        for metric, value in result.metrics.items()
    ]
    write_parquet_atomic(sae_dir / "evals" / f"{eval_name}.parquet", rows)
    for table, columns in result.tables.items():
        n = len(next(iter(columns.values()))) if columns else 0
        arrays = {"sae": pa.array([name] * n, pa.string())}
        arrays |= {col: pa.array(values) for col, values in columns.items()}
        write_parquet_atomic(sae_dir / "features" / f"{table}.parquet", pa.table(arrays))
    refresh(workspace_of(sae_dir))
    return json_path


# Metric name prefix -> section of the stdout table, in display order.
SECTIONS = {
    "reconstruction": ("n_tokens", "l0", "l1", "mse", "explained_variance", "fvu", "cosine_sim",
                       "relative_reconstruction_bias", "total_variance", "l2_"),
    "downstream": ("ce_", "delta_ce", "kl_"),
    "features": ("dead_window", "pct_", "log10_density", "max_cos", "enc_dec_cos", "max_enc_cos",
                 "encoder_norm"),
    "gradient-aware selection (g-SAE)": ("grad_aware/",),
}


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.6g}"


def format_table(eval_name: str, sae: str, result: EvalResult) -> str:
    """A readable, sectioned two-column table with the notes underneath."""
    lines = [f"{eval_name} eval of {sae}"]
    width = max((len(m) for m in result.metrics), default=10)
    shown: set[str] = set()
    for section, prefixes in SECTIONS.items():
        names = [m for m in result.metrics if m not in shown and m.startswith(prefixes)]
        if names:
            lines.append(f"  {section}")
            lines += [f"    {m:<{width}}  {_fmt(result.metrics[m]):>14}" for m in names]
            shown.update(names)
    rest = [m for m in result.metrics if m not in shown]
    if rest:
        lines.append("  other")
        lines += [f"    {m:<{width}}  {_fmt(result.metrics[m]):>14}" for m in rest]
    lines += [f"  note: {key}: {text}" for key, text in result.notes.items()]
    return "\n".join(lines)
