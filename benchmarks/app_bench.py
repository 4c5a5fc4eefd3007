"""Feature-page query latency over a large synthetic index, through store.catalog.query.

Run: `.venv/bin/python benchmarks/app_bench.py [--latents 16384] [--top 20] [--per-bucket 5]
[--context 16] [--pages 200] [--keep DIR]`. It writes two SAEs' index files at one hook with
random data following saebench/index/schema.py, through the index writer itself (same sort
order and row groups), with their decoders, labels and explanations, refreshes the catalog,
then times every query a feature page makes for random latents, and the page's own data code
(app/feature_card.gather and the exports), and prints markdown tables of p50/p95.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from saebench.index import schema
from store.catalog import connect, query, refresh, write_parquet_atomic

SAE = "bench-sae"
D_VOCAB = 49152

PAGE = {
    "stats": "SELECT * FROM features WHERE sae = ? AND latent = ?",
    # Top contexts and interval samples in one scan (they are adjacent rows of one file).
    "contexts": "SELECT * EXCLUDE (sae, latent) FROM contexts "
                "WHERE sae = ? AND latent = ? ORDER BY kind DESC, bucket, rank",
    # The strings of the tokens just fetched (the page passes their ids, see page_params).
    "token strings": "SELECT token_id, token FROM vocab WHERE sae = ? "
                     "AND token_id IN (SELECT unnest(?::INTEGER[]))",
    "logits": "SELECT l.kind, l.rank, l.value, v.token FROM logit_effects l JOIN vocab v "
              "ON v.sae = l.sae AND v.token_id = l.token_id "
              "WHERE l.sae = ? AND l.latent = ? ORDER BY l.kind, l.rank",
    "neighbours": "SELECT kind, rank, other, value FROM neighbours "
                  "WHERE sae = ? AND latent = ? ORDER BY kind, rank",
    "label": "SELECT label FROM labels WHERE sae = ? AND latent = ?",
    # What app/data.py top_tokens asks for the 20 neighbours. Indexes from before
    # features.top_tokens fall back to aggregating their contexts, which cost about as much
    # again as the contexts query.
    "neighbour tokens": "SELECT latent, top_tokens FROM features WHERE sae = ? "
                        "AND latent IN ({marks})",
    "explanations": "SELECT latent, explanation, explainer, score FROM explanations "
                    "WHERE sae = ? AND latent IN ({marks})",
}
D_IN = 576
OTHER = "bench-sae-b"  # a second SAE at the same hook: the feature page's cross-SAE pane


def _lists(lengths: np.ndarray, values: pa.Array) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def contexts(rng: np.random.Generator, d_sae: int, top: int, per: int, n: int) -> pa.Table:
    """Top and interval contexts in (latent, kind, bucket, rank) order, full-width windows."""
    per_latent = top + schema.N_BUCKETS * per
    latent = np.repeat(np.arange(d_sae, dtype=np.int32), per_latent)
    is_top = np.tile(np.arange(per_latent) < top, d_sae)
    bucket = np.tile(np.r_[np.full(top, -1), np.repeat(np.arange(schema.N_BUCKETS), per)], d_sae)
    rank = np.tile(np.r_[np.arange(top), np.tile(np.arange(per), schema.N_BUCKETS)], d_sae)
    rows, width = len(latent), 2 * n + 1
    tokens = pa.array(rng.integers(0, D_VOCAB, rows * width, dtype=np.int32))
    acts = pa.array(rng.random(rows * width, dtype=np.float32).astype(np.float16))
    lengths = np.full(rows, width)
    return pa.table({
        "sae": pa.array([SAE] * rows), "latent": latent,
        "kind": pa.array(np.where(is_top, "top", "interval")),
        "bucket": bucket.astype(np.int16), "rank": rank.astype(np.int16),
        "seq": rng.integers(0, 1 << 20, rows, dtype=np.int32),
        "pos": rng.integers(0, 1024, rows).astype(np.int16),
        "act": rng.random(rows, dtype=np.float32), "center": np.full(rows, n, dtype=np.int16),
        "tokens": _lists(lengths, tokens), "acts": _lists(lengths, acts),
        # Loss effects on top contexts only (interval samples: null), as the index writes them.
        "loss_effects": pa.ListArray.from_arrays(
            pa.array(np.arange(rows + 1, dtype=np.int32) * width),
            pa.array(rng.standard_normal(rows * width, dtype=np.float32).astype(np.float16)),
            mask=pa.array(~is_top)),
    }, schema=schema.CONTEXTS)


def ranked(rng, d_sae: int, kinds: tuple[str, str], other: str, table_schema) -> pa.Table:
    n = 2 * 10
    return pa.table({
        "sae": pa.array([SAE] * d_sae * n),
        "latent": np.repeat(np.arange(d_sae, dtype=np.int32), n),
        "kind": pa.array(np.tile(np.repeat(kinds, 10), d_sae)),
        "rank": np.tile(np.arange(10, dtype=np.int16), 2 * d_sae),
        other: rng.integers(0, min(d_sae, D_VOCAB), d_sae * n, dtype=np.int32),
        "value": rng.standard_normal(d_sae * n, dtype=np.float32),
    }, schema=table_schema)


def features(rng, d_sae: int) -> pa.Table:
    fires = rng.integers(0, 100_000, d_sae)
    hist = _lists(np.full(d_sae, schema.HIST_BINS), pa.array(
        rng.integers(0, 1000, d_sae * schema.HIST_BINS)))
    return pa.table({
        "sae": pa.array([SAE] * d_sae), "latent": np.arange(d_sae, dtype=np.int32),
        "tokens_seen": np.full(d_sae, 10_000_000), "fires": fires, "density": fires / 1e7,
        "max_act": rng.random(d_sae, dtype=np.float32), "mean_act": rng.random(d_sae,
                                                                               dtype=np.float32),
        "hist_counts": hist, "dead": fires == 0, "dense": fires / 1e7 > 0.01,
        "top_tokens": _lists(np.full(d_sae, schema.N_TOP_TOKENS), pa.array(rng.integers(
            0, D_VOCAB, d_sae * schema.N_TOP_TOKENS, dtype=np.int32))),
    }, schema=schema.FEATURES)


def sae_folder(ws: Path, name: str, d_sae: int, rng) -> None:
    """cfg.json and a random W_dec: what the cross-SAE pane reads (app/cross_sae.py)."""
    import json

    from safetensors.numpy import save_file

    folder = ws / "saes" / name
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"W_dec": rng.standard_normal((d_sae, D_IN), dtype=np.float32)},
              str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({
        "d_in": D_IN, "d_sae": d_sae, "architecture": "topk",
        "metadata": {"model_name": "bench", "hook_name": "blocks.7.hook_resid_post"}}))


def build(ws: Path, args) -> str:
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    ctx = build_index(ws, SAE, args, rng)
    build_index(ws, OTHER, args, rng)
    for name in (SAE, OTHER):
        sae_folder(ws, name, args.latents, rng)
    explained = rng.choice(args.latents, args.latents // 10, replace=False)
    write_parquet_atomic(ws / "saes" / SAE / "features" / "explanations.parquet", pa.table({
        "sae": [SAE] * len(explained), "latent": explained.astype(np.int64),
        "explanation": [f"explanation {i}" for i in explained],
        "explainer": ["token-pattern"] * len(explained),
        "score": rng.random(len(explained)), "fires": np.full(len(explained), 100)}))
    labelled = rng.choice(args.latents, args.latents // 10, replace=False)
    write_parquet_atomic(ws / "labels.parquet", pa.table({
        "sae": [SAE] * len(labelled), "latent": labelled.astype(np.int32),
        "label": [f"label {i}" for i in labelled]}))
    refresh(ws)
    slots = ctx.num_rows * (2 * args.context + 1)
    size = (ws / "saes" / SAE / schema.INDEX_DIR / schema.CONTEXTS_FILE).stat().st_size / 1e6
    return (f"2 SAEs at one hook, each {args.latents} latents; contexts: {ctx.num_rows} rows × "
            f"{2 * args.context + 1} tokens = {slots / 1e6:.1f}M token slots ({size:.0f} MB) "
            f"with loss effects on top contexts; labels and explanations on 10% of latents; "
            f"built in {time.perf_counter() - t0:.1f} s")


def build_index(ws: Path, name: str, args, rng) -> pa.Table:
    """One SAE's index files, random but following saebench/index/schema.py."""
    out = ws / "saes" / name / schema.INDEX_DIR
    ctx = contexts(rng, args.latents, args.top, args.per_bucket, args.context)
    ctx = ctx.set_column(0, "sae", pa.array([name] * ctx.num_rows))
    schema.write_index_table(out / schema.CONTEXTS_FILE, ctx)

    def named(table: pa.Table) -> pa.Table:
        return table.set_column(0, "sae", pa.array([name] * table.num_rows))

    schema.write_index_table(out / schema.FEATURES_FILE, named(features(rng, args.latents)))
    schema.write_index_table(out / schema.LOGITS_FILE, named(ranked(
        rng, args.latents, ("top", "bottom"), "token_id", schema.LOGITS)))
    schema.write_index_table(out / schema.NEIGHBOURS_FILE, named(ranked(
        rng, args.latents, ("decoder", "coactivation"), "other", schema.NEIGHBOURS)))
    vocab = pa.table({"sae": [name] * D_VOCAB, "token_id": np.arange(D_VOCAB, dtype=np.int32),
                      "token": [f"tok{i}" for i in range(D_VOCAB)]}, schema=schema.VOCAB)
    schema.write_index_table(out / schema.VOCAB_FILE, vocab)
    return ctx


def page_params(name: str, latent: int, fetched: dict) -> list:
    if name == "token strings":
        ids = pc.unique(pc.list_flatten(fetched["contexts"]["tokens"]))
        return [SAE, ids.to_pylist()]
    if name in ("neighbour tokens", "explanations"):
        return [SAE, *sorted(set(fetched["neighbours"]["other"].to_pylist()))]
    return [SAE, latent]


def page_sql(name: str, params: list) -> str:
    return PAGE[name].replace("{marks}", ", ".join("?" * (len(params) - 1)))


def time_pages(ws: Path, args, one_connection: bool) -> dict[str, list[float]]:
    """Per-query and whole-page times; with one_connection the page shares one connection."""
    rng = np.random.default_rng(1)
    times: dict[str, list[float]] = {name: [] for name in [*PAGE, "whole page"]}
    for latent in rng.integers(0, args.latents, args.pages + 5):
        t_page, fetched = time.perf_counter(), {}
        con = connect(ws) if one_connection else None
        for name, sql in PAGE.items():
            t0, params = time.perf_counter(), page_params(name, int(latent), fetched)
            sql = page_sql(name, params)
            if con is None:
                fetched[name] = query(ws, sql, params)
            else:
                fetched[name] = con.sql(sql, params=params).to_arrow_table()
            times[name].append((time.perf_counter() - t0) * 1e3)
        if con is not None:
            con.close()
        times["whole page"].append((time.perf_counter() - t_page) * 1e3)
    return {k: v[5:] for k, v in times.items()}  # the first pages warm the OS cache


def time_app(ws: Path, args) -> tuple[dict[str, list[float]], float]:
    """C: the page's own code: one Catalog, n_latents and feature_card.gather (the queries
    above, the cross-SAE pane's decoder product and its lookups), which every render runs;
    the exports, made only on a click; and the decoders' cold load (once per weights file
    per process, app/cross_sae.py)."""
    from app import cross_sae, feature_card
    from app.data import Catalog

    t0 = time.perf_counter()
    cross_sae.nearest(ws, SAE, 0)
    cold = (time.perf_counter() - t0) * 1e3
    rng = np.random.default_rng(2)
    times: dict[str, list[float]] = {"page data (one render)": [], "exports (on click)": []}
    for latent in rng.integers(0, args.latents, args.pages + 5):
        t0 = time.perf_counter()
        with Catalog(ws) as db:
            db.n_latents(SAE)
            card = feature_card.gather(db, ws, SAE, int(latent))
        t1 = time.perf_counter()
        feature_card.to_json(card), feature_card.to_html(card)
        t2 = time.perf_counter()
        for name, ms in (("page data (one render)", t1 - t0), ("exports (on click)", t2 - t1)):
            times[name].append(ms * 1e3)
    return {k: v[5:] for k, v in times.items()}, cold


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_name() -> str:
    info = Path("/proc/cpuinfo")
    names = [ln.split(":", 1)[1].strip() for ln in info.read_text().splitlines()
             if ln.startswith("model name")] if info.exists() else []
    return f"{names[0] if names else platform.machine()}, {os.cpu_count()} cores"


def report(per_query: dict, per_page: dict, built: str, args, app: dict, cold: float) -> str:
    lines = [
        "## Feature page queries (benchmarks/app_bench.py)", "",
        f"- device: {cpu_name()}; date: {dt.date.today()}; commit: {git_commit()}",
        f"- command: `{shlex.join([sys.executable, *sys.argv])}`",
        f"- data: {built}",
        f"- {args.pages} random latents. A: each query through `store.catalog.query` (a fresh "
        "read-only connection per query); B: one `store.catalog.connect` per page, its opening "
        "counted in the page. Target: page p95 < 100 ms.", "",
        "| query | A p50 ms | A p95 ms | B p50 ms | B p95 ms |", "|---|---|---|---|---|",
    ]
    for name in per_query:
        a, b = per_query[name], per_page[name]
        lines.append(f"| {name} | {np.percentile(a, 50):.1f} | {np.percentile(a, 95):.1f} "
                     f"| {np.percentile(b, 50):.1f} | {np.percentile(b, 95):.1f} |")
    lines += ["", f"C: the page's own code: one Catalog, n_latents and app/feature_card.gather "
              "(every render; target p95 < 100 ms), and the JSON + HTML exports (on a click); "
              f"the decoders' first load, once per process: {cold:.0f} ms.",
              "", "| app code | C p50 ms | C p95 ms |", "|---|---|---|"]
    lines += [f"| {name} | {np.percentile(v, 50):.1f} | {np.percentile(v, 95):.1f} |"
              for name, v in app.items()]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latents", type=int, default=16384)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--per-bucket", type=int, default=5)
    p.add_argument("--context", type=int, default=16)
    p.add_argument("--pages", type=int, default=200)
    p.add_argument("--keep", type=Path, default=None, help="build the workspace here, keep it")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ws = args.keep or Path(tmp)
        built = build(ws, args)
        per_query = time_pages(ws, args, one_connection=False)
        per_page = time_pages(ws, args, one_connection=True)
        app, cold = time_app(ws, args)
        print(report(per_query, per_page, built, args, app, cold))


if __name__ == "__main__":
    main()
