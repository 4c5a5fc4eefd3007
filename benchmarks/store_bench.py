"""Activation-store benchmark: caching, the write path, shuffled reads and size on disk.

Run: `.venv/bin/python benchmarks/store_bench.py [--tokens N] [--model random:smollm2-135m]
[--hook blocks.15.hook_resid_post] [--out results.md]`. Everything is measured in one run on
the same data and printed as a markdown report (see `main`). Each measurement is one function:
1. `bench_cache`: `store.caching.cache` end to end against the bare truncated forward pass
   over exactly the same token windows and batch size;
2. `bench_writes`: the write path alone (random fp16 data, no model), against native DuckDB
   tables and `np.save`;
3. `bench_reads`: shuffled batches from a store (streaming and in-memory) against a numpy memmap;
4. `store_sizes`: bytes per token on disk.
Wall-clock timings on a shared machine are noisy: the load average is recorded per section.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

import store.caching as caching
from store.activation_store import Chunk, StoreSpec, StoreWriter, shard_dir
from store.hooks import stop_layer
from store.models import load_model
from store.reader import StoreReader
from store.shards import encode_rows, write_shard

GB = 1e9
BATCH_TOKENS = 4096


# --------------------------------------------------------------------------- helpers


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
             if ln.startswith("model name")] if Path("/proc/cpuinfo").exists() else []
    cpu = names[0] if names else platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).resolve().parent, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def command_line() -> str:
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    return " ".join(shlex.quote(a) for a in argv)


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def drop_page_cache() -> bool:
    """Drop the OS page cache (needs root); False where the kernel refuses."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def sync_device(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def fmt_rate(tokens: float, seconds: float, bytes_per_token: int) -> tuple[str, str]:
    return f"{tokens / seconds:,.0f}", f"{tokens * bytes_per_token / seconds / GB:.3f}"


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def random_fp16(n_tokens: int, d_in: int, seed: int) -> torch.Tensor:
    """Incompressible activations `[n_tokens, d_in]` in fp16, generated in slices."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(n_tokens, d_in, dtype=torch.float16)
    for lo in range(0, n_tokens, 1 << 16):
        hi = min(n_tokens, lo + (1 << 16))
        out[lo:hi] = torch.randn(hi - lo, d_in, generator=gen)
    return out


# --------------------------------------------------------------------------- 1. caching


class _Timers:
    """Wraps functions of store.caching / StoreWriter to see where `cache` spends its time."""

    def __init__(self):
        self.total: dict[str, float] = {}
        self.last_compute_end = 0.0
        self._undo: list[tuple[object, str, object]] = []

    def wrap(self, owner, name: str, label: str) -> None:
        orig = getattr(owner, name)
        own = name in vars(owner)  # else inherited: restoring then means deleting ours

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return orig(*a, **k)
            finally:
                t1 = time.perf_counter()
                self.total[label] = self.total.get(label, 0.0) + t1 - t0
                if label == "compute":
                    self.last_compute_end = t1

        self._undo.append((owner, name, orig if own else None))
        setattr(owner, name, timed)

    def restore(self) -> None:
        for owner, name, orig in reversed(self._undo):
            if orig is None:
                delattr(owner, name)
            else:
                setattr(owner, name, orig)
        self._undo.clear()


def bench_cache(args, tmp: Path, device: str) -> tuple[list[str], Path]:
    spec = StoreSpec(
        model=args.model, hook=args.hook, dataset=args.dataset, ctx=args.ctx,
        n_tokens=args.tokens, n_heldout_tokens=args.heldout_tokens, seed=0, dtype="float16",
        with_grads=False, chunk_seqs=args.chunk_seqs,
    )
    model = load_model(args.model, device)  # lru_cached: cache() below reuses this instance
    windows = caching.prepare(spec, device)[1]  # the very windows cache() will run over
    chunks = caching.plan_chunks(windows.train, windows.heldout, args.chunk_seqs)
    n_tok = sum(c.tokens.size for c in chunks)
    layer = stop_layer(args.hook)

    def bare_forward(part: list) -> None:
        with torch.inference_mode():
            for chunk in part:  # batched per chunk exactly like caching._compute
                for lo in range(0, len(chunk.tokens), args.batch_seqs):
                    toks = chunk.tokens[lo : lo + args.batch_seqs]
                    model(torch.from_numpy(toks).long().to(device), stop_at_layer=layer)
        sync_device(device)

    with torch.inference_mode():  # warm-up: one batch
        model(torch.from_numpy(windows.train[: args.batch_seqs]).long().to(device),
              stop_at_layer=layer)
    # Rounds of (bare forward, cache) alternate, so that the background load of a shared
    # machine hits both alike; the best round of each is compared.
    fwd_runs, cache_runs, compute_runs, loads = [], [], [], []
    timers = _Timers()
    for r in range(max(1, args.cache_rounds)):
        loads.append(load())
        fwd_runs.append(timed(lambda: bare_forward(chunks)))
        path = tmp / f"cache{r}" / "store.duckdb"
        round_timers = _Timers()
        round_timers.wrap(caching, "prepare", "prepare (documents, windows, hook probe)")
        round_timers.wrap(type(model.tokenizer), "batch_decode", "vocab batch_decode")
        round_timers.wrap(StoreWriter, "__init__", "StoreWriter() (schema, vocab, meta)")
        round_timers.wrap(caching, "_compute", "compute")
        round_timers.wrap(StoreWriter, "commit", "commit (writer thread; overlaps compute)")
        round_timers.wrap(StoreWriter, "finish", "finish (stats, CHECKPOINT)")
        round_timers.wrap(StoreWriter, "close", "close (DuckDB connection)")
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            caching.cache(spec, path, device=device, batch_seqs=args.batch_seqs,
                          writers=args.writers, progress=False)
            t_end, c_end = time.perf_counter(), time.process_time()
        finally:
            round_timers.restore()
        cache_runs.append((t_end - t0, c_end - c0))
        compute_runs.append(round_timers.total.get("compute", 0.0))
        after = sum(round_timers.total.get(k, 0.0) for k in (
            "finish (stats, CHECKPOINT)", "close (DuckDB connection)"))
        round_timers.total["drain: last commit(s) after the last compute"] = max(
            0.0, t_end - round_timers.last_compute_end - after)
        if cache_runs[-1] == min(cache_runs):
            timers, best_round = round_timers, r
    loads.append(load())
    t_fwd, cpu_fwd = min(fwd_runs)
    t_cache, cpu_cache = min(cache_runs)
    timers.total.setdefault("compute", 0.0)

    rows = [
        "## 1. Cache write throughput vs the bare forward pass",
        "",
        f"Model `{args.model}`, hook `{args.hook}` (`stop_at_layer={layer}`), dataset "
        f"`{args.dataset}`, ctx {args.ctx}, {windows.train.size:,} train + "
        f"{windows.heldout.size:,} held-out tokens ({n_tok:,} in all), batch {args.batch_seqs} "
        f"windows, chunk {args.chunk_seqs} windows, {args.writers} writer thread(s), device "
        f"`{device}`. The model is loaded and warmed up before any timing. {args.cache_rounds} "
        f"rounds of (bare forward over the same chunks and batches, then `cache` into a fresh "
        f"store); the table shows the best of each. CPU seconds are this process's, all "
        f"threads (other processes excluded).",
        "",
        "| What | wall s | tokens/s (wall) | CPU s | tokens per CPU-s |",
        "|---|---|---|---|---|",
        f"| bare `model(tokens, stop_at_layer={layer})` | {t_fwd:.2f} | {n_tok / t_fwd:,.0f} "
        f"| {cpu_fwd:.2f} | {n_tok / cpu_fwd:,.0f} |",
        f"| `store.caching.cache(...)` end to end, fresh store | {t_cache:.2f} | "
        f"{n_tok / t_cache:,.0f} | {cpu_cache:.2f} | {n_tok / cpu_cache:,.0f} |",
        "",
        f"**Ratio cache / bare forward (best of each): {t_fwd / t_cache:.2f} by wall clock, "
        f"{cpu_fwd / cpu_cache:.2f} by CPU time** (target >= 0.80).",
        "",
        f"Every round, wall seconds (the spread shows how much the other processes on this "
        f"machine disturb the timings; load average at the end {loads[-1]}):",
        "",
        "| Round | load avg before | bare forward | `cache` | its `compute` part | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r, ((fw, _), (cw, _)) in enumerate(zip(fwd_runs, cache_runs, strict=True)):
        rows.append(f"| {r + 1} | {loads[r]} | {fw:.2f} | {cw:.2f} | {compute_runs[r]:.2f} | "
                    f"{fw / cw:.2f} |")
    rows += [
        "",
        f"Where `cache` spent its wall time in its best round ({best_round + 1}): wrapped "
        "functions; `commit` runs in the writer thread concurrently with `compute`, so it "
        "costs wall time only where not overlapped (the drain row):",
        "",
        "| Part of `cache` | seconds | share of `cache` |",
        "|---|---|---|",
    ]
    for label, secs in timers.total.items():
        rows.append(f"| {label} | {secs:.2f} | {secs / t_cache:.1%} |")
    outside = t_cache - timers.total["compute"]
    rows += [
        f"| everything outside `compute` | {outside:.2f} | {outside / t_cache:.1%} |",
        "",
    ]
    return rows, tmp / f"cache{best_round}" / "store.duckdb"


# --------------------------------------------------------------------------- 2. writes


def write_shard_with(path: Path, table: pa.Table, **knobs) -> int:
    """store.shards.write_shard with extra pyarrow options (for the knob comparison)."""
    opts = dict(compression="none", use_dictionary=False, write_statistics=["seq"],
                row_group_size=max(1, table.num_rows))
    opts.update(knobs)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, **opts)
    os.replace(tmp, path)
    return path.stat().st_size


def _chunks(x: torch.Tensor, ctx: int, chunk_seqs: int) -> list[tuple[np.ndarray, torch.Tensor]]:
    """Views `[chunk_seqs, ctx, d]` of `x [tokens, d]`, with their sequence ids."""
    d = x.shape[1]
    per = ctx * chunk_seqs
    out = []
    for i, lo in enumerate(range(0, len(x) - per + 1, per)):
        seqs = np.arange(i * chunk_seqs, (i + 1) * chunk_seqs)
        out.append((seqs, x[lo : lo + per].view(chunk_seqs, ctx, d)))
    return out


def _duckdb_native(path: Path, chunks, d_in: int, layout: str, uncompressed: bool) -> None:
    path.unlink(missing_ok=True)
    con = duckdb.connect(str(path))
    if uncompressed:
        con.execute("SET force_compression='uncompressed'")
    col = f"SMALLINT[{d_in}]" if layout == "array" else "BLOB"
    con.execute(f"CREATE TABLE acts (seq INTEGER, pos SMALLINT, vec {col})")
    for seqs, vecs in chunks:
        tbl = encode_rows(seqs, vecs, "float16")
        if layout == "array":
            flat = pa.array(vecs.reshape(-1).view(torch.int16).numpy())
            tbl = tbl.set_column(2, "vec", pa.FixedSizeListArray.from_arrays(flat, d_in))
        con.register("batch_tbl", tbl)
        con.execute("INSERT INTO acts SELECT * FROM batch_tbl")
        con.unregister("batch_tbl")
    con.execute("CHECKPOINT")
    con.close()


def _round_robin(cases: list[tuple[str, object, int]], rounds: int, reset) -> dict:
    """Time every case `rounds` times (at most its own limit), interleaved so that a change in
    background load hits every case alike. `reset(key)` runs untimed before each call.
    Returns key -> the best (wall, cpu) by wall time."""
    runs: dict[str, list[tuple[float, float]]] = {key: [] for key, _, _ in cases}
    for r in range(rounds):
        for key, fn, limit in cases:
            if r < limit:
                reset(key)
                try:
                    runs[key].append(timed(fn))
                except (pa.ArrowException, TypeError, ValueError) as err:
                    print(f"{key} failed: {err}", file=sys.stderr)
                    runs[key].append((float("nan"), float("nan")))
    return {key: min(ts) for key, ts in runs.items()}


def bench_writes(x: torch.Tensor, args, tmp: Path) -> tuple[list[str], Path]:
    d_in = x.shape[1]
    bpt = 2 * d_in
    chunks = _chunks(x, args.ctx, args.chunk_seqs)
    n = sum(v.shape[0] * v.shape[1] for _, v in chunks)
    fp32 = [(s, v.float()) for s, v in chunks[: max(1, len(chunks) // 4)]]
    n32 = sum(v.shape[0] * v.shape[1] for _, v in fp32)
    duck = chunks[: max(1, min(n, args.duckdb_tokens) // (args.ctx * args.chunk_seqs))]
    n_duck = sum(v.shape[0] * v.shape[1] for _, v in duck)
    arr = x[:n].view(torch.int16).numpy()
    reps = args.repeats
    root = tmp / "writes"

    def reset(key: str) -> None:
        """Remove the case's old files and flush dirty pages, so every run starts alike."""
        shutil.rmtree(root / key, ignore_errors=True)
        (root / key).mkdir(parents=True)
        os.sync()

    def parquet(key: str, data, threads: int = 1, exact: bool = False, **knobs):
        def one(i: int) -> None:
            seqs, vecs = data[i]
            path = root / key / f"act-{i:06d}.parquet"
            if exact:  # the real store.shards functions, unmodified
                write_shard(path, encode_rows(seqs, vecs, "float16"))
            else:
                write_shard_with(path, encode_rows(seqs, vecs, "float16"), **knobs)

        def run() -> None:
            if threads == 1:
                for i in range(len(data)):
                    one(i)
            else:
                with ThreadPoolExecutor(threads) as pool:
                    list(pool.map(one, range(len(data))))
        return run

    def native(key: str, layout: str, uncompressed: bool):
        return lambda: _duckdb_native(root / key / "acts.duckdb", duck, d_in, layout,
                                      uncompressed)

    # key, label, tokens, function, runs
    methods = [
        ("a", "(a) ours: `encode_rows` + `write_shard`, 1 thread", n,
         parquet("a", chunks, exact=True), reps),
        ("a32", "(a') the same from fp32 input (as `cache` passes it)", n32,
         parquet("a32", fp32, exact=True), reps),
        ("b", "(b) ours, 2 threads writing different shards", n,
         parquet("b", chunks, 2, exact=True), reps),
        ("c", "(c) DuckDB INSERT from Arrow into `SMALLINT[576]`", n_duck,
         native("c", "array", False), 1),
        ("d", "(d) DuckDB per-token BLOB, `force_compression='uncompressed'`", n_duck,
         native("d", "blob", True), 1),
        ("d2", "(d') DuckDB per-token BLOB, default compression", n_duck,
         native("d2", "blob", False), 1),
        ("e", "(e) `np.save` of the same bytes (ceiling)", n,
         lambda: np.save(root / "e" / "acts.npy", arr), reps),
    ]
    knobs = [
        ("k0", "baseline: pyarrow's default 1 MiB pages", 1, {}),
        ("k1", "`write_page_checksum=True`", 1, dict(write_page_checksum=True)),
        ("k2", "one page per shard (what `write_shard` does)", 1,
         dict(data_page_size=64 << 20)),
        ("k3", "`use_byte_stream_split=['vec']`", 1, dict(use_byte_stream_split=["vec"])),
        ("k4", "`write_statistics=False`", 1, dict(write_statistics=False)),
        ("k5", "`store_schema=False`", 1, dict(store_schema=False)),
        ("k6", "2 threads + `data_page_size=64 MiB`", 2, dict(data_page_size=64 << 20)),
    ]
    cases = [(key, fn, runs) for key, _, _, fn, runs in methods]
    cases += [(key, parquet(key, chunks, threads, **kw), reps) for key, _, threads, kw in knobs]

    reset("a")
    parquet("a", chunks, exact=True)()  # warm-up: first-touch page faults, imports
    load0 = load()
    best = _round_robin(cases, reps, reset)
    load1 = load()
    shard_bytes = dir_bytes(root / "a")

    rows = [
        "## 2. The write path alone (random fp16, no model)",
        "",
        f"d_in {d_in}, {n:,} tokens = {n * bpt / 1e6:,.0f} MB raw for the Parquet paths and "
        f"`np.save`; the slow native DuckDB paths write the first {n_duck:,} tokens of the "
        f"same data, and (a') the first {n32:,}. Chunks of {args.chunk_seqs} x {args.ctx} "
        f"tokens; DuckDB times include the final CHECKPOINT. All cases (both tables) run "
        f"interleaved, round robin, best of {reps} by wall time (DuckDB: 1 run); before each "
        f"run the case's old files are removed and dirty pages flushed (`sync`); nothing is "
        f"fsynced inside the timing. Load average {load0} before, {load1} after.",
        "",
        "| Method | tokens | wall s | tokens/s | GB/s | CPU s |",
        "|---|---|---|---|---|---|",
    ]
    for key, label, tokens, _, _ in methods:
        wall, cpu = best[key]
        tps, gbs = fmt_rate(tokens, wall, bpt)
        rows.append(f"| {label} | {tokens:,} | {wall:.3f} | {tps} | {gbs} | {cpu:.3f} |")
    base = best["k0"][0]
    rows += [
        "",
        f"Parquet options on top of path (a), same {n:,} tokens; shards from (a) are "
        f"{shard_bytes / (n * bpt):.4f}x the raw size:",
        "",
        "| Option | wall s | GB/s | CPU s | speed vs baseline |",
        "|---|---|---|---|---|",
    ]
    for key, label, _, _ in knobs:
        wall, cpu = best[key]
        rows.append(f"| {label} | {wall:.3f} | {n * bpt / wall / GB:.3f} | {cpu:.3f} | "
                    f"{base / wall:.2f}x |")
    rows.append("")
    return rows, root / "e" / "acts.npy"


# --------------------------------------------------------------------------- 3. reads


def build_random_store(x: torch.Tensor, args, tmp: Path) -> tuple[Path, float, list[float]]:
    """A complete store of `x` written through StoreWriter.commit; returns per-commit times."""
    d_in = x.shape[1]
    spec = StoreSpec(model="random-data", hook="none", dataset="random", ctx=args.ctx,
                     n_tokens=len(x), n_heldout_tokens=0, seed=0, dtype="float16",
                     with_grads=False, chunk_seqs=args.chunk_seqs)
    path = tmp / "random" / "store.duckdb"
    path.parent.mkdir()
    t0 = time.perf_counter()
    writer = StoreWriter(path, spec, d_in, ["<a>", "<b>"], {})
    commit_times = []
    for i, (seqs, vecs) in enumerate(_chunks(x, args.ctx, args.chunk_seqs)):
        tokens = np.zeros(vecs.shape[:2], dtype=np.int32)
        chunk = Chunk(i, "train", int(seqs[0]), tokens, acts=vecs)
        stats = caching.chunk_stats(vecs)  # computed by the forward thread in `cache`
        t1 = time.perf_counter()
        writer.commit(chunk, stats)
        commit_times.append(time.perf_counter() - t1)
    writer.finish()
    writer.close()
    return path, time.perf_counter() - t0, commit_times


def _time_batches(batches, n_batches: int) -> tuple[float, float, int]:
    """(seconds to the first batch, seconds for all, tokens) over `n_batches` batches."""
    t0 = time.perf_counter()
    first = None
    tokens = 0
    for _ in range(n_batches):
        b = next(batches)
        tokens += b.shape[0]
        if first is None:
            first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    if hasattr(batches, "close"):
        batches.close()
    return first, total, tokens


def _memmap_batches(npy: Path, n_rows: int, seed: int):
    mm = np.lib.format.open_memmap(npy, mode="r")
    perm = np.random.default_rng(seed).permutation(n_rows)
    for b in range(n_rows // BATCH_TOKENS):
        rows = mm[perm[b * BATCH_TOKENS : (b + 1) * BATCH_TOKENS]]
        yield torch.from_numpy(rows).view(torch.float16)


def bench_reads(x: torch.Tensor, npy: Path, args, tmp: Path) -> tuple[list[str], Path]:
    d_in = x.shape[1]
    bpt = 2 * d_in
    path, t_build, commits = build_random_store(x, args, tmp)
    reader = StoreReader(path)
    n_batches = reader.n_tokens("train") // BATCH_TOKENS
    load0 = load()

    def stream(buffer_tokens: int):
        src = reader.source("train", in_memory=False, buffer_tokens=buffer_tokens)
        return src.batches(BATCH_TOKENS, seed=0)

    cases = [
        ("streaming, default buffer (`in_memory=False`)", lambda: stream(1 << 19)),
        ("streaming, `buffer_tokens=65536` (prefetch pipeline busy)", lambda: stream(1 << 16)),
        ("in memory (`in_memory=True`): first load + epoch",
         lambda: reader.source("train", in_memory=True).batches(BATCH_TOKENS, seed=0)),
        ("numpy memmap, seeded permutation, fancy indexing",
         lambda: _memmap_batches(npy, len(x), 0)),
    ]
    # Warm first (every file was just written, so it is in the page cache), then cold where
    # the page cache can be dropped. Cases interleaved round robin; best epoch time kept.
    results = []
    cold = False
    for temp in ("warm", "cold"):
        if temp == "cold":
            cold = drop_page_cache()
            if not cold:
                break
        best: dict[str, tuple[float, float, int]] = {}
        for _ in range(args.read_repeats):
            for label, make in cases:
                if temp == "cold":
                    drop_page_cache()
                run = _time_batches(make(), n_batches)
                if label not in best or run[1] < best[label][1]:
                    best[label] = run
        results += [(temp, label, *best[label]) for label, _ in cases]
    load1 = load()

    def steady(first: float, total: float, tokens: int) -> str:
        if total - first < 0.05 * total:
            return "n/a (all work before the first batch)"
        return f"{(tokens - BATCH_TOKENS) / max(total - first, 1e-9):,.0f}"

    rows = [
        "## 3. Shuffled read throughput",
        "",
        f"A store of {len(x):,} random fp16 tokens at d_in {d_in} "
        f"({reader.n_tokens('train'):,} served: position 0 of every window is skipped), "
        f"written by `StoreWriter.commit` in {t_build:.2f} s "
        f"({len(x) * bpt / t_build / GB:.3f} GB/s including DuckDB token rows and views; "
        f"mean commit {np.mean(commits) * 1e3:.0f} ms, first 4 {np.mean(commits[:4]) * 1e3:.0f} "
        f"ms, last 4 {np.mean(commits[-4:]) * 1e3:.0f} ms). One epoch = {n_batches} batches of "
        f"{BATCH_TOKENS} tokens, best of {args.read_repeats} interleaved runs. The memmap "
        f"baseline reads the `np.save` file of the same vectors. Page cache: "
        + ("dropped (`echo 3 > /proc/sys/vm/drop_caches`) before every cold run"
           if cold else "could not be dropped, so every read is warm-cache (store just written)")
        + f". Load average {load0} before, {load1} after.",
        "",
        "| Cache | Method | first batch (s) | epoch (s) | tokens/s | GB/s | steady tokens/s "
        "(after first batch) |",
        "|---|---|---|---|---|---|---|",
    ]
    memmap = {}
    for temp, label, _first, total, tokens in results:
        if label.startswith("numpy"):
            memmap[temp] = tokens / total
    for temp, label, first, total, tokens in results:
        tps, gbs = fmt_rate(tokens, total, bpt)
        rows.append(f"| {temp} | {label} | {first:.3f} | {total:.3f} | {tps} | {gbs} | "
                    f"{steady(first, total, tokens)} |")
    rows += ["", "Ratios ours / memmap (whole epoch, target >= 0.5):", ""]
    for temp, label, _first, total, tokens in results:
        if not label.startswith("numpy"):
            rows.append(f"- {temp}, {label}: **{tokens / total / memmap[temp]:.2f}**")
    rows.append("")
    return rows, path


# --------------------------------------------------------------------------- 4. size


def store_sizes(stores: list[tuple[str, Path]]) -> list[str]:
    rows = [
        "## 4. Size on disk",
        "",
        "| Store | tokens | DuckDB file B/token | shards B/token | total B/token | "
        "raw 2*d_in | total / raw |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, path in stores:
        reader = StoreReader(path)
        n = reader.n_tokens("train", drop_bos=False) + reader.n_tokens("heldout", drop_bos=False)
        db = path.stat().st_size + sum(p.stat().st_size for p in [Path(f"{path}.wal")]
                                       if p.exists())
        shards = dir_bytes(shard_dir(path))
        raw = 2 * reader.d_in
        rows.append(f"| {label} | {n:,} | {db / n:.1f} | {shards / n:.1f} | "
                    f"{(db + shards) / n:.1f} | {raw} | {(db + shards) / n / raw:.3f} |")
    rows += ["", "The DuckDB file holds meta, the vocabulary (49k strings for the model store), "
             "token ids and the chunk manifest; its share shrinks as the store grows.", ""]
    return rows


# --------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=16384, help="train tokens to cache in part 1")
    p.add_argument("--heldout-tokens", type=int, default=2048, help="held-out tokens, part 1")
    p.add_argument("--model", default="random:smollm2-135m")
    p.add_argument("--hook", default="blocks.15.hook_resid_post")
    p.add_argument("--dataset", default="austen")
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--cache-rounds", type=int, default=2,
                   help="alternating rounds of (bare forward, cache) in part 1")
    p.add_argument("--chunk-seqs", type=int, default=64)
    p.add_argument("--batch-seqs", type=int, default=32)
    p.add_argument("--writers", type=int, default=caching.default_writers())
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--write-tokens", type=int, default=1 << 18,
                   help="random tokens for parts 2-3 (2*d_in bytes each)")
    p.add_argument("--duckdb-tokens", type=int, default=1 << 16,
                   help="tokens for the slow native DuckDB writes in part 2")
    p.add_argument("--d-in", type=int, default=576)
    p.add_argument("--repeats", type=int, default=3, help="best-of-N for the fast writes")
    p.add_argument("--read-repeats", type=int, default=2, help="best-of-N for the reads")
    p.add_argument("--tmp", type=Path, default=None, help="scratch folder (default: system temp)")
    p.add_argument("--skip-cache", action="store_true", help="skip part 1 (no model)")
    p.add_argument("--out", type=Path, default=None, help="also write the report here")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else args.device
    report = [
        "# saebench store benchmark",
        "",
        f"- device: {device_name(device)}",
        f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- git commit: {git_commit()}",
        f"- command: `{command_line()}`",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"duckdb {duckdb.__version__}, pyarrow {pa.__version__}, numpy {np.__version__}",
        f"- load average at start: {load()}",
        "",
    ]
    tmp = Path(tempfile.mkdtemp(prefix="store_bench-", dir=args.tmp))
    t_start = time.perf_counter()
    stores = []
    try:
        if not args.skip_cache:
            rows, cache_store = bench_cache(args, tmp, device)
            report += rows
            stores.append((f"`cache` of `{args.model}`", cache_store))
            print("\n".join(rows), file=sys.stderr, flush=True)
        x = random_fp16(args.write_tokens, args.d_in, seed=0)
        rows, npy = bench_writes(x, args, tmp)
        report += rows
        print("\n".join(rows), file=sys.stderr, flush=True)
        rows, random_store = bench_reads(x, npy, args, tmp)
        report += rows
        stores.append(("random fp16 (part 3)", random_store))
        report += store_sizes(stores)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
    report.append(f"Total benchmark time {time.perf_counter() - t_start:.0f} s; load average at "
                  f"end {load()}.")
    text = "\n".join(report) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
