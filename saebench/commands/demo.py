"""`saebench demo`: cache, train two architectures, evaluate, explain and index them,
and save one prompt's attribution graph.

The steps are the other commands' `main` functions, called in-process, so the demo is exactly
what a user would type by hand. Each step is a no-op once done (cache and train check their
own outputs, an eval is skipped once its JSON exists, index skips a complete index), so a second
run only prints the summary.

Sizes are chosen for a newcomer's first ten minutes on a 2-core CPU with or without AVX-512:
an early hook (the forward stops there, so caching is ~2x cheaper than at mid-depth), as many
tokens as this machine caches in `cache_budget_s` (commands/demo_plan.py records the choice),
d_sae 2304 (4 x d_in), and 1,024 held-out tokens for the spliced CE/KL.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEMO_EVALS = ("core", "autointerp")


@dataclass(frozen=True)
class Args:
    """Run the whole demo into one workspace (resumable: rerun it after an interrupt)."""

    workspace: Path = Path("runs/demo")
    """The workspace folder: store.duckdb, saes/<name>/ and catalog.duckdb go here."""
    model: str = "smollm2-135m"
    """The model to cache activations from (see `saebench cache --help`)."""
    hook: str = "blocks.6.hook_resid_post"
    """TransformerLens hook name: SmolLM2's residual stream after layer 6 of 30."""
    dataset: str = "austen"
    """The corpus (see `saebench cache --help`)."""
    tokens: int | None = None
    """Training tokens to cache; None: as many as this machine caches in cache_budget_s."""
    cache_budget_s: float = 75.0
    """Seconds of caching the token count is sized to (measured forward speed x budget)."""
    min_tokens: int = 49_152
    """Fewest tokens the budget may choose."""
    max_tokens: int = 196_608
    """Most tokens the budget may choose."""
    archs: tuple[str, ...] = ("topk", "batchtopk")
    """Architectures trained side by side from one pass (see `saebench train --help`)."""
    k: int = 32
    """Active latents per token."""
    width: int = 2304
    """Number of latents (d_sae): 4 x d_in for SmolLM2."""
    epochs: int = 2
    """Passes over the cached tokens when training."""
    ce_tokens: int = 1024
    """Held-out tokens for the spliced CE and KL (four model passes each)."""
    explain_latents: int = 200
    """Latents the offline token-pattern explainer labels per SAE (autointerp eval)."""
    index: bool = True
    """Build the feature index (top contexts, logit effects, neighbours) for the browser."""
    graph_prompt: str = "When Mary and John went to the store, John gave a drink to"
    """Prompt of the attribution graph the demo saves (through the first SAE); '' skips it."""
    graph_target: str = " Mary"
    """Its target token (one token, leading space included)."""

    @property
    def store(self) -> Path:
        return self.workspace / "store.duckdb"

    @property
    def saes(self) -> list[Path]:
        """One folder per architecture (a sweep names them <prefix>-<arch>)."""
        base = self.workspace / "saes" / "demo"
        if len(self.archs) == 1:
            return [base]
        return [base.with_name(f"demo-{arch}") for arch in self.archs]


def _timed(name: str, step: Callable[[], str | None], times: dict[str, str]) -> None:
    print(f"\n== demo: {name} ==", flush=True)
    start = time.perf_counter()
    note = step()
    times[name] = f"{time.perf_counter() - start:.1f} s" + (f" ({note})" if note else "")


def _eval(args: Args) -> str | None:
    from saebench.commands import eval as eval_cmd
    from saebench.evals.autointerp_config import AutointerpConfig
    from saebench.evals.configs import CoreConfig

    done = 0
    for sae in args.saes:
        if all((sae / "evals" / f"{name}.json").is_file() for name in DEMO_EVALS):
            print(f"skipped: {sae}/evals holds {', '.join(DEMO_EVALS)}")
            done += 1
            continue
        eval_cmd.main(eval_cmd.Args(
            sae=sae, store=args.store, evals=DEMO_EVALS,
            core=CoreConfig(ce_tokens=args.ce_tokens),
            autointerp=AutointerpConfig(n_latents=args.explain_latents)))
    return "done before" if done == len(args.saes) else None


def _index(args: Args) -> str | None:
    from saebench.commands import index as index_cmd

    for sae in args.saes:
        index_cmd.main(index_cmd.Args(sae=sae, store=args.store))
    return None


def _graph(args: Args) -> str | None:
    from saebench.commands import graph as graph_cmd

    path = args.workspace / "graphs" / "demo.json"
    if path.is_file():
        print(f"skipped: {path} exists")
        return "done before"
    graph_cmd.main(graph_cmd.Args(saes=(args.saes[0],), prompt=args.graph_prompt,
                                  target=args.graph_target, name="demo"))
    return None


def _steps(args: Args, plan) -> dict[str, Callable[[], str | None]]:
    from saebench.commands import cache, train
    from trainers.config import TrainConfig

    cache_args = cache.Args(model=args.model, hook=(args.hook,), dataset=args.dataset,
                            tokens=plan.tokens, store=args.store)
    train_args = train.Args(store=args.store, out=args.workspace / "saes" / "demo",
                            train=TrainConfig(tokens=args.epochs * plan.tokens),
                            arch=args.archs, k=(args.k,), width=(args.width,))
    steps = {
        "cache": lambda: cache.main(cache_args),
        "train": lambda: train.main(train_args),
        "eval": lambda: _eval(args),
    }
    if args.index:
        steps["index"] = lambda: _index(args)
    if args.graph_prompt:
        steps["graph"] = lambda: _graph(args)
    return steps


def summary(args: Args, plan, times: dict[str, str]) -> str:
    """The summary: the store, the plan, each SAE's headline metrics and wall time per step."""
    import json

    from store.reader import open_store

    meta = open_store(args.store).meta

    def metrics(sae: Path, name: str) -> dict:
        path = sae / "evals" / f"{name}.json"
        return json.loads(path.read_text())["metrics"] if path.is_file() else {}

    def fmt(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    chose = (f"{plan.tokens:,} tokens given" if not plan.forward_tokens_per_s else
             f"{plan.tokens:,} tokens = {plan.forward_tokens_per_s:,.0f} tok/s forward x "
             f"{plan.budget_s:.0f} s budget, within [{args.min_tokens:,}, {args.max_tokens:,}]")
    rows = [
        ("store", f"{args.store}: {meta['n_tokens']['train']:,} train + "
                  f"{meta['n_tokens']['heldout']:,} held-out tokens"),
        ("model", f"{meta['model']} at {meta['hook']}"),
        ("machine", plan.cpu),
        ("cache size", chose),
    ]
    for sae in args.saes:
        core, interp = metrics(sae, "core"), metrics(sae, "autointerp")
        rows.append((f"SAE {sae.name}",
                     f"L0 {fmt(core.get('l0'), '.1f')}, "
                     f"explained variance {fmt(core.get('explained_variance'), '.3f')}, "
                     f"CE recovered {fmt(core.get('ce_recovered_vs_zero_ablation'), '.3f')}, "
                     f"dead {fmt(core.get('pct_dead'), '.1f')} %, lexical detection "
                     f"{fmt(interp.get('lexical_detection_accuracy'), '.3f')}"))
    rows += [(f"time: {name}", value) for name, value in times.items()]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(args: Args) -> None:
    from saebench.commands.demo_plan import load_or_make
    from store.errors import UserError

    if args.min_tokens > args.max_tokens or args.cache_budget_s <= 0:
        raise UserError("demo: need min_tokens <= max_tokens and cache_budget_s > 0")
    times: dict[str, str] = {}
    start = time.perf_counter()
    plan = load_or_make(args.workspace, args.model, args.hook, args.tokens, args.cache_budget_s,
                        args.min_tokens, args.max_tokens)
    times["plan"] = f"{time.perf_counter() - start:.1f} s ({plan.tokens:,} tokens)"
    print(f"demo: caching {plan.tokens:,} tokens ({plan.cpu})", flush=True)
    for name, step in _steps(args, plan).items():
        _timed(name, step, times)
    times["total"] = f"{time.perf_counter() - start:.1f} s"
    print("\n== demo: summary ==")
    print(summary(args, plan, times))
    print(f"\nBrowse it:  saebench app --workspace {args.workspace}")
