"""`saebench train --model M --hook H --dataset D`: train from activations made on the fly.

The flags describe the store `saebench cache` would write (same names, same defaults), and
the stream serves exactly that store's batches (store/model_source.py), so a streamed run and
a cached run with the same settings train the same SAEs up to the normalisation estimate.
`--cache-to` also writes that store while training, for later sweeps and evals.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StreamArgs:
    """Where streamed activations come from (used when --store is not given)."""

    model: str | None = None
    """Train from this model's activations on the fly instead of a store: smollm2-135m,
    random:<preset>, a local HF checkpoint folder, or a TransformerLens name."""
    hook: str = "blocks.15.hook_resid_post"
    """The model's hook point to train on (streaming only)."""
    dataset: str = "austen"
    """Corpus to stream (streaming only): austen, pydocs, mix, a file, or a hub dataset."""
    ctx: int = 128
    """Tokens per window, BOS included (streaming only)."""
    stream_tokens: int = 0
    """Distinct tokens in the stream, BOS included; 0 = just enough windows for --tokens (one
    pass, no token seen twice). Fewer repeats them, in a new order each epoch."""
    heldout_tokens: int = 0
    """Held-out tokens for --cache-to's store; 0 = 5% of the stream (at least 4096)."""
    cache_to: Path | None = None
    """Also write the store `saebench cache` would write, while training (then finish it)."""
    buffer_tokens: int = 1 << 16
    """Mixing buffer: tokens shuffled together (the next buffer is computed while training)."""
    chunk_seqs: int = 64
    """Windows per chunk: the unit of the mixing buffer's order and of --cache-to's writes."""
    batch_seqs: int = 32
    """Windows per forward pass of the model."""
    model_device: str = "auto"
    """Where the model runs: cpu, cuda, cuda:N, or auto (--device's choice). Lets the model and
    the SAEs sit on different GPUs."""
    stream_seed: int = 0
    """Seed of the document order (as `saebench cache --seed`)."""


def spec_for(stream: StreamArgs, tokens: int, with_grads: bool):
    """The StoreSpec of the store this stream reads as (and --cache-to writes)."""
    from store.activation_store import StoreSpec
    from store.errors import UserError

    if stream.buffer_tokens < 1 or stream.chunk_seqs < 1 or stream.batch_seqs < 1:
        raise UserError("--buffer-tokens, --chunk-seqs and --batch-seqs must be positive")
    if stream.ctx < 2:
        raise UserError(f"--ctx must be at least 2 (BOS plus one token), got {stream.ctx}")
    # One pass of --tokens served tokens: position 0 of each window is never served.
    n = stream.stream_tokens or -(-tokens * stream.ctx // (stream.ctx - 1))
    heldout = stream.heldout_tokens or max(4096, n // 20)
    return StoreSpec(model=stream.model, hook=stream.hook, dataset=stream.dataset,
                     ctx=stream.ctx, n_tokens=n, n_heldout_tokens=heldout,
                     seed=stream.stream_seed, dtype="float16", with_grads=with_grads,
                     chunk_seqs=stream.chunk_seqs)


def open_stream(stream: StreamArgs, tokens: int, with_grads: bool, device: str):
    """The ModelStore behind a streamed run (loads the model and plans the windows)."""
    import torch

    from store.model_source import ModelStore
    from store.ranks import from_env

    where = stream.model_device if stream.model_device != "auto" else device
    if where == "auto":
        where = "cuda" if torch.cuda.is_available() else "cpu"
    ranks = from_env()
    if where == "cuda" and ranks.size > 1:  # torchrun: each rank's model on its own GPU
        where = f"cuda:{ranks.local_rank % max(1, torch.cuda.device_count())}"
    # Under torchrun every rank runs the producer, but one store has one writer: rank 0.
    cache_to = stream.cache_to if ranks.is_main else None
    return ModelStore(spec_for(stream, tokens, with_grads), where, stream.batch_seqs, cache_to)
