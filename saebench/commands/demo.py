"""`saebench demo`: cache, train, evaluate and index one TopK SAE, then print a summary.

The steps are the other commands' `main` functions, called in-process, so the demo is exactly
what a user would type by hand. Each step is a no-op once done (cache and train check their
own outputs, eval is skipped once its JSON exists, index skips a complete index), so a second
run only prints the summary.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Args:
    """Run the whole demo into one workspace (resumable: rerun it after an interrupt)."""

    workspace: Path = Path("runs/demo")
    """The workspace folder: store.duckdb, saes/<name>/ and catalog.duckdb go here."""
    model: str = "smollm2-135m"
    """The model to cache activations from (see `saebench cache --help`)."""
    hook: str = "blocks.15.hook_resid_post"
    """TransformerLens hook name: SmolLM2's mid-depth residual stream."""
    dataset: str = "austen"
    """The corpus (see `saebench cache --help`)."""
    tokens: int = 250_000
    """Training tokens to cache (held-out tokens are 5% more)."""
    k: int = 32
    """Active latents per token of the TopK SAE."""
    width: int = 4608
    """Number of latents (d_sae): 8 × d_in for SmolLM2."""
    train_tokens: int = 500_000
    """Training tokens for the SAE (two passes over the cached tokens)."""
    index: bool = True
    """Build the feature index (top contexts, logit effects, neighbours) for the browser."""

    @property
    def store(self) -> Path:
        return self.workspace / "store.duckdb"

    @property
    def sae(self) -> Path:
        return self.workspace / "saes" / f"topk-k{self.k}-w{self.width}"


def _timed(name: str, step: Callable[[], str | None], times: dict[str, str]) -> None:
    print(f"\n== demo: {name} ==", flush=True)
    start = time.perf_counter()
    note = step()
    times[name] = f"{time.perf_counter() - start:.1f} s" + (f" ({note})" if note else "")


def _eval(args: Args) -> str | None:
    from saebench.commands import eval as eval_cmd

    if (args.sae / "evals" / "core.json").is_file():
        print(f"skipped: {args.sae}/evals/core.json exists")
        return "done before"
    eval_cmd.main(eval_cmd.Args(sae=args.sae, store=args.store))
    return None


def _index(args: Args) -> str | None:
    import importlib

    try:
        index_cmd = importlib.import_module("saebench.commands.index")
    except ModuleNotFoundError:
        print("skipped: this version has no `saebench index`")
        return "not available"
    index_cmd.main(index_cmd.Args(sae=args.sae, store=args.store))
    return None


def _steps(args: Args) -> dict[str, Callable[[], str | None]]:
    from saebench.commands import cache, train
    from trainers.config import TrainConfig

    cache_args = cache.Args(model=args.model, hook=(args.hook,), dataset=args.dataset,
                            tokens=args.tokens, store=args.store)
    train_args = train.Args(store=args.store, out=args.sae, train=TrainConfig(
        tokens=args.train_tokens), k=(args.k,), width=(args.width,))
    steps = {
        "cache": lambda: cache.main(cache_args),
        "train": lambda: train.main(train_args),
        "eval": lambda: _eval(args),
    }
    if args.index:
        steps["index"] = lambda: _index(args)
    return steps


def summary(args: Args, times: dict[str, str]) -> str:
    """The summary table: store, SAE, core metrics and wall time per step."""
    import json

    from store.reader import open_store

    meta = open_store(args.store).meta
    metrics = json.loads((args.sae / "evals" / "core.json").read_text())["metrics"]

    def pct(name: str) -> str:
        value = metrics.get(name)
        return "-" if value is None else f"{value:.2f} %"

    def num(name: str, fmt: str = ".3f") -> str:
        value = metrics.get(name)
        return "-" if value is None else format(value, fmt)

    rows = [
        ("store", f"{args.store}: {meta['n_tokens']['train']:,} train + "
                  f"{meta['n_tokens']['heldout']:,} held-out tokens"),
        ("model", f"{meta['model']} at {meta['hook']}"),
        ("SAE", f"{args.sae}: topk, k {args.k}, d_sae {args.width}"),
        ("L0", num("l0", ".1f")),
        ("explained variance", num("explained_variance")),
        ("CE recovered", f"{num('ce_recovered_vs_zero_ablation')} vs zero ablation, "
                         f"{num('ce_recovered_vs_mean_ablation')} vs mean ablation"),
        ("dead", f"{pct('pct_dead')} (window {metrics.get('dead_window_tokens', 0):,.0f} tokens)"),
        ("dense", f"{pct('pct_dense_1pct')} fire on > 1% of tokens, "
                  f"{pct('pct_dense_10pct')} on > 10%"),
        *((f"time: {name}", value) for name, value in times.items()),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(args: Args) -> None:
    times: dict[str, str] = {}
    start = time.perf_counter()
    for name, step in _steps(args).items():
        _timed(name, step, times)
    times["total"] = f"{time.perf_counter() - start:.1f} s"
    print("\n== demo: summary ==")
    print(summary(args, times))
    print(f"\nBrowse it:  saebench app --workspace {args.workspace}")
