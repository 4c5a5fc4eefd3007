"""`saebench cache`: cache a model's activations (and optionally gradients) into a store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Args:
    """Cache a model's activations at a hook point into a DuckDB store (resumable)."""

    model: str = "smollm2-135m"
    """smollm2-135m, random:<preset>, a local HF checkpoint folder, or a TransformerLens name."""
    hook: str = "blocks.15.hook_resid_post"
    """TransformerLens hook name, e.g. blocks.15.hook_resid_post."""
    dataset: str = "austen"
    """austen, pydocs, mix, a .txt/.jsonl/.parquet path, or a hub dataset name."""
    tokens: int = 250_000
    """Training tokens to cache (BOS positions included)."""
    heldout_tokens: int = 0
    """Held-out tokens to cache from held-out documents; 0 means 5% of --tokens (at least 4096)."""
    ctx: int = 128
    """Tokens per window, BOS included."""
    store: Path = Path("runs/store.duckdb")
    """The store to create or resume."""
    with_grads: bool = False
    """Also cache d(next-token loss)/d(activation) per token (needs the full forward+backward)."""
    dtype: str = "float16"
    """Storage type of activations: float16 or bfloat16 (2 bytes per element either way)."""
    seed: int = 0
    """Seed for the document order."""
    chunk_seqs: int = 64
    """Windows per chunk: the unit of writing and of crash recovery."""
    batch_seqs: int = 32
    """Windows per forward pass."""
    device: str = "auto"
    """cpu, cuda, or auto (cuda when available)."""
    writers: int = 0
    """Parallel shard writer threads; 0 picks one per two CPU cores (at most 4)."""


def spec_of(args: Args):
    from store.activation_store import StoreSpec

    heldout = args.heldout_tokens or max(4096, args.tokens // 20)
    return StoreSpec(
        model=args.model,
        hook=args.hook,
        dataset=args.dataset,
        ctx=args.ctx,
        n_tokens=args.tokens,
        n_heldout_tokens=heldout,
        seed=args.seed,
        dtype=args.dtype,
        with_grads=args.with_grads,
        chunk_seqs=args.chunk_seqs,
    )


def main(args: Args) -> None:
    import torch

    from saebench.commands.info import describe_store
    from store.caching import cache, default_writers

    device = (
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    cache(
        spec_of(args),
        args.store,
        device=device,
        batch_seqs=args.batch_seqs,
        writers=args.writers or default_writers(),
    )
    print(describe_store(args.store))
