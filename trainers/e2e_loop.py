"""End-to-end SAE training (Braun et al. 2024, arXiv 2405.12241): the model in the loop.

Each step takes a batch of token windows and
1. runs the blocks before the SAE's hook once, without gradients (they never see the SAE);
2. runs the rest of the model on that residual, without gradients: the clean logits (and,
   for e2e+ds, the clean downstream residuals) come from this same forward;
3. encodes the residual with the architecture's training-time selection, splices x̂ in at
   positions 1.. (BOS stays clean) and runs the rest of the model again, with gradients to
   the SAE only (model weights are frozen on load);
4. minimises trainers/e2e_loss.py's loss.
So a step costs one forward of the lower blocks and two forwards plus one backward of the
upper ones: at a mid-depth hook about half a full model's backward.

Everything else is the local loop's: member.build (seeded init, Adam, dead counters), the
learning-rate schedule, curves, SAELens export with the input normalisation folded in, and
checkpoints for exact resume (trainers/checkpoint.py; data order is a pure function of seed
and step). Ours: a checkpoint is also written every CHECKPOINT_SECONDS, because an e2e step
takes seconds on a CPU and the local loop's default of 1000 steps would be hours apart.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm import tqdm

from store.catalog import refresh, workspace_of
from store.errors import UserError
from trainers import checkpoint, curves, member, registry
from trainers.config import TrainConfig
from trainers.dead import fires
from trainers.distributed import SINGLE
from trainers.e2e_codes import train_reconstruction
from trainers.e2e_init import init_from_saved
from trainers.e2e_loss import DEFAULT_LOSS, E2ELossConfig, downstream_fvu, kl_to_clean, resid_layers
from trainers.loop import StepContext, geometric_median, run_key
from trainers.saelens_format import saelens_metadata, save_sae
from trainers.schedule import lr_factor, warmup_steps
from trainers.topk import _fvu

CHECKPOINT_SECONDS = 300.0


class WindowOrder:
    """Batches of windows: a fresh seeded permutation per epoch, so batch i is a pure function
    of (seed, i) and a resumed run sees exactly the batches it would have seen."""

    def __init__(self, n_windows: int, per_step: int, seed: int) -> None:
        self.n, self.per_step, self.seed, self._perms = n_windows, per_step, seed, {}

    def _perm(self, epoch: int) -> Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g)}  # keep one epoch only
        return self._perms[epoch]

    def batch(self, step: int) -> Tensor:
        ids = range(step * self.per_step, (step + 1) * self.per_step)
        return torch.stack([self._perm(j // self.n)[j % self.n] for j in ids])


class _Capture:
    """Forward hooks that keep the downstream residuals of one run (with their graph)."""

    def __init__(self, names: list[str]) -> None:
        self.names, self.acts = names, {}

    def hooks(self) -> list[tuple[str, Any]]:
        def keep(act: Tensor, hook) -> None:
            self.acts[hook.name] = act[:, 1:]

        return [(name, keep) for name in self.names]

    def ordered(self) -> list[Tensor]:
        return [self.acts[n] for n in self.names]


def e2e_loss(model, sae, tokens: Int[Tensor, "batch ctx"], start: int, ds_hooks: list[str],
             scale: float, loss_cfg: E2ELossConfig, ctx: Any) -> tuple[Tensor, dict, Tensor]:
    """(loss, detached parts, detached sparse codes) of one batch of windows."""
    clean_ds, spliced_ds = _Capture(ds_hooks), _Capture(ds_hooks)
    with torch.no_grad():
        # stop_at_layer=0 runs the embeddings only (token and positional, as the hook sees).
        resid = model(tokens, stop_at_layer=start)
        with model.hooks(fwd_hooks=clean_ds.hooks()):
            clean_logits = model(resid, start_at_layer=start)
    b, n, d = resid.shape
    x = resid[:, 1:].reshape(-1, d) * scale
    x_hat, codes = train_reconstruction(sae, x, ctx)
    spliced = torch.cat([resid[:, :1], (x_hat / scale).view(b, n - 1, d).to(resid.dtype)], 1)
    with model.hooks(fwd_hooks=spliced_ds.hooks()):
        logits = model(spliced, start_at_layer=start)
    # Position 0's logits cannot change (causal attention, BOS not spliced).
    kl = kl_to_clean(clean_logits[:, 1:], logits[:, 1:])
    total = loss_cfg.kl_coef * kl
    parts = {"kl": kl.detach(), "fvu": _fvu(x, x_hat.detach())}
    if ds_hooks:
        ds = downstream_fvu(clean_ds.ordered(), spliced_ds.ordered())
        total = total + loss_cfg.ds_coef * ds
        parts["ds_fvu"] = ds.detach()
    return total, parts, codes


def _plan(model, windows: Tensor, hook: str, train: TrainConfig) -> tuple[int, list[str], int,
                                                                          int]:
    """(start layer, downstream hooks, windows per step, steps), or a one-line error."""
    if train.loss not in ("e2e", "e2e+ds"):
        raise UserError(f"train_e2e needs --loss e2e or e2e+ds, not {train.loss!r}")
    start, ds = resid_layers(hook, model.cfg.n_layers)
    n_windows, ctx_len = windows.shape
    if ctx_len < 2 or n_windows < 1:
        raise UserError("e2e training needs token windows of at least 2 tokens")
    per_step = max(1, train.batch_size // (ctx_len - 1))
    if per_step > n_windows:
        raise UserError(f"--batch-size {train.batch_size} needs {per_step} windows per step, "
                        f"but the store holds {n_windows}")
    n_steps = train.tokens // (per_step * (ctx_len - 1))
    if n_steps < 1:
        raise UserError(f"--tokens ({train.tokens}) is less than one step of "
                        f"{per_step * (ctx_len - 1)} spliced tokens")
    return start, (ds if train.loss == "e2e+ds" else []), per_step, n_steps


def train_e2e(
    model, windows: Int[Tensor, "seq ctx"], hook: str, cfg: Any, out_dir: str | Path,
    store_meta: dict, train: TrainConfig, scale: float, *,
    loss_cfg: E2ELossConfig = DEFAULT_LOSS, init: str | Path | None = None,
    store_path: str | None = None,
) -> Path:
    """Train one SAE end to end on `windows` (position 0 = BOS); returns its SAELens folder.

    `scale` multiplies raw activations into the SAE's training units (as the local loop's
    normalisation) and is folded into the saved weights. `init`: an SAE folder to start from
    (e.g. the local SAE of the same architecture). Rerunning after an interrupt resumes.
    """
    out_dir = Path(out_dir)
    start_layer, ds_hooks, per_step, n_steps = _plan(model, windows, hook, train)
    name = registry.name_of(cfg)
    key = run_key(name, cfg, train, store_meta) | {
        "e2e": asdict(loss_cfg), "init": None if init is None else str(init)}
    if checkpoint.check_outputs([out_dir], [key]):
        print(f"already trained: {out_dir}")
        return out_dir
    tokens_per_step = per_step * (windows.shape[1] - 1)
    device = next(model.parameters()).device
    m = member.build(cfg, out_dir, key, train, model.cfg.d_model,
                     min(train.dead_window, n_steps * tokens_per_step), device)
    order, step0 = WindowOrder(windows.shape[0], per_step, train.seed), 0
    saved = checkpoint.latest_common_step([out_dir])
    if saved:
        state = checkpoint.load(out_dir, saved, device)
        member.restore(m, state)
        step0 = saved
    elif init is not None:
        init_from_saved(m.sae, init, scale)
    else:  # b_dec at the first batch's geometric median (Gao et al. 2024, App. A.1)
        with torch.no_grad():
            first = model(windows[order.batch(0)].to(device), stop_at_layer=start_layer)
            m.sae.b_dec.copy_(geometric_median(first[:, 1:].flatten(0, 1) * scale))
    t0 = time.perf_counter()
    run = (model, windows, order, start_layer, ds_hooks, scale, loss_cfg, n_steps,
           tokens_per_step)
    _steps(m, run, train, step0)
    _finish(m, n_steps, tokens_per_step, scale, store_meta, train, loss_cfg, init,
            time.perf_counter() - t0, store_path)
    return out_dir


def _one_step(m, run: tuple, step: int, lr: float) -> None:
    model, windows, order, start, ds_hooks, scale, loss_cfg, _, _ = run
    for group in m.opt.param_groups:
        group["lr"] = lr
    dead = m.dead.mask() if step * run[-1] >= m.dead.window else None
    tokens = windows[order.batch(step)].to(m.sae.W_dec.device)
    total, parts, codes = e2e_loss(model, m.sae, tokens, start, ds_hooks, scale, loss_cfg,
                                   StepContext(step, dead, None, SINGLE))
    m.opt.zero_grad(set_to_none=True)
    total.backward()
    m.opt.step()
    if hasattr(m.sae, "after_step"):
        m.sae.after_step()
    fired, l0 = fires(codes, m.sae.d_sae)
    m.dead.update(fired, codes.shape[0])
    for k, v in {"loss": total.detach(), "l0": l0, **parts}.items():
        m.sums[k] = m.sums.get(k, 0.0) + v.detach().float()
    m.sums["n"] = m.sums.get("n", 0.0) + 1.0


def _steps(m, run: tuple, train: TrainConfig, step0: int) -> None:
    n_steps, tokens_per_step = run[-2], run[-1]
    warm = warmup_steps(n_steps, train.warmup_steps)
    every = curves.log_every(n_steps, train.log_every)
    t0 = last_save = time.perf_counter()
    bar = tqdm(total=n_steps * tokens_per_step, initial=step0 * tokens_per_step, unit="tok",
               unit_scale=True, disable=not train.progress, dynamic_ncols=True, desc="e2e")
    with checkpoint.DeferredInterrupt() as interrupt, bar:
        for step in range(step0, n_steps):
            lr = m.base_lr * lr_factor(step, n_steps, warm, train.decay_frac)
            _one_step(m, run, step, lr)
            bar.update(tokens_per_step)
            done = step + 1
            if curves.is_logged(done, n_steps, every):
                curves.record([m], done, tokens_per_step, [lr], t0,
                              (done - step0) * tokens_per_step)
                curves.flush([m], SINGLE)
                bar.set_postfix(curves.postfix([m]) | {"kl": f"{m.rows[-1]['kl']:.4f}"},
                                refresh=False)
            due = done % train.checkpoint_every == 0 or \
                time.perf_counter() - last_save > CHECKPOINT_SECONDS
            if interrupt.requested or (due and done < n_steps):
                curves.flush([m], SINGLE)
                checkpoint.save_all([m.out_dir], done, [member.state(m, done, run[5])])
                curves.write([m])
                last_save = time.perf_counter()
            if interrupt.requested:
                raise KeyboardInterrupt


def _finish(m, n_steps: int, tokens_per_step: int, scale: float, store_meta: dict,
            train: TrainConfig, loss_cfg: E2ELossConfig, init: Any, seconds: float,
            store_path: str | None) -> None:
    curves.flush([m], SINGLE)
    last = m.rows[-1] if m.rows else {}
    record = {"key": m.key, "arch": m.key["arch"], "config": m.key["config"],
              "train": asdict(train), "loss": train.loss, "e2e": asdict(loss_cfg),
              "init": None if init is None else str(init), "store": store_meta,
              "store_path": store_path, "norm_scale": scale, "steps": n_steps,
              "tokens_trained": n_steps * tokens_per_step,
              "train_seconds_this_session": seconds,
              "final": {k: last.get(k) for k in ("loss", "kl", "ds_fvu", "fvu", "l0",
                                                 "dead_frac", "dead_window")}}
    record = {k: (None if isinstance(v, float) and math.isnan(v) else v)
              for k, v in record.items()}
    save_sae(m.out_dir, m.sae.export_saelens(scale), d_in=m.sae.d_in, d_sae=m.sae.d_sae,
             meta=saelens_metadata(store_meta), run=record)
    curves.write([m])
    refresh(workspace_of(m.out_dir))
    checkpoint.remove_all([m.out_dir])
