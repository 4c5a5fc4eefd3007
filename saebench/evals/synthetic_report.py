"""The synthetic eval's artifacts: per-SAE JSON and metric rows, one wide row per SAE, tables.

Per SAE folder `saes/<name>/`:
- `evals/synthetic.json` and `evals/synthetic.parquet`, written by the core eval's writer
  (saebench/evals/report.py), so the rows also appear in the catalog's `eval_metrics` view;
- `synthetic.parquet`: one wide row (sae, arch, trainer, data sizes, every metric), seen
  through the catalog's `synthetic_metrics` view.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from saebench.evals.context import EvalResult
from saebench.evals.report import FORMAT, write_result
from saebench.evals.synthetic_config import SyntheticConfig
from store.catalog import refresh, workspace_of, write_parquet_atomic

WIDE_FILE = "synthetic.parquet"
NOTES = {
    "data": "sae_lens.synthetic SyntheticModel: Zipfian firing 0.3 -> 0.01, unit directions; "
            "scored on a held-out stream",
    "mcc": "mean |cos| of the Hungarian matching between decoder rows and true directions",
    "classification": "mean over latents of precision/recall/F1 as a detector of the true "
                      "feature its decoder row is closest to",
}
# (column header, metric, format) of the printed and markdown tables.
COLUMNS = (("MCC", "mcc", "{:.3f}"), ("uniq", "uniqueness", "{:.3f}"),
           ("prec", "precision", "{:.3f}"), ("recall", "recall", "{:.3f}"),
           ("F1", "f1_score", "{:.3f}"), ("dead", "dead_latents", "{:.0f}"),
           ("EV", "explained_variance", "{:.3f}"), ("L0", "sae_l0", "{:.2f}"))


@dataclass
class SyntheticRow:
    """One scored SAE."""

    sae: str
    """Its folder's name (the catalog's `sae` key)."""
    arch: str
    """Registry name, or saelens_topk / saelens_batchtopk for the references."""
    trainer: str
    """saebench (our loop) or saelens (SAELens's trainer)."""
    metrics: dict[str, float]
    """sae_lens.synthetic.evals metrics, flattened, plus dead_frac."""


def write_rows(rows: list[SyntheticRow], folders: dict[str, Path], cfg: SyntheticConfig,
               meta: dict) -> None:
    """Write every row's JSON, metric rows and wide row, then refresh the catalog's views."""
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    store_path = meta["dataset"]
    for row in rows:
        folder = folders[row.arch]
        sae_cfg = json.loads((folder / "cfg.json").read_text())
        notes = {**NOTES, "trainer": row.trainer}
        write_result(folder, "synthetic", cfg, EvalResult(row.metrics, notes), sae_cfg, meta,
                     store_path)
        wide = {"sae": row.sae, "arch": row.arch, "trainer": row.trainer,
                "data": meta["dataset"], **asdict(cfg), "archs": ",".join(cfg.archs),
                **row.metrics, "created_at": created, "format": FORMAT}
        write_parquet_atomic(folder / WIDE_FILE, [wide])
    for workspace in {workspace_of(f) for f in folders.values()}:
        refresh(workspace)


def _cells(row: SyntheticRow) -> list[str]:
    return [row.arch, row.trainer] + [fmt.format(row.metrics[m]) for _, m, fmt in COLUMNS]


def describe(cfg: SyntheticConfig, true_l0: float) -> str:
    """One line naming the data and the SAEs' shared sizes (a table's title)."""
    hierarchy = "off"
    if cfg.hierarchy:
        low, high = cfg.hierarchy_branching
        branching = f"{low}" if low == high else f"{low}-{high}"
        hierarchy = (f"{cfg.root_count} roots, branching {branching}, depth "
                     f"{cfg.hierarchy_depth}, exclusive {cfg.hierarchy_exclusive:g}")
    first, last = cfg.magnitude_mean_range
    means = f"{first:g}" if first == last else f"{first:g} -> {last:g}"
    return (f"synthetic eval: d_in {cfg.d_in}, {cfg.n_features} true features (true L0 "
            f"{true_l0:.2f}), d_sae {cfg.d_sae}, k {cfg.k}, {cfg.tokens:,} training tokens, "
            f"{cfg.eval_tokens:,} eval tokens, hierarchy {hierarchy}, correlation "
            f"{'on' if cfg.correlation else 'off'}, magnitudes mean {means} std "
            f"{cfg.magnitude_std:g}")


def format_rows(rows: list[SyntheticRow], cfg: SyntheticConfig, markdown: bool = False) -> str:
    """The rows as an aligned text table, or as a Markdown table (for BENCHMARKS.md)."""
    header = ["arch", "trainer"] + [name for name, _, _ in COLUMNS]
    body = [_cells(r) for r in rows]
    title = describe(cfg, rows[0].metrics["true_l0"] if rows else float("nan"))
    if markdown:
        lines = [f"*{title}*", "", "| " + " | ".join(header) + " |",
                 "|" + "|".join(["---"] * 2 + ["---:"] * len(COLUMNS)) + "|"]
        return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])
    widths = [max(len(c) for c in col) for col in zip(header, *body, strict=True)]
    lines = [title, "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) for cells in body]
    return "\n".join(lines)
