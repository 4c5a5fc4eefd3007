"""`saebench cache`: cache a model's activations (and optionally gradients) into a store.

Several `--hook` values (or `resid:N`, N residual streams at evenly spaced depths) are cached
in ONE pass of the model, one store per hook: `--store runs/x/store.duckdb` then names
`runs/x/store.<hook>.duckdb` for each hook.

Under torchrun (`torchrun --nproc-per-node N -m saebench cache ...`) the N ranks cache disjoint
chunks into the same store(s) (store/parallel_cache.py); rank 0 prints the summary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Args:
    """Cache a model's activations at a hook point into a DuckDB store (resumable)."""

    model: str = "smollm2-135m"
    """smollm2-135m, random:<preset>, a local HF checkpoint folder, or a TransformerLens name."""
    hook: tuple[str, ...] = ("blocks.15.hook_resid_post",)
    """TransformerLens hook names, e.g. blocks.15.hook_resid_post, or resid:N for N residual
    streams at evenly spaced depths (e.g. resid:4 is blocks 6, 12, 18, 24 of 30)."""
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


def hooks_of(args: Args) -> list[str]:
    """The hook names, with any resid:N expanded for the model's depth."""
    from store.errors import UserError
    from store.hooks import residual_hooks

    hooks: list[str] = []
    for hook in args.hook:
        if hook.startswith("resid:"):
            from store.models import load_model

            try:
                n = int(hook.removeprefix("resid:"))
            except ValueError:
                raise UserError(f"--hook {hook}: expected resid:N with an integer N") from None
            hooks += residual_hooks(load_model(args.model, "cpu").cfg.n_layers, n)
        else:
            hooks.append(hook)
    if not hooks or len(set(hooks)) != len(hooks):
        raise UserError(f"--hook: need distinct hook names, got {' '.join(hooks) or 'none'}")
    return hooks


def store_paths(store: Path, hooks: list[str]) -> list[Path]:
    """One store per hook: `store` itself for one hook, else <stem>.<hook>.duckdb beside it."""
    if len(hooks) == 1:
        return [store]
    return [store.with_name(f"{store.stem}.{hook}{store.suffix or '.duckdb'}") for hook in hooks]


def spec_of(args: Args, hook: str | None = None):
    from store.activation_store import StoreSpec

    heldout = args.heldout_tokens or max(4096, args.tokens // 20)
    return StoreSpec(
        model=args.model,
        hook=hook if hook is not None else args.hook[0],
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
    from store.caching import cache_hooks, default_writers
    from store.ranks import from_env

    device = (
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    hooks = hooks_of(args)
    paths = store_paths(args.store, hooks)
    cache_hooks(
        [spec_of(args, h) for h in hooks],
        paths,
        device=device,
        batch_seqs=args.batch_seqs,
        writers=args.writers or default_writers(),
    )
    if from_env().is_main:
        for path in paths:
            print(describe_store(path))
