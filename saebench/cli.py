"""The `saebench` command line, generated from each subcommand's config dataclass by tyro.

A subcommand lives in `saebench/commands/<name>.py` as a frozen `Args` dataclass (one
docstring per field becomes its --help) and a `main(args)` function. Heavy imports (torch,
transformer-lens) happen inside `main`, so `--help` stays instant.
"""

from __future__ import annotations

import importlib
import sys

import tyro

from store.errors import UserError

# name -> module under saebench.commands; the order is the order in --help.
COMMANDS = {
    "cache": "Cache a model's activations at a hook point into a DuckDB store.",
    "train": "Train one or more SAEs from a store in one pass over its activations.",
    "calibrate": "Shift thresholded SAEs' thresholds so their held-out L0 hits a target.",
    "eval": "Evaluate an SAE on its store's held-out split and record the results.",
    "index": "Index every feature of an SAE: top contexts, histograms, logits, neighbours.",
    "compare": "Match two SAEs' decoder directions one-to-one; report the features they share.",
    "app": "Browse a workspace's SAEs, features and evals in a local Streamlit app.",
    "demo": "Run the whole demo: cache, train two architectures, evaluate, explain and index them.",
    "info": "Describe a store, an SAE folder or a workspace.",
    "heads": "Rank a model's attention heads for a task with discrete SAEs (seconds).",
    "tasks": "Score a model on the circuit task suites (clean and corrupt prompts).",
    "circuits": "Find a sparse feature circuit for a task across SAEs at several hooks.",
    "graph": "Attribute one prompt's target-token logit to SAE latents: an attribution graph.",
    "illusion": "Check MLP latents for the subspace-patching illusion (W_out null-space split).",
}


def _load(name: str):
    return importlib.import_module(f"saebench.commands.{name}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    modules = {name: _load(name) for name in COMMANDS}
    try:
        args = tyro.extras.subcommand_cli_from_dict(
            {name: mod.Args for name, mod in modules.items()},
            prog="saebench",
            args=argv,
            description="saebench: cache, train, evaluate and browse sparse autoencoders.",
        )
    except UserError as err:  # a config dataclass rejected a value while tyro built it
        name = next((a for a in argv if a in COMMANDS), "")
        print(f"saebench {name}: error: {err}".replace("  ", " "), file=sys.stderr)
        return 2
    command = next(n for n, m in modules.items() if isinstance(args, m.Args))
    try:
        modules[command].main(args)
    except UserError as err:
        print(f"saebench {command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"saebench {command}: interrupted; run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())


def main_exit() -> None:
    """Console-script entry point."""
    sys.exit(main())
