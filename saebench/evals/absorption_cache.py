"""The absorption eval's activations, cached per (model, hook, prompts): one model pass per sweep.

The prompts and the activations at their target tokens depend on the model, the hook, the word
sample and the prompt settings, never on the SAE. With SmolLM2 on a 2-core CPU the full
vocabulary's prompts cost about an hour of forwards, so every later SAE at the same hook reads
them from `<eval_stores>/absorption.<model>.<hook>.<key>.pt` instead, where key hashes every
input that shapes them (a changed setting gets a fresh file, never a stale one).

Written to a temporary name and renamed, so an interrupted build leaves no half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from saebench.evals.absorption_data import Split


def cache_key(model: str, hook: str, prompts: list[tuple[list[int], int]]) -> str:
    """A hash of the exact token ids and target positions: the activations' only inputs."""
    h = hashlib.sha1(f"{model}\x00{hook}\x00".encode())
    for ids, pos in prompts:
        h.update(json.dumps([pos, ids]).encode())
    return h.hexdigest()[:16]


def cache_path(root: Path, model: str, hook: str, key: str) -> Path:
    slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in model.split("/")[-1])
    return Path(root) / f"absorption.{slug}.{hook}.{key}.pt"


def load_or_build(path: Path | None, words: list[str], letters: np.ndarray,
                  build: Callable[[], torch.Tensor]) -> Split:
    """The split from `path` if it holds these words, else built and saved there."""
    if path is not None and path.exists():
        saved = torch.load(path, weights_only=True)
        if saved["words"] == words:
            return Split(saved["x"], letters, words)
    x = build()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        torch.save({"x": x, "words": words}, tmp)
        os.replace(tmp, path)
    return Split(x, letters, words)
