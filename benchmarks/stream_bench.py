"""Training throughput streamed from the model vs from a store, and the model's forward alone.

    .venv/bin/python benchmarks/stream_bench.py                       # SmolLM2 shape, CPU
    .venv/bin/python benchmarks/stream_bench.py --model smollm2-135m  # the real weights

One run, one process, three measurements on the same windows:
1. **forward**: the model alone up to the hook (`stop_at_layer`), tokens/s: the producer's
   ceiling;
2. **store**: a TopK SAE trained from a store cached beforehand (the cache time is reported
   separately: it is paid once per sweep);
3. **stream**: the same SAE trained from the model on the fly (`saebench train --model`),
   the model running in the background producer while the SAE trains.
Streaming can at best match min(forward, store) throughput; the ratio stream / forward says
how much of the model's speed the loop keeps. Only figures measured in this run are printed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from saebench.commands.stream import StreamArgs, spec_for
from store.caching import cache, forward, prepare
from store.hooks import stop_layer
from store.model_source import ModelStore
from store.reader import open_store
from trainers.config import TrainConfig
from trainers.loop import train_saes
from trainers.topk import TopKConfig


def forward_rate(spec, device: str, batch_seqs: int, n_windows: int) -> float:
    model, windows, _, _ = prepare([spec], device)
    toks = torch.from_numpy(windows.train[:n_windows]).long().to(device)
    forward(model, spec.hook, toks[:batch_seqs], False)  # warm-up
    t0 = time.perf_counter()
    for lo in range(0, len(toks), batch_seqs):
        forward(model, spec.hook, toks[lo: lo + batch_seqs], False)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return toks.numel() / (time.perf_counter() - t0)


def train_rate(source, meta, out: Path, args) -> float:
    cfg = TrainConfig(tokens=args.tokens, batch_size=args.batch_size, progress=False,
                      device=args.device, checkpoint_every=10**9)
    t0 = time.perf_counter()
    train_saes(source, [TopKConfig(d_sae=args.width, k=32)], [out], meta, cfg)
    return args.tokens / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="random:smollm2-135m")
    p.add_argument("--hook", default="blocks.15.hook_resid_post")
    p.add_argument("--tokens", type=int, default=1 << 16, help="training tokens per run")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--width", type=int, default=4608)
    p.add_argument("--buffer-tokens", type=int, default=1 << 15)
    p.add_argument("--batch-seqs", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--tmp", type=Path, default=None)
    args = p.parse_args()
    stream = StreamArgs(model=args.model, hook=args.hook, buffer_tokens=args.buffer_tokens,
                        batch_seqs=args.batch_seqs, model_device=args.device)
    spec = spec_for(stream, args.tokens, with_grads=False)
    print(f"model {args.model}, hook {args.hook} (layer {stop_layer(args.hook)}), "
          f"{args.tokens:,} tokens, TopK d_sae {args.width} k 32, batch {args.batch_size}, "
          f"{args.device}, {torch.get_num_threads()} threads")
    rows = {"forward": forward_rate(spec, args.device, args.batch_seqs,
                                    max(1, args.tokens // spec.ctx))}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        cache(spec, tmp / "store.duckdb", args.device, args.batch_seqs, progress=False)
        rows["cache (once per sweep)"] = spec.n_tokens / (time.perf_counter() - t0)
        reader = open_store(tmp / "store.duckdb")
        src = reader.source("train", in_memory=False, buffer_tokens=args.buffer_tokens)
        rows["train from store"] = train_rate(src, reader.meta, tmp / "a", args)
        # Timed from the model's first forward: the norm estimate's chunks are served again.
        t0 = time.perf_counter()
        streamed = ModelStore(spec, args.device, args.batch_seqs)
        src = streamed.source("train", buffer_tokens=args.buffer_tokens)
        train_rate(src, streamed.meta, tmp / "b", args)
        rows["train streamed"] = args.tokens / (time.perf_counter() - t0)

    print("\n| measurement | tokens/s | vs forward |\n|---|---|---|")
    for name, rate in rows.items():
        print(f"| {name} | {rate:,.0f} | {rate / rows['forward']:.2f}× |")


if __name__ == "__main__":
    main()
