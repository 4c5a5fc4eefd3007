"""The resumable pass state: saved atomically after every chunk, deleted on completion."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def save_state(path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a kill mid-save leaves the previous chunk's state intact


def load_state(path: Path, fingerprint: dict) -> dict | None:
    """The saved state of a run with the same fingerprint, else None."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, weights_only=True)
    except Exception:  # noqa: BLE001 - a corrupt state is only lost work: start over
        return None
    return state if state.get("fingerprint") == fingerprint else None
