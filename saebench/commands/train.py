"""`saebench train`: train one SAE, or a sweep of them from one pass over a store.

Several `--arch`, `--k` and/or `--width` values train every (arch, k, width) combination from
the same stream of batches. A single SAE is written to `--out` itself; a sweep writes one
folder per combination beside it, named `<out>-<arch>-k<k>-w<width>`, leaving out the parts
that do not vary (e.g. runs/saes/NAME-k32-w4608 for a k/width sweep of one architecture).
Architecture-specific hyperparameters are set with `--set ARCH.FIELD=VALUE`.

Without `--store`, `--model M --hook H --dataset D` trains from activations produced on the
fly (saebench/commands/stream.py), optionally writing the store as it goes (`--cache-to`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Annotated

import tyro

from saebench.commands.stream import StreamArgs
from store.errors import UserError
from trainers.config import TrainConfig


@dataclass(frozen=True)
class Args:
    """Train SAEs on a store, or streamed from a model (resumable: rerun the same command
    after an interrupt)."""

    out: Path
    """The SAE folder, e.g. runs/saes/NAME; a sweep writes NAME-<arch>-k<k>-w<width> folders."""
    train: Annotated[TrainConfig, tyro.conf.OmitArgPrefixes]
    """How to train (flags shared by every SAE of a sweep)."""
    arch: tuple[str, ...] = ("topk",)
    """Architectures (topk, batchtopk, mutual_choice, feature_choice, gsae, mp); several train a
    sweep from one pass. gsae needs a store cached with --with-grads."""
    k: tuple[int, ...] = (32,)
    """Active latents per token; several values train a sweep."""
    width: tuple[int, ...] = (4608,)
    """Number of latents (d_sae); several values train a sweep."""
    set: tuple[str, ...] = ()
    """Architecture hyperparameters as ARCH.FIELD=VALUE, e.g. mp.residual_threshold=0.1 or
    topk.auxk_coef=0.05 (see each config class in trainers/)."""
    store: Path | None = None
    """The activation store to train on (a .duckdb file written by `saebench cache`, local or
    s3://bucket/prefix/name.duckdb); without it, --model streams activations instead."""
    stream: Annotated[StreamArgs, tyro.conf.OmitArgPrefixes] = StreamArgs()
    """Streaming (when --store is not given)."""
    init_from: Path | None = None
    """With --loss e2e/e2e+ds: start from this saved SAE folder (same architecture, d_in and
    width), e.g. the local SAE on the same store, instead of a fresh initialisation."""


def _parse_sets(args: Args) -> dict[str, dict]:
    """--set values as {arch: {field: value}}; values are JSON (numbers, true, null) or text."""
    out: dict[str, dict] = {}
    for item in args.set:
        target, eq, value = item.partition("=")
        arch, dot, name = target.partition(".")
        if not (eq and dot and name):
            raise UserError(f"--set {item!r}: expected ARCH.FIELD=VALUE, e.g. mp.k=16")
        if arch not in args.arch:
            raise UserError(f"--set {item!r}: {arch!r} is not among --arch {' '.join(args.arch)}")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        out.setdefault(arch, {})[name] = parsed
    return out


def _config(arch_name: str, k: int, width: int, extra: dict):
    from trainers import registry

    config = registry.get(arch_name).config
    known = {f.name for f in fields(config)} - {"d_sae", "k"}
    for name in extra:
        if name not in known:
            choices = ", ".join(sorted(known)) or "none"
            raise UserError(f"--set {arch_name}.{name}: unknown field (known: {choices})")
    try:
        return replace(config(d_sae=width, k=k), **extra)  # validates in __post_init__
    except TypeError as err:
        raise UserError(f"--set {arch_name}: {err}") from None


def plan(args: Args) -> tuple[list, list[Path]]:
    """The architecture configs and output folders of a run; fails before anything is written."""
    combos = [(a, k, w) for a in args.arch for k in args.k for w in args.width]
    if not combos:
        raise UserError("--arch, --k and --width need at least one value each")
    if len(set(combos)) != len(combos):
        raise UserError("--arch, --k and --width values must not repeat")
    extra = _parse_sets(args)
    configs = [_config(a, k, w, extra.get(a, {})) for a, k, w in combos]
    if len(combos) == 1:
        return configs, [args.out]
    parts = [(f"-{a}" if len(args.arch) > 1 else "")
             + (f"-k{k}-w{w}" if len(args.k) > 1 or len(args.width) > 1 else "")
             for a, k, w in combos]
    return configs, [args.out.with_name(args.out.name + p) for p in parts]


def _recorded_path(store: Path | None, out: Path) -> str | None:
    """The store's path as evals will look it up: relative to the workspace when inside it."""
    from store.catalog import workspace_of
    from store.remote import remote_url

    if store is None:
        return None
    if remote_url(store):
        return remote_url(store)
    store, workspace = store.resolve(), workspace_of(out)
    return str(store.relative_to(workspace)) if store.is_relative_to(workspace) else str(store)


def run(args: Args, source, store_meta: dict, on_step=None) -> list[Path]:
    """Train from an ActivationSource directly (what `main` does after opening the store)."""
    from trainers.loop import train_saes

    configs, out_dirs = plan(args)
    if source.d_in != store_meta.get("d_in", source.d_in):
        raise UserError(f"source d_in {source.d_in} != store meta d_in {store_meta['d_in']}")
    store = args.store if args.store is not None else args.stream.cache_to
    return train_saes(source, configs, out_dirs, store_meta, args.train,
                      store_path=_recorded_path(store, out_dirs[0]), on_step=on_step)


def _stream(args: Args, configs: list) -> list[Path]:
    """Train from the model on the fly; finish --cache-to's store afterwards."""
    from saebench.commands.stream import open_stream
    from trainers.loop import needs_grads
    from trainers.registry import get, name_of

    with_grads = any(needs_grads(get(name_of(c)).model) for c in configs)
    streamed = open_stream(args.stream, args.train.tokens, with_grads, args.train.device)
    n_steps = args.train.tokens // args.train.batch_size

    def on_step(done: int) -> None:
        if done >= n_steps:  # the producer's prefetch is no longer needed
            streamed.stop.set()

    try:
        folders = run(args, streamed.source("train", buffer_tokens=args.stream.buffer_tokens),
                      streamed.meta, on_step)
    except BaseException:
        streamed.close()  # stop the producer after its current chunk; the writer keeps its rows
        raise
    streamed.complete(args.stream.cache_to, progress=args.train.progress)
    return folders


def _e2e(args: Args, configs: list) -> Path:
    """--loss e2e / e2e+ds: one SAE, the model in the loop, on a store's token windows or,
    with --model, on the streaming source's (the corpus windows a cache would hold)."""
    from trainers.e2e_store import train_from_store, train_from_stream

    if len(configs) != 1:
        raise UserError(f"--loss {args.train.loss} trains one SAE per run: give one --arch, "
                        "--k and --width")
    if args.store is None:
        if args.stream.model is None:
            raise UserError(f"--loss {args.train.loss} runs the model in the loop: give --store "
                            "(its token windows) or --model (stream them from the corpus)")
        if args.stream.cache_to is not None:
            raise UserError(f"--loss {args.train.loss} computes no activations to cache: drop "
                            "--cache-to")
        from saebench.commands.stream import open_stream

        streamed = open_stream(args.stream, args.train.tokens, False, args.train.device)
        try:
            return train_from_stream(streamed, configs[0], args.out, args.train,
                                     init=args.init_from)
        finally:
            streamed.close()
    if args.stream.model is not None:
        raise UserError("--model streams from a model; --store trains on a cache: give one or "
                        "the other")
    return train_from_store(args.store, configs[0], args.out, args.train, init=args.init_from,
                            recorded_path=_recorded_path(args.store, args.out))


def main(args: Args) -> None:
    from store.activation_store import open_store
    from trainers.distributed import is_main_process
    from trainers.loop import check_grads

    configs, _ = plan(args)  # bad --arch/--k/--width/--set fail before the store is opened
    if args.init_from is not None and args.train.loss == "local":
        raise UserError("--init-from starts an end-to-end run (--loss e2e or e2e+ds)")
    if args.train.loss != "local":
        print(_e2e(args, configs))
        return
    if args.store is None:
        if args.stream.model is None:
            raise UserError("give --store (a cached store) or --model (stream from a model)")
        folders = _stream(args, configs)
    else:
        if args.stream.model is not None or args.stream.cache_to is not None:
            raise UserError("--model/--cache-to stream from a model; --store trains on a cache: "
                            "give one or the other")
        store = open_store(args.store)
        check_grads(configs, store.meta.get("with_grads", False))
        folders = run(args, store.source("train"), store.meta)
    for folder in folders if is_main_process() else ():  # under torchrun, rank 0 speaks
        print(folder)
