"""`saebench tasks`: how well a model does each circuit task, on clean and corrupt prompts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Args:
    """Score a model on the task suites (ioi, sva, docstring, induction, greater_than)."""

    model: str = "smollm2-135m"
    """Model: smollm2-135m, random:<preset>, a local HF folder or a TransformerLens name."""
    tasks: tuple[str, ...] = ()
    """Tasks to run, in order (see saebench.tasks.TASKS); default: all."""
    n: int = 200
    """Prompt pairs per task."""
    seed: int = 0
    """Seed of the prompt generators."""
    out: Path | None = None
    """JSON result path; default: runs/tasks-<model>.json."""
    device: str | None = None
    """Torch device; default: cuda if available, else cpu."""


def main(args: Args) -> None:
    import time

    import torch

    from saebench.tasks import get_task
    from saebench.tasks.run import MIN_ACCURACY, format_table, run_tasks
    from store.errors import UserError
    from store.models import load_model

    names = list(args.tasks) or None
    for name in names or ():
        get_task(name)  # an unknown task fails before the model loads
    if args.n < 1:
        raise UserError(f"--n must be at least 1, got {args.n}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(args.model, device)
    start = time.perf_counter()
    results = run_tasks(model, names, args.n, args.seed)
    seconds = time.perf_counter() - start
    print(format_table(results))
    print(f"{args.n} pairs per task in {seconds:.1f} s; usable: accuracy ≥ {MIN_ACCURACY} and "
          "mean clean metric > 0")
    out = args.out or Path("runs") / f"tasks-{args.model.replace('/', '_').replace(':', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "model": args.model,
        "n": args.n,
        "seed": args.seed,
        "min_accuracy": MIN_ACCURACY,
        "seconds": seconds,
        "results": [r.to_json() for r in results],
    }
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(out)  # no half-written file on interrupt
    print(f"wrote {out}")
