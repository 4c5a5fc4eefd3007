"""Steering's inputs for an SAE folder: the strength unit of each latent, and held-out text.

- Unit (max activation): the feature index's value (`<sae>/index/features.parquet`, the file
  behind the catalog's `features` view, over every indexed token), else an estimate: the max
  over the first ESTIMATE_TOKENS held-out tokens of the SAE's store. An estimate from fewer
  tokens runs low, so the same strength pushes a little less; the result names its source.
- Held-out text for the loss change: the first N_WINDOWS windows of the store's held-out split,
  cut to WINDOW_TOKENS tokens (fixed, so every steering is scored on the same text), or a text
  the caller gives.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from saebench.steering import SteerConfig, SteerResult, steer
from store.errors import UserError

ESTIMATE_TOKENS = 4096
N_WINDOWS = 4
WINDOW_TOKENS = 64
MAX_TEXT_TOKENS = 512
ENCODE_BATCH = 1024


def index_max_acts(folder: Path) -> tuple[Float[Tensor, " d_sae"], str] | None:
    """Every latent's max activation from the SAE's feature index, or None without one or
    when the index was built from other weights (the SAE retrained since: stale units)."""
    import hashlib
    import json

    import pyarrow.parquet as pq

    from saebench.index.schema import DONE_FILE, FEATURES_FILE, INDEX_DIR

    path = Path(folder) / INDEX_DIR / FEATURES_FILE
    if not path.is_file():
        return None
    try:  # the same digest saebench/index/build.py fingerprint records
        built_from = json.loads((path.parent / DONE_FILE).read_text())["fingerprint"]["weights"]
    except (OSError, ValueError, KeyError, TypeError):
        built_from = None
    weights = Path(folder) / "sae_weights.safetensors"
    if built_from and weights.is_file() and \
            hashlib.sha256(weights.read_bytes()).hexdigest()[:16] != built_from:
        return None
    table = pq.read_table(path, columns=["latent", "max_act", "tokens_seen"])
    out = torch.zeros(table.num_rows)
    latents = torch.tensor(table.column("latent").to_pylist())
    out[latents] = torch.tensor(table.column("max_act").to_pylist(), dtype=torch.float32)
    seen = table.column("tokens_seen")[0].as_py() if table.num_rows else 0
    return out, f"feature index ({seen} tokens)"


@torch.inference_mode()
def estimate_max_acts(sae, store, tokens: int = ESTIMATE_TOKENS
                      ) -> tuple[Float[Tensor, " d_sae"], str]:
    """Every latent's max activation over the first `tokens` held-out tokens of a store."""
    device = sae.W_dec.device
    best, n = torch.zeros(sae.d_sae, device=device), 0
    for x in store.iter_activations("heldout", ENCODE_BATCH, limit=tokens):
        best = torch.maximum(best, sae.encode(x.to(device, sae.W_dec.dtype)).amax(0))
        n += len(x)
    if n == 0:
        raise UserError("the SAE's store has no held-out tokens to read max activations from")
    return best.cpu(), f"estimate ({n} held-out tokens of the store)"


def store_windows(store, n: int = N_WINDOWS, ctx: int = WINDOW_TOKENS
                  ) -> Int[Tensor, "seq ctx"]:
    """The first n held-out windows of a store, cut to ctx tokens (BOS at position 0)."""
    windows = store.token_windows("heldout")[:n, :ctx]
    if len(windows) == 0:
        raise UserError("the SAE's store has no held-out windows to measure the loss on")
    return windows


def _store(folder: Path, cfg: dict):
    """The SAE's recorded store, opened read-only, or None when it records none."""
    from saebench.evals.runner import recorded_store
    from store.reader import open_store

    try:
        return open_store(recorded_store(folder, cfg))
    except UserError:
        return None


_UNITS: dict[tuple[str, float], tuple[Tensor, str] | None] = {}


def _units(folder: str, stamp: float, sae) -> tuple[Tensor, str] | None:
    """Max activations for a folder's current weights (index, else store estimate), cached."""
    key = (folder, stamp)
    if key not in _UNITS:
        if len(_UNITS) >= 16:
            _UNITS.clear()
        found = index_max_acts(Path(folder))
        if found is None:
            store = _store(Path(folder), _cfg(folder))
            found = None if store is None else estimate_max_acts(sae, store)
        _UNITS[key] = found
    return _UNITS[key]


def _cfg(folder: str) -> dict:
    from trainers.saelens_format import read_meta

    return read_meta(folder)["cfg"]


@lru_cache(maxsize=4)
def _store_windows(folder: str, stamp: float) -> tuple[Tensor, str] | None:
    store = _store(Path(folder), _cfg(folder))
    if store is None:
        return None
    windows = store_windows(store)
    return windows, f"{len(windows)} held-out windows × {windows.shape[1]} tokens of {store.path}"


def steer_handle(handle, latents: int | list[int], strengths: float | list[float] = 1.0, *,
                 heldout_text: str | None = None, max_acts: list[float] | None = None,
                 **options) -> SteerResult:
    """SAEHandle.steer: resolve units and held-out text for the handle's folder, then steer."""
    latents = list(latents) if isinstance(latents, list | tuple) else [latents]
    if not isinstance(strengths, list | tuple):
        strengths = [strengths] * len(latents)
    cfg = SteerConfig(latents=tuple(latents), strengths=tuple(strengths), **options)
    cfg.check_latents(handle.cfg["d_sae"])
    stamp = (handle.path / "sae_weights.safetensors").stat().st_mtime
    if max_acts is not None:
        units, source = list(max_acts), "given"
    else:
        found = _units(str(handle.path), stamp, handle.sparse_coder)
        if found is None:
            raise UserError(f"{handle.name} has no feature index and records no store to read "
                            "max activations from: run `saebench index`, or pass max_acts")
        units, source = [float(found[0][i]) for i in latents], found[1]
    first_pos = 1 if (handle.cfg.get("metadata") or {}).get("prepend_bos", True) else 0
    if heldout_text is not None:
        windows = handle.tokens(heldout_text)[:, :MAX_TEXT_TOKENS]
        held = (windows, f"the given text ({windows.shape[1]} tokens)")
    else:
        held = _store_windows(str(handle.path), stamp)
    return steer(handle.model, handle.sparse_coder, handle.hook_name, handle.tokens(cfg.prompt)[0],
                 cfg, units, first_pos=first_pos, windows=None if held is None else held[0],
                 windows_source="" if held is None else held[1], max_act_source=source)
