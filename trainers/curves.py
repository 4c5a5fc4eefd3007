"""Training curves: which steps are logged, and rows that stay on the device until a flush.

Every run gets at least MIN_POINTS points on its curve whatever its length (a 122-step run
used to draw its curve from 2 points): every step up to DENSE_STEPS steps, else every
(steps // MIN_POINTS)-th step. Reading a CUDA scalar makes the host wait for the GPU, so a
logged step only stacks its values on the device (no sync); `flush` brings every pending row
to the host in one copy (and, under torchrun, one all-reduce) every FLUSH_EVERY steps, the
cadence at which the loop used to sync, and before anything reads the rows.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from store.catalog import write_parquet_atomic
from trainers.distributed import World

MIN_POINTS = 100
DENSE_STEPS = 1000
FLUSH_EVERY = 50


def log_every(n_steps: int, requested: int | None) -> int:
    """Steps between logged rows: `requested`, or the default that gives >= MIN_POINTS rows."""
    if requested is not None:
        return max(1, int(requested))
    return 1 if n_steps <= DENSE_STEPS else n_steps // MIN_POINTS


def is_logged(done: int, n_steps: int, every: int) -> bool:
    return done % every == 0 or done == n_steps


def record(members: list, step: int, batch_size: int, lrs: list[float], t0: float,
           tokens_run: int) -> None:
    """Queue one row per Member: its mean loss parts since the last row, still on the device."""
    rate = tokens_run / max(time.perf_counter() - t0, 1e-9)
    for m, lr in zip(members, lrs, strict=True):
        n = float(m.sums.pop("n"))
        names = list(m.sums)
        # The sums are this step's own tensors (kept, not copied); the dead count is the one
        # new kernel pair per step. Stacking waits for the flush.
        values = [*(m.sums[k] for k in names), (m.dead.since >= m.dead.window).sum()]
        head = {"sae": m.name, "step": step, "tokens": step * batch_size, "lr": lr,
                "dead_window": m.dead.window, "tokens_per_s": rate}
        m.pending.append((head, names, n, values))
        m.sums.clear()


def flush(members: list, world: World, wandb_run: Any = None) -> bool:
    """Move every pending row into `m.rows` (every rank calls this at the same step), and
    to W&B when given a run; False when nothing was pending."""
    moved, first = False, [len(m.rows) for m in members]
    for m in members:
        if not m.pending:
            continue
        flat = torch.stack([torch.as_tensor(v).float().reshape(()).to(m.dead.since.device)
                            for p in m.pending for v in p[3]])
        host, at = world.mean(flat).cpu().tolist(), 0  # one copy (and wait) for all rows
        d_sae = m.dead.since.numel()
        for head, names, n, values in m.pending:
            got = host[at : at + len(values)]
            at += len(values)
            m.rows.append({**head, "dead_frac": got[-1] / d_sae,
                           **{k: v / n for k, v in zip(names, got, strict=False)}})
        m.pending.clear()
        moved = True
    if moved and wandb_run is not None:
        for i in range(max(len(m.rows) - n for m, n in zip(members, first, strict=True))):
            rows = [m.rows[n + i] for m, n in zip(members, first, strict=True)
                    if n + i < len(m.rows)]
            wandb_run.log({f"{r['sae']}/{k}": v for r in rows for k, v in r.items()
                           if k != "sae"}, step=rows[0]["step"])
    return moved


def postfix(members: list) -> dict:
    """The progress bar's postfix: each Member's newest row."""
    last = [m.rows[-1] for m in members if m.rows]
    return {"loss": "|".join(f"{r['loss']:.4f}" for r in last),
            "L0": "|".join(f"{r['l0']:.1f}" for r in last),
            "dead": "|".join(f"{100 * r['dead_frac']:.1f}%" for r in last)}


def write(members: list) -> None:
    """Each Member's flushed rows to `<out>/curves.parquet` (atomically; NaN where absent)."""
    for m in members:
        if m.rows:
            cols = {k: None for r in m.rows for k in r}
            write_parquet_atomic(m.out_dir / "curves.parquet",
                                 [{k: r.get(k, math.nan) for k in cols} for r in m.rows])
