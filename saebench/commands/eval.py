"""`saebench eval`: evaluate an SAE on its store's held-out split and record the results."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from saebench.evals.configs import CoreConfig


@dataclass(frozen=True)
class Args:
    """Evaluate an SAE folder; write evals/<name>.json and catalog rows, print a table."""

    sae: Path
    """SAE folder: saebench's or any SAELens-format folder (cfg.json + sae_weights.safetensors)."""
    store: Path | None = None
    """Activation store (*.duckdb) whose held-out split is used; default: the store recorded
    in the SAE folder. It must hold the SAE's hook and d_in."""
    evals: tuple[str, ...] = ("core",)
    """Which evals to run, in order (see saebench.evals.EVALS): core."""
    core: CoreConfig = field(default_factory=CoreConfig)
    """Settings of the core eval."""
    device: str | None = None
    """Torch device for the SAE and the model; default: cuda if available, else cpu."""


def main(args: Args) -> None:
    import torch

    from saebench.evals import get_eval
    from saebench.evals.runner import open_context, run_evals

    for name in args.evals:
        get_eval(name)  # an unknown name fails before anything is loaded
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ctx = open_context(args.sae, args.store, device)
    configs = {name: getattr(args, name) for name in args.evals}
    run_evals(ctx, args.sae, tuple(args.evals), configs)
