"""`saebench train`: train one SAE, or a sweep of them from one pass over a store.

Several `--k` and/or `--width` values train every (k, width) combination from the same stream
of batches. A single SAE is written to `--out` itself; a sweep writes one folder per
combination beside it, named `<out>-k<k>-w<width>` (e.g. runs/saes/NAME-k32-w4608).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from store.errors import UserError
from trainers.config import TrainConfig


@dataclass(frozen=True)
class Args:
    """Train TopK SAEs on a store (resumable: rerun the same command after an interrupt)."""

    store: Path
    """The activation store to train on (a .duckdb file written by `saebench cache`)."""
    out: Path
    """The SAE folder, e.g. runs/saes/NAME; a sweep writes NAME-k<k>-w<width> folders instead."""
    train: Annotated[TrainConfig, tyro.conf.OmitArgPrefixes]
    """How to train (flags shared by every SAE of a sweep)."""
    arch: str = "topk"
    """Architecture, from trainers.registry.ARCHITECTURES."""
    k: tuple[int, ...] = (32,)
    """Active latents per token; several values train a sweep."""
    width: tuple[int, ...] = (4608,)
    """Number of latents (d_sae); several values train a sweep."""


def plan(args: Args) -> tuple[list, list[Path]]:
    """The architecture configs and output folders of a run; fails before anything is written."""
    from trainers import registry

    arch = registry.get(args.arch)
    combos = [(k, w) for k in args.k for w in args.width]
    if not combos:
        raise UserError("--k and --width need at least one value each")
    configs = [arch.config(d_sae=w, k=k) for k, w in combos]  # validates k < width
    if len(combos) == 1:
        return configs, [args.out]
    names = [args.out.with_name(f"{args.out.name}-k{k}-w{w}") for k, w in combos]
    return configs, names


def _recorded_path(store: Path, out: Path) -> str:
    """The store's path as evals will look it up: relative to the workspace when inside it."""
    from store.catalog import workspace_of

    store, workspace = store.resolve(), workspace_of(out)
    return str(store.relative_to(workspace)) if store.is_relative_to(workspace) else str(store)


def run(args: Args, source, store_meta: dict) -> list[Path]:
    """Train from an ActivationSource directly (what `main` does after opening the store)."""
    from trainers.loop import train_saes

    configs, out_dirs = plan(args)
    if source.d_in != store_meta.get("d_in", source.d_in):
        raise UserError(f"source d_in {source.d_in} != store meta d_in {store_meta['d_in']}")
    return train_saes(source, configs, out_dirs, store_meta, args.train,
                      store_path=_recorded_path(args.store, out_dirs[0]))


def main(args: Args) -> None:
    from store.activation_store import open_store

    plan(args)  # bad --arch/--k/--width fail before the store is even opened
    store = open_store(args.store)
    for folder in run(args, store.source("train"), store.meta):
        print(folder)
