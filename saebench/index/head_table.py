"""The index's `head_attribution` table for SAEs at `blocks.L.attn.hook_z`: each latent's
share of each head in its decoder row (saebench/attn/heads.py; Kissane et al. 2024, arXiv
2406.17759). Weights only, so it costs one pass over W_dec and no data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from jaxtyping import Float
from torch import Tensor

from saebench.index import schema


def head_attribution_table(name: str, shares: Float[Tensor, "d_sae n_heads"]) -> pa.Table:
    d_sae, n_heads = shares.shape
    return pa.table({
        "sae": pa.array([name] * (d_sae * n_heads), pa.string()),
        "latent": pa.array(np.repeat(np.arange(d_sae, dtype=np.int32), n_heads)),
        "head": pa.array(np.tile(np.arange(n_heads, dtype=np.int16), d_sae)),
        "share": pa.array(shares.float().reshape(-1).numpy().astype(np.float32)),
    }, schema=schema.HEADS)


def write_head_attribution(index_dir: Path, name: str,
                           shares: Float[Tensor, "d_sae n_heads"]) -> Path:
    """Write `<index_dir>/head_attribution.parquet` atomically, sorted by latent."""
    path = Path(index_dir) / schema.HEADS_FILE
    schema.write_index_table(path, head_attribution_table(name, shares))
    return path


def add_head_attribution(sae_dir: Path, sae, store, model, device: str) -> str:
    """Write the table when the store's hook is an `attn.hook_z`; a note either way ('' for
    other hooks). `model` ("auto", a HookedTransformer or None) gives n_heads."""
    from saebench.attn import hook_z_layer
    from saebench.attn.heads import head_shares, model_heads

    hook = str(store.meta.get("hook", ""))
    if hook_z_layer(hook) is None:
        return ""
    if isinstance(model, str):
        if not store.meta.get("model"):
            return "head attribution skipped: the store does not record its model"
        from store.models import load_model

        model = load_model(str(store.meta["model"]), device)
    if model is None:
        return "head attribution skipped: no model given (n_heads unknown)"
    W_dec = sae.W_dec.detach().float().cpu()
    n_heads = model_heads(hook, int(W_dec.shape[1]), model)
    write_head_attribution(Path(sae_dir) / schema.INDEX_DIR, Path(sae_dir).resolve().name,
                           head_shares(W_dec, n_heads))
    return f"head attribution: decoder-norm shares of {n_heads} heads per latent"


def backfill_head_attribution(sae_dir: Path, sae, store, model, device: str) -> str:
    """For an index completed before the table existed: write it if missing (weights only,
    so no pass over the store is redone); '' when there is nothing to add."""
    if (Path(sae_dir) / schema.INDEX_DIR / schema.HEADS_FILE).exists():
        return ""
    note = add_head_attribution(sae_dir, sae, store, model, device)
    if note:
        from store.catalog import refresh, workspace_of

        refresh(workspace_of(sae_dir))
    return note
