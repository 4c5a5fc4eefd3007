"""`saebench heads`: rank attention heads for a task with discrete SAEs (O'Neill & Bui 2024)."""

from __future__ import annotations

from dataclasses import dataclass, field

from saebench.circuits.heads import DiscreteSAEConfig
from store.models import DEFAULT_MODEL


@dataclass(frozen=True)
class Args:
    """Rank a model's attention heads for a task by their positive-only discrete SAE codes."""

    task: str = "ioi"
    """Task suite (see saebench.tasks.TASKS): its clean prompts are the positives, its
    corrupted prompts the negatives."""
    model: str = DEFAULT_MODEL
    """Model: smollm2-135m, random:<preset>, a local HF folder or a TransformerLens name."""
    n: int = 10
    """Prompt pairs; the paper needs only 5-10."""
    seed: int = 0
    """Seed of the prompts and of the SAE."""
    top: int = 10
    """How many heads to print."""
    sae: DiscreteSAEConfig = field(default_factory=DiscreteSAEConfig)
    """The small SAE that discretises head outputs."""
    device: str = "cpu"
    """Torch device for the model."""


def main(args: Args) -> None:
    import time
    from dataclasses import replace

    from saebench.circuits.heads import rank_heads
    from saebench.tasks import get_task
    from store.errors import UserError
    from store.models import load_model

    if args.n < 2 or args.top < 1:
        raise UserError(f"--n ({args.n}) must be at least 2 and --top ({args.top}) positive")
    task = get_task(args.task)  # an unknown task fails before the model loads
    model = load_model(args.model, args.device)
    start = time.perf_counter()
    batch = task.batch(model.tokenizer, args.n, args.seed)
    device = model.cfg.device
    scores = rank_heads(
        model, batch.clean.to(device), batch.corrupt.to(device), last=batch.pos.to(device),
        cfg=replace(args.sae, seed=args.seed),
    )
    elapsed = time.perf_counter() - start
    print(f"{task.name}: {task.summary}")
    print(f"top {min(args.top, len(scores))} of {len(scores)} heads by positive-only codes "
          f"({args.n} pairs, {elapsed:.1f} s)")
    print("head     score")
    for name, score in list(scores.items())[: args.top]:
        print(f"{name:<8} {score:.2f}")
