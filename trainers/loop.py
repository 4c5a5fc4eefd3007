"""The one training loop: several SAEs trained from one pass over one stream of batches.

Architectures differ only in `loss(x, ctx)` and an optional `after_step()`. The loop owns
everything else: input normalisation (mean ‖x‖ = √d_in, folded into the saved weights), b_dec
initialisation, Adam with warm-up and final decay, dead-latent counters, curves, checkpoints
(exact resume: weights, optimiser, schedule, data position, counters) and the SAELens export.

Launched by torchrun it trains data-parallel (trainers/distributed.py): each rank takes its
slice of every global batch of `batch_size` tokens, and rank 0 alone writes.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn
from tqdm import tqdm

from store.catalog import refresh, workspace_of
from store.errors import UserError
from trainers import checkpoint, curves, distributed, member, placement, registry
from trainers.config import TrainConfig
from trainers.distributed import SINGLE, World
from trainers.member import Member
from trainers.saelens_format import saelens_metadata, save_sae
from trainers.schedule import lr_factor, warmup_steps

# A store.sources.ActivationSource. Annotated as Any because that Protocol is not
# @runtime_checkable, so the runtime type checker (beartype, under pytest) cannot test it.
Source = Any


@dataclass
class StepContext:
    """What the loop tells an architecture's `loss` about the current step."""

    step: int
    """0-based optimiser step."""
    dead_mask: Tensor | None = None
    """[d_sae] bool: latents silent for the dead window; None while none can be dead yet."""
    grad: Tensor | None = None
    """[tokens, d_in] gradients for gradient-aware SAEs, when the source provides them."""
    world: World = SINGLE
    """The ranks sharing the global batch: what a loss reduces over (see trainers.distributed)."""


def geometric_median(x: Float[Tensor, "tokens d_in"], iters: int = 64) -> Float[Tensor, " d_in"]:
    """Weiszfeld's algorithm: the point minimising the summed distance to the rows of x."""
    y = x.mean(0)
    for _ in range(iters):
        w = 1 / (x - y).norm(dim=1).clamp_min(1e-8)
        y_next = (w[:, None] * x).sum(0) / w.sum()
        if (y_next - y).norm() <= 1e-6 * y.norm().clamp_min(1e-8):
            return y_next
        y = y_next
    return y


def needs_grads(arch_or_sae: Any) -> bool:
    """Whether an architecture (class or instance) selects latents with the loss gradient."""
    return bool(getattr(arch_or_sae, "needs_grads", False))


def check_grads(configs: Sequence[Any], has_grads: bool) -> None:
    """A one-line error when a gradient-aware SAE is asked of a store without gradients."""
    for cfg in configs:
        name = registry.name_of(cfg)
        if needs_grads(registry.get(name).model) and not has_grads:
            raise UserError(f"{name} selects latents with the loss gradient, but this store "
                            "holds none: cache it with `saebench cache --with-grads`")


def run_key(name: str, cfg: Any, train: TrainConfig, store_meta: dict) -> dict:
    """Everything that determines the trained weights; a resumed run must match it."""
    key = {"arch": name, "config": asdict(cfg), "train": train.semantic(), "store": store_meta}
    return json.loads(json.dumps(key, default=str))  # tuples -> lists, as after a JSON round trip


def _on_main(world: World, fn: Callable[[], Any]) -> Any:
    """fn() run on rank 0 alone (it reads rank 0's disk); its result, or its UserError, on
    every rank, so that no rank waits in a collective that another has left."""
    if world.size == 1:
        return fn()
    result = None
    if world.is_main:
        try:
            result = ("ok", fn())
        except UserError as err:
            result = ("error", str(err))
    kind, value = world.broadcast(result)
    if kind == "error":
        raise UserError(value)
    return value


def _publish_curves(members: list[Member]) -> float:
    """Write the curves and make sure the workspace catalog has a view over them."""
    curves.write(members)
    for workspace in {workspace_of(m.out_dir) for m in members}:
        refresh(workspace)
    return time.perf_counter()


def _batches(source: Source, train: TrainConfig, start: int, device: torch.device,
             scale: float, with_grads: bool, world: World):
    # Gradients stay in raw units: only their direction matters to gradient-aware selection.
    n = train.batch_size // world.size
    for batch in source.batches(train.batch_size, seed=train.seed, start=start,
                                with_grads=with_grads):
        x, grad = batch if isinstance(batch, tuple) else (batch, None)
        if world.size > 1:  # this rank's fixed contiguous slice of the global batch
            lo = world.rank * n
            x, grad = x[lo:lo + n], (None if grad is None else grad[lo:lo + n])
        x = x.to(device, non_blocking=True).float() * scale  # never in place: x may be a view
        yield x, (None if grad is None else grad.to(device, non_blocking=True).float())


def _wandb(train: TrainConfig, members: list[Member]) -> Any:
    if not train.wandb:
        return None
    try:
        import wandb
    except ImportError:
        raise UserError("--wandb needs the wandb package: pip install wandb") from None
    return wandb.init(project=train.wandb_project, name="+".join(m.name for m in members),
                      config={m.name: m.key for m in members})


def _run(members: list[Member], source: Source, train: TrainConfig, start: int,
         n_steps: int, scale: float, device: torch.device, on_step: Callable | None,
         world: World) -> None:
    main = world.is_main  # only rank 0 shows progress and writes
    warm = warmup_steps(n_steps, train.warmup_steps)
    every = curves.log_every(n_steps, train.log_every)
    wandb_run = _wandb(train, members) if main else None
    t0, bar = time.perf_counter(), tqdm(
        total=n_steps * train.batch_size, initial=start * train.batch_size, unit="tok",
        unit_scale=True, disable=not (train.progress and main), dynamic_ncols=True)
    with_grads = any(needs_grads(m.sae) for m in members)
    data, published = _batches(source, train, start, device, scale, with_grads, world), t0
    with checkpoint.DeferredInterrupt() as interrupt, bar:
        for step in range(start, n_steps):
            x, grad = next(data)
            if step == 0:
                _init_b_dec(members, world.gather(x).flatten(0, 1), train.b_dec_init)
            lrs = [m.base_lr * lr_factor(step, n_steps, warm, train.decay_frac) for m in members]
            on = placement.placed(x, grad, members)  # the batch on every member device, once
            for m, lr in zip(members, lrs, strict=True):
                seen = step * train.batch_size
                dead = m.dead.mask() if seen >= m.dead.window else None
                mx, mgrad = on[placement.device_of(m)]
                autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                            if mx.device.type == "cuda" else contextlib.nullcontext())
                member.step(m, mx, StepContext(step, dead, mgrad, world), lr, autocast, world)
            bar.update(train.batch_size)
            done = step + 1
            if curves.is_logged(done, n_steps, every):  # queued on the device: no sync
                curves.record(members, done, train.batch_size, lrs, t0,
                              (done - start) * train.batch_size)
            flush = done % curves.FLUSH_EVERY == 0 or done == n_steps
            if flush and curves.flush(members, world, wandb_run):  # one host copy per flush
                bar.set_postfix(curves.postfix(members), refresh=False)
                if main and time.perf_counter() - published > 30:  # keep the app's curves fresh
                    published = _publish_curves(members)
            if on_step is not None:
                on_step(done)
            # One rank's Ctrl-C stops every rank at the same step (else the others would wait).
            stop = world.any(interrupt.requested, device)
            if stop or (done % train.checkpoint_every == 0 and done < n_steps):
                _save_checkpoint(members, done, scale, world)
            if stop:
                raise KeyboardInterrupt


@torch.no_grad()
def _init_b_dec(members: list[Member], x: Tensor, how: str) -> None:
    # b_dec starts at the data's geometric median (Gao et al. 2024, App. A.1, after Bricken
    # et al. 2023), so the encoder sees centred inputs from the first step. x is the whole
    # first global batch (gathered from every rank), so every rank computes the same centre.
    centre = geometric_median(x) if how == "geometric_median" else x.mean(0)
    for m in members:
        if isinstance(m.sae.b_dec, nn.Parameter):  # MP without a decoder bias keeps its zeros
            m.sae.b_dec.copy_(centre)


def _save_checkpoint(members: list[Member], step: int, scale: float, world: World) -> None:
    curves.flush(members, world)  # the saved rows are every row logged so far
    member.sync_sums(members, world)  # so the saved state is every rank's
    if world.is_main:
        checkpoint.save_all([m.out_dir for m in members], step,
                            [member.state(m, step, scale) for m in members])
        curves.write(members)


def _finish(members: list[Member], n_steps: int, scale: float, store_meta: dict,
            train: TrainConfig, seconds: float, store_path: str | None) -> None:
    meta = saelens_metadata(store_meta)
    for m in members:
        last = m.rows[-1] if m.rows else {}
        run = {"key": m.key, "arch": m.key["arch"], "config": m.key["config"],
               "train": asdict(train), "store": store_meta, "store_path": store_path,
               "norm_scale": scale,
               "steps": n_steps, "tokens_trained": n_steps * train.batch_size,
               "train_seconds_this_session": seconds,
               "final": {k: last.get(k) for k in ("loss", "fvu", "l0", "dead_frac", "dead_window")}}
        save_sae(m.out_dir, m.sae.export_saelens(scale), d_in=m.sae.d_in, d_sae=m.sae.d_sae,
                 meta=meta, run=run)
    _publish_curves(members)
    checkpoint.remove_all([m.out_dir for m in members])


def train_saes(
    source: Source,
    configs: Sequence[Any],
    out_dirs: Sequence[str | Path],
    store_meta: dict,
    train: TrainConfig,
    *,
    on_step: Callable[[int], None] | None = None,
    store_path: str | None = None,
) -> list[Path]:
    """Train one SAE per config from one pass over `source`; returns the SAELens folders.

    Re-running the same call after an interrupt resumes from the newest common checkpoint;
    re-running a finished call does nothing. `on_step(steps_done)` runs after every step;
    `store_path` is recorded in saebench_train.json so evals can find the store. Under
    torchrun every rank makes this same call (see trainers/distributed.py).
    """
    out_dirs = [Path(d) for d in out_dirs]
    if len(configs) != len(out_dirs) or not configs:
        raise UserError("train_saes needs one output folder per config (and at least one)")
    n_steps = train.tokens // train.batch_size
    if n_steps < 1:
        raise UserError(f"--tokens ({train.tokens}) must be at least --batch-size "
                        f"({train.batch_size})")
    check_grads(configs, bool(getattr(source, "has_grads", False)))
    if train.batch_size % distributed.env_size():  # before any rank waits for the others
        raise UserError(f"--batch-size ({train.batch_size}) must divide by the number of "
                        f"ranks ({distributed.env_size()})")
    world = distributed.init_world(train.device)
    _train(source, configs, out_dirs, store_meta, train, on_step, store_path, world)
    return out_dirs


def _train(source: Source, configs: Sequence[Any], out_dirs: list[Path], store_meta: dict,
           train: TrainConfig, on_step: Callable[[int], None] | None, store_path: str | None,
           world: World) -> None:
    keys = [run_key(registry.name_of(c), c, train, store_meta) for c in configs]
    if _on_main(world, lambda: checkpoint.check_outputs(out_dirs, keys)):
        if world.is_main:
            print(f"already trained: {', '.join(str(d) for d in out_dirs)}")
        return
    devices = placement.devices(train, world)
    device = devices[0]  # where batches arrive; members on other devices get a copy
    if any(d.type == "cuda" for d in devices):
        torch.set_float32_matmul_precision("high")  # TF32: plenty for SAE training
    n_steps = train.tokens // train.batch_size
    window = min(train.dead_window, n_steps * train.batch_size)
    members = [member.build(c, d, k, train, source.d_in, window, devices[i % len(devices)])
               for i, (c, d, k) in enumerate(zip(configs, out_dirs, keys, strict=True))]
    scale = world.broadcast(math.sqrt(source.d_in) / source.stats().mean_norm)
    # Rank 0's newest checkpoint; every rank then reads it (--out on a filesystem all see).
    start = _on_main(world, lambda: checkpoint.latest_common_step(out_dirs) or 0)
    if start:
        states = [checkpoint.load(m.out_dir, start, placement.device_of(m)) for m in members]
        scale = states[0]["scale"]
        for m, state in zip(members, states, strict=True):
            member.restore(m, state)
    t0 = time.perf_counter()
    with checkpoint.DeferredInterrupt():  # a Ctrl-C while saving lets the save finish first
        _run(members, source, train, start, n_steps, scale, device, on_step, world)
        if world.is_main:
            _finish(members, n_steps, scale, store_meta, train, time.perf_counter() - t0,
                    store_path)
    world.barrier()  # the folders exist when any rank returns
