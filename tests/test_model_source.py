"""Training without a cache: the model-backed store serves the cached store's batches."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import TINY_HOOK, tiny_spec
from safetensors.torch import load_file

from saebench.cli import main as cli
from saebench.commands.stream import StreamArgs
from saebench.commands.train import Args, main
from store.caching import cache
from store.model_source import ModelStore
from store.reader import open_store
from trainers.config import TrainConfig

SPEC = tiny_spec(n_tokens=2048, n_heldout_tokens=512, chunk_seqs=8)
STREAM = ["--model", "random:tiny", "--hook", TINY_HOOK, "--dataset", "austen", "--ctx", "32",
          "--chunk-seqs", "8", "--buffer-tokens", "600"]


def _batches(source, n, **kw):
    it = source.batches(256, seed=3, **kw)
    return [next(it) for _ in range(n)]


@pytest.mark.usefixtures("one_thread")
def test_stream_serves_the_cached_stores_batches(tmp_path):
    spec = replace(SPEC, with_grads=True)
    cached = tmp_path / "cached.duckdb"
    cache(spec, cached, progress=False)
    reader = open_store(cached)
    streamed = ModelStore(spec)
    a = reader.source("train", in_memory=False, buffer_tokens=600)
    b = streamed.source("train", buffer_tokens=600)
    assert streamed.n_tokens("train") == reader.n_tokens("train") == b.n_tokens
    # Twelve batches cover the epoch (7.75 per epoch here), so the order crosses epochs too.
    for (xa, ga), (xb, gb) in zip(_batches(a, 12, with_grads=True),
                                  _batches(b, 12, with_grads=True), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ga, gb)
    # A resumed run asks for batch 5 onwards and gets exactly those batches.
    assert all(torch.equal(x, y) for x, y in zip(_batches(a, 4, start=5),
                                                 _batches(b, 4, start=5), strict=True))
    # The norm is estimated from the stream's first chunks: close to the whole split's.
    assert streamed.meta["norm"]["mean_norm"] == pytest.approx(
        reader.meta["norm"]["mean_norm"], rel=0.05)


def _train(tmp_path, name: str, *extra: str, tokens: int = 4096) -> list[str]:
    return ["train", "--out", str(tmp_path / name), "--tokens", str(tokens), "--batch-size", "256",
            "--width", "48", "--k", "4", "--checkpoint-every", "5", "--no-progress", "--device",
            "cpu", *STREAM, *extra]


@pytest.mark.usefixtures("one_thread")
def test_cache_to_writes_the_store_cache_would_write(tmp_path, capsys):
    assert cli(_train(tmp_path, "sae", "--cache-to", str(tmp_path / "w.duckdb"))) == 0
    stream_spec = open_store(tmp_path / "w.duckdb").meta["spec"]
    cached = tmp_path / "c.duckdb"
    cache(tiny_spec(**stream_spec), cached, progress=False)
    w, c = open_store(tmp_path / "w.duckdb"), open_store(cached)
    assert [(i.index, i.split, i.first_seq, i.n_tokens) for i in w.chunks] == \
        [(i.index, i.split, i.first_seq, i.n_tokens) for i in c.chunks]
    for i, j in zip(w.chunks, c.chunks, strict=True):
        assert np.array_equal(w.chunk_words(i), c.chunk_words(j))
    # The norm statistics are float64 sums of the float32 activations before the fp16 store:
    # the stream and the cache run the model in different batch shapes, and with the weights
    # laid out copy-free (store/weight_layout.py) a matmul may round its last bit differently
    # per shape. The shards above are still identical.
    assert w.meta["norm"]["n_tokens"] == c.meta["norm"]["n_tokens"]
    assert w.meta["norm"]["mean_norm"] == pytest.approx(c.meta["norm"]["mean_norm"], rel=1e-9)
    assert np.allclose(w.meta["norm"]["mean"], c.meta["norm"]["mean"], rtol=1e-6, atol=1e-9)
    # The SAE records the store it wrote, so `saebench eval` finds it without --store.
    run = json.loads((tmp_path / "sae" / "saebench_train.json").read_text())
    assert run["store_path"].endswith("w.duckdb")
    assert run["store"]["source"] == "stream"


@pytest.mark.usefixtures("one_thread")
def test_streamed_training_resumes_exactly(tmp_path, monkeypatch):
    from saebench.commands import train as train_cmd

    assert cli(_train(tmp_path, "whole")) == 0
    real = train_cmd.run

    def interrupted(args, source, meta, on_step=None):
        def ctrl_c(done: int) -> None:
            if on_step is not None:
                on_step(done)
            if done == 7:
                os.kill(os.getpid(), signal.SIGINT)
        return real(args, source, meta, ctrl_c)

    monkeypatch.setattr(train_cmd, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(Args(out=tmp_path / "cut", train=TrainConfig(
            tokens=4096, batch_size=256, checkpoint_every=5, progress=False, device="cpu"),
            k=(4,), width=(48,), stream=StreamArgs(
                model="random:tiny", hook=TINY_HOOK, ctx=32, chunk_seqs=8, buffer_tokens=600)))
    monkeypatch.setattr(train_cmd, "run", real)
    assert cli(_train(tmp_path, "cut")) == 0
    a = load_file(tmp_path / "whole" / "sae_weights.safetensors")
    b = load_file(tmp_path / "cut" / "sae_weights.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # on CPU: bitwise


@pytest.mark.usefixtures("one_thread")
def test_gradient_sae_streams_with_the_producers_backward(tmp_path):
    assert cli(_train(tmp_path, "g", "--arch", "gsae", tokens=1024)) == 0
    run = json.loads((tmp_path / "g" / "saebench_train.json").read_text())
    assert run["store"]["with_grads"] and run["steps"] == 4


@pytest.mark.parametrize("flags, message", [
    ([], "give --store"),
    (["--store", "x.duckdb", "--model", "random:tiny"], "give one or the other"),
])
def test_store_or_model(tmp_path, capsys, flags, message):
    code = cli(["train", "--out", str(tmp_path / "o"), "--tokens", "1024", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1] and len(err) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.usefixtures("one_thread")
def test_two_ranks_stream_what_one_process_streams(tmp_path):
    """Under torchrun every rank runs the producer; rank 0 alone writes --cache-to, and every
    rank then helps finish it."""
    import socket
    import subprocess
    import sys

    flags = _train(tmp_path, "one", tokens=2048)
    assert cli(flags) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = [a if a != str(tmp_path / "one") else str(tmp_path / "two") for a in flags]
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "saebench", *two,
         "--cache-to", str(tmp_path / "w.duckdb")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    a = load_file(tmp_path / "one" / "sae_weights.safetensors")
    b = load_file(tmp_path / "two" / "sae_weights.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # measured: 6e-8
    assert open_store(tmp_path / "w.duckdb").meta["status"] == "complete"
