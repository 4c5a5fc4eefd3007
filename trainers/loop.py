"""The one training loop: several SAEs trained from one pass over one stream of batches.

Architectures differ only in `loss(x, ctx)` and an optional `after_step()`. The loop owns
everything else: input normalisation (mean ‖x‖ = √d_in, folded into the saved weights), b_dec
initialisation, Adam with warm-up and final decay, dead-latent counters, curves, checkpoints
(exact resume: weights, optimiser, schedule, data position, counters) and the SAELens export.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn
from tqdm import tqdm

from store.catalog import refresh, workspace_of, write_parquet_atomic
from store.errors import UserError
from trainers import checkpoint, registry
from trainers.config import TrainConfig
from trainers.dead import DeadLatents, fires
from trainers.saelens_format import saelens_metadata, save_sae
from trainers.schedule import default_lr, lr_factor, warmup_steps

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


@dataclass
class Member:
    """One SAE of a sweep, with its optimiser, counters and curves."""

    name: str
    out_dir: Path
    key: dict
    sae: nn.Module
    opt: torch.optim.Optimizer
    base_lr: float
    dead: DeadLatents
    rows: list[dict] = field(default_factory=list)
    sums: dict[str, Tensor] = field(default_factory=dict)


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


def _pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {spec}: CUDA is not available")
    return torch.device(spec)


def _build(cfg: Any, out_dir: Path, key: dict, train: TrainConfig, d_in: int, window: int,
           device: torch.device) -> Member:
    arch = registry.get(key["arch"])
    sae = arch.model(d_in, cfg, generator=torch.Generator().manual_seed(train.seed)).to(device)
    base_lr = train.lr if train.lr is not None else default_lr(cfg.d_sae)
    opt = torch.optim.Adam(sae.parameters(), lr=base_lr, betas=train.adam_betas,
                           eps=train.adam_eps, fused=True)
    return Member(out_dir.name, out_dir, key, sae, opt, base_lr,
                  DeadLatents(cfg.d_sae, window, device))


def _state(m: Member, step: int, scale: float) -> dict:
    return {"key": m.key, "step": step, "scale": scale, "sae": m.sae.state_dict(),
            "opt": m.opt.state_dict(), "dead": m.dead.state_dict(), "rows": m.rows,
            "sums": m.sums}


def _restore(m: Member, state: dict) -> None:
    m.sae.load_state_dict(state["sae"])
    m.opt.load_state_dict(state["opt"])
    m.dead.load_state_dict(state["dead"])
    m.rows, m.sums = list(state["rows"]), dict(state["sums"])


def _step(m: Member, x: Tensor, ctx: StepContext, lr: float, autocast: Any) -> None:
    for group in m.opt.param_groups:
        group["lr"] = lr
    with autocast:
        out = m.sae.loss(x, ctx)
    m.opt.zero_grad(set_to_none=True)
    out.total.backward()
    m.opt.step()
    if hasattr(m.sae, "after_step"):
        m.sae.after_step()
    fired, l0 = fires(out.codes, m.dead.since.shape[0])
    m.dead.update(fired, x.shape[0])
    for name, value in {"loss": out.total.detach(), "l0": l0, **out.parts}.items():
        m.sums[name] = m.sums.get(name, 0.0) + value.detach().float()
    m.sums["n"] = m.sums.get("n", 0.0) + 1.0


def _log(members: list[Member], step: int, train: TrainConfig, lr: list[float], t0: float,
         tokens_run: int) -> dict:
    rate = tokens_run / max(time.perf_counter() - t0, 1e-9)
    for m, m_lr in zip(members, lr, strict=True):
        n = float(m.sums.pop("n"))
        row = {"sae": m.name, "step": step, "tokens": step * train.batch_size, "lr": m_lr,
               "dead_frac": m.dead.fraction(), "dead_window": m.dead.window,
               "tokens_per_s": rate, **{k: float(v) / n for k, v in m.sums.items()}}
        m.rows.append(row)
        m.sums.clear()
    last = [m.rows[-1] for m in members]
    return {"loss": "|".join(f"{r['loss']:.4f}" for r in last),
            "L0": "|".join(f"{r['l0']:.1f}" for r in last),
            "dead": "|".join(f"{100 * r['dead_frac']:.1f}%" for r in last)}


def _write_curves(members: list[Member]) -> None:
    for m in members:
        if m.rows:
            cols = {k: None for r in m.rows for k in r}
            write_parquet_atomic(m.out_dir / "curves.parquet",
                                 [{k: r.get(k, math.nan) for k in cols} for r in m.rows])


def _publish_curves(members: list[Member]) -> float:
    """Write the curves and make sure the workspace catalog has a view over them."""
    _write_curves(members)
    for workspace in {workspace_of(m.out_dir) for m in members}:
        refresh(workspace)
    return time.perf_counter()


def _batches(source: Source, train: TrainConfig, start: int, device: torch.device,
             scale: float, with_grads: bool):
    # Gradients stay in raw units: only their direction matters to gradient-aware selection.
    for batch in source.batches(train.batch_size, seed=train.seed, start=start,
                                with_grads=with_grads):
        x, grad = batch if isinstance(batch, tuple) else (batch, None)
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
         n_steps: int, scale: float, device: torch.device, on_step: Callable | None) -> None:
    warm, wandb_run = warmup_steps(n_steps, train.warmup_steps), _wandb(train, members)
    use_bf16 = device.type == "cuda"
    t0, bar = time.perf_counter(), tqdm(
        total=n_steps * train.batch_size, initial=start * train.batch_size, unit="tok",
        unit_scale=True, disable=not train.progress, dynamic_ncols=True)
    with_grads = any(needs_grads(m.sae) for m in members)
    data, published = _batches(source, train, start, device, scale, with_grads), t0
    with checkpoint.DeferredInterrupt() as interrupt, bar:
        for step in range(start, n_steps):
            x, grad = next(data)
            if step == 0:
                _init_b_dec(members, x, train.b_dec_init)
            lrs = [m.base_lr * lr_factor(step, n_steps, warm, train.decay_frac) for m in members]
            for m, lr in zip(members, lrs, strict=True):
                seen = step * train.batch_size
                dead = m.dead.mask() if seen >= m.dead.window else None
                autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16
                            else contextlib.nullcontext())
                _step(m, x, StepContext(step, dead, grad), lr, autocast)
            bar.update(train.batch_size)
            done = step + 1
            if done % train.log_every == 0 or done == n_steps:
                bar.set_postfix(_log(members, done, train, lrs, t0,
                                     (done - start) * train.batch_size), refresh=False)
                if time.perf_counter() - published > 30:  # keep the app's curves fresh
                    published = _publish_curves(members)
                if wandb_run is not None:
                    wandb_run.log({f"{r['sae']}/{k}": v for r in (m.rows[-1] for m in members)
                                   for k, v in r.items() if k != "sae"}, step=done)
            if on_step is not None:
                on_step(done)
            if interrupt.requested or (done % train.checkpoint_every == 0 and done < n_steps):
                _save_checkpoint(members, done, scale)
            if interrupt.requested:
                raise KeyboardInterrupt


@torch.no_grad()
def _init_b_dec(members: list[Member], x: Tensor, how: str) -> None:
    # b_dec starts at the data's geometric median (Gao et al. 2024, App. A.1, after Bricken
    # et al. 2023), so the encoder sees centred inputs from the first step.
    centre = geometric_median(x) if how == "geometric_median" else x.mean(0)
    for m in members:
        if isinstance(m.sae.b_dec, nn.Parameter):  # MP without a decoder bias keeps its zeros
            m.sae.b_dec.copy_(centre)


def _save_checkpoint(members: list[Member], step: int, scale: float) -> None:
    checkpoint.save_all([m.out_dir for m in members], step,
                        [_state(m, step, scale) for m in members])
    _write_curves(members)


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
    `store_path` is recorded in saebench_train.json so evals can find the store.
    """
    out_dirs = [Path(d) for d in out_dirs]
    if len(configs) != len(out_dirs) or not configs:
        raise UserError("train_saes needs one output folder per config (and at least one)")
    n_steps = train.tokens // train.batch_size
    if n_steps < 1:
        raise UserError(f"--tokens ({train.tokens}) must be at least --batch-size "
                        f"({train.batch_size})")
    check_grads(configs, bool(getattr(source, "has_grads", False)))
    keys = [run_key(registry.name_of(c), c, train, store_meta) for c in configs]
    if checkpoint.check_outputs(out_dirs, keys):
        print(f"already trained: {', '.join(str(d) for d in out_dirs)}")
        return out_dirs
    device = _pick_device(train.device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32: plenty for SAE training
    window = min(train.dead_window, n_steps * train.batch_size)
    members = [_build(c, d, k, train, source.d_in, window, device)
               for c, d, k in zip(configs, out_dirs, keys, strict=True)]
    scale = math.sqrt(source.d_in) / source.stats().mean_norm
    start = checkpoint.latest_common_step(out_dirs) or 0
    if start:
        states = [checkpoint.load(m.out_dir, start, device) for m in members]
        scale = states[0]["scale"]
        for m, state in zip(members, states, strict=True):
            _restore(m, state)
    t0 = time.perf_counter()
    with checkpoint.DeferredInterrupt():  # a Ctrl-C while saving lets the save finish first
        _run(members, source, train, start, n_steps, scale, device, on_step)
        _finish(members, n_steps, scale, store_meta, train, time.perf_counter() - t0,
                store_path)
    return out_dirs
