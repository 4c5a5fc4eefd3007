"""`saebench index`: per-latent statistics, contexts, logit lens and neighbours of an SAE."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Args:
    """Build an SAE's feature index into <sae>/index/ (resumable: rerun after an interrupt)."""

    sae: Path
    """SAE folder: saebench's or any SAELens-format folder (cfg.json + sae_weights.safetensors)."""
    store: Path | None = None
    """Activation store (*.duckdb) whose train split is indexed; default: the store recorded in
    the SAE folder."""
    tokens: int | None = None
    """Train tokens to index (BOS excluded, rounded up to whole windows); None: all of them."""
    context: int = 16
    """Tokens kept on each side of an activating token in the stored contexts."""
    top: int = 20
    """Top activating contexts kept per latent."""
    batch_tokens: int = 4096
    """Tokens per SAE forward (rounded down to whole windows); bounds memory at
    batch_tokens x d_sae floats."""
    device: str | None = None
    """Torch device for the SAE (and the model's unembedding); default: cuda if available."""
    feature_map: bool = True
    """Also store the SAE's UMAP feature map (<sae>/feature_map.parquet) for the browser: about
    30 s on 2 CPU cores for 4608 latents, most of it numba compiling UMAP once."""
    loss_effects: bool | None = None
    """Per-token loss effect of ablating each latent in its top contexts, shown on hover in the
    browser (one model run per top context: often more than the rest of the index); default:
    on only when cheap, under ~1e10 FLOPs or a fifth of the index passes' work."""


def main(args: Args) -> None:
    import torch

    from saebench.evals.runner import read_sae_cfg, recorded_store
    from saebench.index.build import IndexSettings, build_index
    from store.errors import UserError
    from store.reader import open_store

    if args.context < 0 or args.top < 1 or args.batch_tokens < 1:
        raise UserError("--context must be >= 0, --top and --batch-tokens >= 1")
    if args.tokens is not None and args.tokens < 1:
        raise UserError("--tokens must be >= 1")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    sae_cfg = read_sae_cfg(args.sae)
    store = open_store(args.store or recorded_store(args.sae, sae_cfg))
    settings = IndexSettings(args.tokens, args.context, args.top, args.batch_tokens,
                             args.loss_effects)
    print(build_index(args.sae, store, settings, device=device))
    if args.feature_map:
        from saebench.feature_map import build_feature_map

        print(build_feature_map(args.sae))
