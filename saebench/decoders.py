"""An SAE folder's decoder directions and identity, read with numpy only.

The browser's dictionary-level pages (compare, feature map) need `W_dec` but not the SAE's
forward pass, so this avoids torch: `safetensors.numpy` reads the same file in milliseconds.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np
from jaxtyping import Float

from store.errors import UserError

WEIGHTS_FILE = "sae_weights.safetensors"


def sae_cfg(folder: Path) -> dict:
    path = Path(folder) / "cfg.json"
    if not path.is_file():
        raise UserError(f"{folder}: not an SAE folder (no cfg.json)")
    return json.loads(path.read_text())


def site(folder: Path) -> tuple[str, str, int]:
    """(model, hook, d_in): two SAEs are comparable only if these agree."""
    cfg = sae_cfg(folder)
    meta = cfg.get("metadata") or {}
    model = meta.get("model_name") or cfg.get("model_name") or "?"
    hook = meta.get("hook_name") or cfg.get("hook_name") or "?"
    return str(model), str(hook), int(cfg["d_in"])


def weights_digest(folder: Path) -> str:
    """Content hash of the weights (the same 16 hex digits the index fingerprints with)."""
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise UserError(f"{folder}: no {WEIGHTS_FILE}")
    stat = path.stat()
    return _digest(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _digest(path: str, mtime_ns: int, size: int) -> str:
    # Keyed on mtime and size too, so a page that checks many cached pairs hashes each
    # file once per process, and a rewritten file is hashed again.
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def unit_decoder(folder: Path) -> Float[np.ndarray, "d_sae d_in"]:
    """W_dec with each row scaled to unit norm (an all-zero row stays zero)."""
    from safetensors.numpy import load_file

    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise UserError(f"{folder}: no {WEIGHTS_FILE}")
    try:
        W = load_file(str(path))["W_dec"]
    except KeyError:
        raise UserError(f"{path}: no W_dec tensor") from None
    except (TypeError, ValueError):  # bfloat16 has no numpy dtype: go through torch once
        from safetensors.torch import load_file as load_torch

        W = load_torch(str(path))["W_dec"].float().numpy()
    return unit_rows(np.asarray(W, dtype=np.float32))


def unit_rows(W: Float[np.ndarray, "n d"]) -> Float[np.ndarray, "n d"]:
    W = np.asarray(W, dtype=np.float32)
    norms = np.linalg.norm(W, axis=1, keepdims=True)
    return W / np.maximum(norms, 1e-12)
