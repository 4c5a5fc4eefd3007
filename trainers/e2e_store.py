"""End-to-end training on a store's token windows: the model and hook from its metadata.

The store supplies what e2e training needs besides the model: the training split's token
windows (the SAE sees exactly the tokens a local SAE on this store saw), the hook, and the
activation norm that sets the training units. Its cached activations are not read: the
model recomputes them, since the blocks after the hook must run anyway. So no cache is
needed at all: `train_from_stream` takes the same three things from the streaming source
(store.model_source.ModelStore: the corpus windows a cache would hold, and a norm estimated
from its first chunks).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from store.activation_store import open_store
from store.errors import UserError
from store.hooks import validate_hook
from store.models import load_model
from trainers.config import TrainConfig
from trainers.e2e_loop import train_e2e
from trainers.e2e_loss import DEFAULT_LOSS, E2ELossConfig


def train_from_store(
    store_path: str | Path, cfg: Any, out_dir: str | Path, train: TrainConfig, *,
    init: str | Path | None = None, loss_cfg: E2ELossConfig = DEFAULT_LOSS,
    recorded_path: str | None = None,
) -> Path:
    """Train one SAE end to end on the store's training windows; returns its folder."""
    import torch

    device = train.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    store = open_store(store_path)
    meta = store.meta
    if not meta.get("model") or not meta.get("hook"):
        raise UserError(f"{store_path} records no model or hook; e2e training needs both")
    model = load_model(meta["model"], device)
    validate_hook(model, meta["hook"])
    windows = store.token_windows("train")
    if windows.shape[0] == 0:
        raise UserError(f"{store_path} holds no training windows")
    scale = math.sqrt(meta["d_in"]) / store.source("train").stats().mean_norm
    return train_e2e(model, windows, meta["hook"], cfg, out_dir, meta, train, scale,
                     loss_cfg=loss_cfg, init=init, store_path=recorded_path)


def train_from_stream(
    streamed: Any, cfg: Any, out_dir: str | Path, train: TrainConfig, *,
    init: str | Path | None = None, loss_cfg: E2ELossConfig = DEFAULT_LOSS,
) -> Path:
    """Train one SAE end to end on a streaming source's training windows (no store on disk);
    `streamed` is a store.model_source.ModelStore, whose model is reused."""
    meta = streamed.meta
    windows = streamed.token_windows("train")
    if windows.shape[0] == 0:
        raise UserError("the stream planned no training windows: raise --tokens")
    scale = math.sqrt(meta["d_in"]) / meta["norm"]["mean_norm"]
    return train_e2e(streamed.model, windows, meta["hook"], cfg, out_dir, meta, train, scale,
                     loss_cfg=loss_cfg, init=init, store_path=None)

