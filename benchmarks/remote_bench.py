"""Read throughput of one StoreSource group of shards: local disk vs S3 (moto on localhost).

    .venv/bin/python benchmarks/remote_bench.py                  # 16 chunks of 4096 tokens
    .venv/bin/python benchmarks/remote_bench.py --latency-ms 20  # + 20 ms per request

Builds a store of random fp16 activations in a temporary folder, serves it from moto's S3
server (a separate process, so it does not share our GIL), and times a group's load three ways:
1. **local**: shards memory-mapped and copied into one array (warm page cache, checksums
   already verified, as after a reader's first epoch);
2. **remote, one at a time**: each shard fetched and hashed in turn (latency-bound);
3. **remote, concurrent**: the whole group requested at once (what StoreSource does).
moto is a Python server, so (2) and (3) measure it as much as our reader. Localhost has no
latency; `--latency-ms` puts a proxy in front of moto that holds each request that long (a
real endpoint's time to first byte is typically 10-50 ms), which is what concurrency hides.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from store.activation_store import Chunk, StoreSpec, StoreWriter
from store.reader import open_store


def build(path: Path, n_chunks: int, chunk_seqs: int, ctx: int, d_in: int) -> None:
    spec = StoreSpec(model="random", hook="blocks.0.hook_resid_post", dataset="random",
                     ctx=ctx, n_tokens=n_chunks * chunk_seqs * ctx, n_heldout_tokens=0, seed=0,
                     dtype="float16", with_grads=False, chunk_seqs=chunk_seqs)
    meta = {"corpus_sources": ["random"], "bos_policy": "none"}
    writer = StoreWriter(path, spec, d_in, ["a", "b"], meta)
    gen = torch.Generator().manual_seed(0)
    for i in range(n_chunks):
        acts = torch.randn(chunk_seqs, ctx, d_in, generator=gen).half()
        tokens = np.zeros((chunk_seqs, ctx), dtype=np.int32)
        stats = (float(acts.float().norm(dim=-1).sum()), acts.float().sum((0, 1)).numpy(),
                 chunk_seqs * ctx)
        writer.commit(Chunk(i, "train", i * chunk_seqs, tokens, acts), stats)
    writer.finish()
    writer.close()


def serve(tmp: Path) -> tuple[subprocess.Popen, int]:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    log = open(tmp / "moto.log", "w")  # noqa: SIM115 (lives as long as the server)
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=log, stderr=log)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("moto server did not start")


def delaying_proxy(port: int, latency_s: float) -> int:
    """A TCP proxy to 127.0.0.1:port that holds every request latency_s; its port."""
    server = socket.create_server(("127.0.0.1", 0))

    def pipe(src, dst, delay: float) -> None:
        try:
            while data := src.recv(1 << 20):
                time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        dst.close()

    def accept() -> None:
        while True:
            client, _ = server.accept()
            up = socket.create_connection(("127.0.0.1", port))
            threading.Thread(target=pipe, args=(client, up, latency_s), daemon=True).start()
            threading.Thread(target=pipe, args=(up, client, 0.0), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server.getsockname()[1]


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=16, help="chunks in the group")
    p.add_argument("--chunk-seqs", type=int, default=32)
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--d-in", type=int, default=576)
    p.add_argument("--repeats", type=int, default=3, help="best of this many loads")
    p.add_argument("--latency-ms", type=float, default=0.0, help="added to every request")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build(tmp / "s.duckdb", a.chunks, a.chunk_seqs, a.ctx, a.d_in)
        proc, port = serve(tmp)
        try:
            os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                              AWS_DEFAULT_REGION="us-east-1", SAEBENCH_CACHE=str(tmp / "cache"),
                              AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
            import boto3

            client = boto3.client("s3")  # uploads go straight to moto
            client.create_bucket(Bucket="bench")
            client.upload_file(str(tmp / "s.duckdb"), "bench", "s.duckdb")
            for f in sorted((tmp / "s.shards").iterdir()):
                client.upload_file(str(f), "bench", f"s.shards/{f.name}")
            if a.latency_ms:
                proxy = delaying_proxy(port, a.latency_ms / 1e3)
                os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{proxy}"
            local, far = open_store(tmp / "s.duckdb"), open_store("s3://bench/s.duckdb")
            group = local.chunks
            nbytes = sum(c.bytes for c in group)
            rows = [
                ("local (page cache)",
                 lambda: np.concatenate([local.chunk_words(c) for c in group])),
                ("remote, one shard at a time",
                 lambda: np.concatenate([far.chunk_words(c) for c in group])),
                ("remote, whole group concurrently",
                 lambda: np.concatenate(far.chunk_words_many(group))),
            ]
            print(f"{len(group)} shards, {nbytes / 1e6:.1f} MB, +{a.latency_ms:g} ms per "
                  f"request; load average "
                  f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
            print("| read | s | GB/s |\n|---|---|---|")
            for name, fn in rows:
                fn()  # warm-up: page cache, checksums, connections
                dt = timed(fn, a.repeats)
                print(f"| {name} | {dt:.3f} | {nbytes / 1e9 / dt:.2f} |")
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
