"""Run tasks on a model: accuracy and the metric on clean and corrupt prompts, and which
tasks the model can do well enough to be used for circuit scoring."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import torch
from jaxtyping import Float, Int
from torch import Tensor

from saebench.tasks import TASKS, TaskBatch, TaskUnavailable, get_task

MIN_ACCURACY = 0.6
"""A task is usable when accuracy ≥ this and the mean clean metric is > 0."""
CHUNK = 256
"""Pairs per forward pass (clean and corrupt together): on a CPU a forward's cost is mostly
reading the weights, so few large forwards beat many small ones."""


@dataclass(frozen=True)
class TaskResult:
    """One task's scores on one model (NaN fields when the task is unavailable)."""

    task: str
    n: int
    accuracy: float
    clean_mean: float
    clean_std: float
    corrupt_mean: float
    corrupt_std: float
    corrupt_accuracy: float
    usable: bool
    reason: str
    """Why the task is not usable ('' when it is)."""

    def to_json(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def last_logits(
    model, tokens: Int[Tensor, "batch seq"], pos: Int[Tensor, " batch"]
) -> Float[Tensor, "batch 1 vocab"]:
    """Logits at each row's `pos` only: unembedding every position would cost ~20% more."""
    resid = model(tokens, stop_at_layer=model.cfg.n_layers)
    picked = resid[torch.arange(len(pos), device=resid.device), pos]
    return model.unembed(model.ln_final(picked[:, None]))


def score(model, task, batch: TaskBatch) -> dict[str, Tensor]:
    """Per-pair metric and correctness on clean and corrupt prompts, CHUNK pairs a forward."""
    # Sort by length so each chunk is trimmed to its own longest prompt (less padding).
    order = torch.argsort(batch.pos, stable=True)
    parts: dict[str, list[Tensor]] = {k: [] for k in ("clean", "corrupt", "ok", "ok_corrupt")}
    device = next(model.parameters()).device
    for start in range(0, len(batch), CHUNK):
        sub = batch.select(order[start : start + CHUNK]).to(device)
        tokens, pos = torch.cat([sub.clean, sub.corrupt]), torch.cat([sub.pos, sub.pos])
        logits = last_logits(model, tokens, pos).chunk(2)
        at0 = replace(sub, pos=torch.zeros_like(sub.pos))  # logits hold only position `pos`
        for key, ok, half in (("clean", "ok", logits[0]), ("corrupt", "ok_corrupt", logits[1])):
            parts[key].append(task.metric(half, at0).cpu())
            parts[ok].append(task.correct(half, at0).cpu())
    inverse = torch.argsort(order)
    return {k: torch.cat(v)[inverse] for k, v in parts.items()}


def run_task(model, name: str, n: int = 200, seed: int = 0) -> TaskResult:
    """Score one task on `model` over `n` seeded pairs."""
    task = get_task(name)
    try:
        batch = task.batch(model.tokenizer, n, seed)
    except TaskUnavailable as err:
        nan = float("nan")
        return TaskResult(name, 0, nan, nan, nan, nan, nan, nan, False, str(err))
    s = score(model, task, batch)
    acc, mean = s["ok"].float().mean().item(), s["clean"].mean().item()
    reasons = []
    if acc < MIN_ACCURACY:
        reasons.append(f"accuracy {acc:.2f} < {MIN_ACCURACY}")
    if not mean > 0:
        reasons.append(f"mean clean metric {mean:.3g} ≤ 0")
    return TaskResult(
        task=name,
        n=n,
        accuracy=acc,
        clean_mean=mean,
        clean_std=s["clean"].std().item() if n > 1 else 0.0,
        corrupt_mean=s["corrupt"].mean().item(),
        corrupt_std=s["corrupt"].std().item() if n > 1 else 0.0,
        corrupt_accuracy=s["ok_corrupt"].float().mean().item(),
        usable=not reasons,
        reason="; ".join(reasons),
    )


def run_tasks(
    model, names: Sequence[str] | None = None, n: int = 200, seed: int = 0
) -> list[TaskResult]:
    """Score several tasks (default: all of TASKS); unknown names fail before any forward."""
    names = list(TASKS) if names is None else list(names)
    for name in names:
        get_task(name)
    return [run_task(model, name, n, seed) for name in names]


def usable_tasks(
    model, names: Sequence[str] | None = None, n: int = 200, seed: int = 0
) -> tuple[str, ...]:
    """The tasks this model does well enough to score circuits on (see MIN_ACCURACY)."""
    return tuple(r.task for r in run_tasks(model, names, n, seed) if r.usable)


def format_table(results: Sequence[TaskResult]) -> str:
    """A fixed-width table of results, one task a row."""
    head = (
        f"{'task':<13} {'n':>4} {'acc':>5} {'clean mean±std':>16} "
        f"{'corrupt mean±std':>17} {'c.acc':>5}  status"
    )
    rows = [head]
    for r in results:
        status = "ok" if r.usable else f"fails ({r.reason})"
        rows.append(
            f"{r.task:<13} {r.n:>4} {r.accuracy:>5.2f} "
            f"{f'{r.clean_mean:.3f}±{r.clean_std:.3f}':>16} "
            f"{f'{r.corrupt_mean:.3f}±{r.corrupt_std:.3f}':>17} "
            f"{r.corrupt_accuracy:>5.2f}  {status}"
        )
    return "\n".join(rows)
