"""One SAE of a sweep: its optimiser, dead counters and curve sums, and one training step.

Under several ranks (trainers/distributed.py) a step averages the gradients and reduces the
dead counters' fires over the global batch, and curve sums are averaged before they are logged
or saved, so every rank holds the same Member.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trainers import registry
from trainers.config import TrainConfig
from trainers.dead import DeadLatents, fires
from trainers.distributed import World, sync_grads
from trainers.schedule import default_lr


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
    pending: list = field(default_factory=list)
    """Logged rows not yet copied to the host (trainers/curves.py)."""


def build(cfg: Any, out_dir: Path, key: dict, train: TrainConfig, d_in: int, window: int,
          device: torch.device) -> Member:
    """A fresh Member: the same seeded init on every rank."""
    arch = registry.get(key["arch"])
    sae = arch.model(d_in, cfg, generator=torch.Generator().manual_seed(train.seed)).to(device)
    base_lr = train.lr if train.lr is not None else default_lr(cfg.d_sae)
    opt = torch.optim.Adam(sae.parameters(), lr=base_lr, betas=train.adam_betas,
                           eps=train.adam_eps, fused=True)
    return Member(out_dir.name, out_dir, key, sae, opt, base_lr,
                  DeadLatents(cfg.d_sae, window, device))


def state(m: Member, step: int, scale: float) -> dict:
    """Everything a checkpoint holds for exact resume."""
    return {"key": m.key, "step": step, "scale": scale, "sae": m.sae.state_dict(),
            "opt": m.opt.state_dict(), "dead": m.dead.state_dict(), "rows": m.rows,
            "sums": m.sums}


def restore(m: Member, saved: dict) -> None:
    m.sae.load_state_dict(saved["sae"])
    m.opt.load_state_dict(saved["opt"])
    m.dead.load_state_dict(saved["dead"])
    m.rows, m.sums = list(saved["rows"]), dict(saved["sums"])


def step(m: Member, x: Tensor, ctx: Any, lr: float, autocast: Any, world: World) -> None:
    """One optimiser step on this rank's slice `x` of the global batch."""
    for group in m.opt.param_groups:
        group["lr"] = lr
    with autocast:
        out = m.sae.loss(x, ctx)
    m.opt.zero_grad(set_to_none=True)
    out.total.backward()
    sync_grads(list(m.sae.parameters()), world)
    m.opt.step()
    if hasattr(m.sae, "after_step"):
        m.sae.after_step()
    fired, l0 = fires(out.codes, m.dead.since.shape[0])
    if world.size > 1:  # fired anywhere in the global batch
        fired = world.max(fired.int()).bool()
    m.dead.update(fired, x.shape[0] * world.size)
    for name, value in {"loss": out.total.detach(), "l0": l0, **out.parts}.items():
        m.sums[name] = m.sums.get(name, 0.0) + value.detach().float()
    m.sums["n"] = m.sums.get("n", 0.0) + 1.0


def sync_sums(members: list[Member], world: World) -> None:
    """Average the curve sums over ranks: each rank's loss is its share of the global one,
    and l0 a mean over equal slices, so the mean is the global batch's value."""
    if world.size == 1:
        return
    for m in members:
        names = [k for k in m.sums if k != "n"]
        if names:
            mean = world.mean(torch.stack([torch.as_tensor(m.sums[k]).float() for k in names]))
            m.sums.update(zip(names, mean.unbind(), strict=True))
