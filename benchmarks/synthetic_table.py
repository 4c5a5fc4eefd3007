"""The synthetic ground-truth eval on two kinds of data, three seeds each: mean ± std tables.

    .venv/bin/python benchmarks/synthetic_table.py

"flat" is independent Zipfian features; "deep" puts 16 trees of 4 levels (about 400 of the
1024 features) over them, each parent's children mutually exclusive. Exclusive siblings are
about as frequent as their parent, so SAELens's compensation clamps most children's
conditional rates at 1: a parent nearly always fires with exactly one child, the setting where
feature absorption pays (Chanin et al. 2024, "A is for Absorption"), and the true L0 drops
from 12.1 to about 9.5. Every registered architecture and SAELens's TopK and BatchTopK trainers are
trained and scored by `saebench.evals.synthetic.run_synthetic`, the API behind
`saebench eval --evals synthetic`. Each (config, seed) writes `<workspace>/<config>/seed<N>.json`
and is skipped when that file exists, so an interrupted run resumes; the tables (Markdown, for
BENCHMARKS.md) go to stdout and to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch
from spread import cpu, mean_std

from saebench.evals.report import write_json_atomic
from saebench.evals.synthetic import run_synthetic
from saebench.evals.synthetic_config import SyntheticConfig
from saebench.evals.synthetic_report import COLUMNS, describe

# name -> the data knobs that differ from SyntheticConfig's defaults.
CONFIGS = {
    "flat": {"hierarchy": False, "correlation": False},
    # Branching 2-3 rather than the default 2-4 keeps the rarest leaf near a 0.1% firing rate
    # (16 roots x 2-4 children over 3 levels would reach 0.03%: ~10 fires in the eval set).
    "deep": {"hierarchy": True, "correlation": False, "hierarchy_roots": 16,
             "hierarchy_branching": (2, 3), "hierarchy_depth": 3, "hierarchy_exclusive": 1.0},
}
# Means over seeds take one more decimal than a single run's count of dead latents.
FORMATS = {"dead_latents": "{:.1f}"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--d-in", type=int, default=256)
    parser.add_argument("--n-features", type=int, default=1024)
    parser.add_argument("--d-sae", type=int, default=1024)
    parser.add_argument("--k", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=400_000)
    parser.add_argument("--eval-tokens", type=int, default=30_000)
    parser.add_argument("--archs", nargs="*", default=[],
                        help="registry names (default: every registered architecture)")
    parser.add_argument("--no-reference", action="store_true",
                        help="leave out SAELens's reference trainers")
    parser.add_argument("--device", default="auto")
    # On a 2-core machine shared with other jobs, torch's two OpenMP threads wait on each other
    # while descheduled: 20 TopK steps took 19 s on 2 threads and 4.4 s on 1 (load average 6).
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: see the comment above)")
    parser.add_argument("--workspace", type=Path, default=Path("runs/synthetic_table"),
                        help="SAEs and per-(config, seed) results go here")
    parser.add_argument("--out", type=Path, default=Path("runs/synthetic_table/table.md"))
    return parser.parse_args()


def config(args: argparse.Namespace, name: str, seed: int) -> SyntheticConfig:
    return SyntheticConfig(d_in=args.d_in, n_features=args.n_features, d_sae=args.d_sae,
                           k=args.k, tokens=args.tokens, eval_tokens=args.eval_tokens,
                           archs=tuple(args.archs), reference=not args.no_reference,
                           seed=seed, device=args.device, **CONFIGS[name])


def _comparable(cfg: dict) -> str:
    return json.dumps({k: v for k, v in cfg.items() if k != "device"}, sort_keys=True)


def run_one(cfg: SyntheticConfig, workspace: Path, result: Path) -> dict:
    """Train and score one (config, seed), or read its finished result."""
    wanted = json.loads(json.dumps(asdict(cfg)))  # tuples as JSON lists, as stored
    if result.exists():
        done = json.loads(result.read_text())
        if _comparable(done["config"]) != _comparable(wanted):
            sys.exit(f"synthetic_table: {result} was made with other settings; pass another "
                     "--workspace or delete it")
        return done
    print(f"--- {result.parent.name}, seed {cfg.seed}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    rows = run_synthetic(cfg, workspace, echo=lambda m: print(m, file=sys.stderr, flush=True))
    done = {"config": wanted, "wall_s": time.perf_counter() - start, "commit": commit(),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "rows": [{"arch": r.arch, "trainer": r.trainer, "metrics": r.metrics}
                     for r in rows]}
    write_json_atomic(result, done)
    return done


def table(name: str, cfg: SyntheticConfig, results: list[dict]) -> str:
    """One configuration's Markdown table: a row per SAE, mean ± sample std over seeds."""
    rows: dict[tuple[str, str], list[dict]] = {}
    for result in results:
        for row in result["rows"]:
            rows.setdefault((row["arch"], row["trainer"]), []).append(row["metrics"])
    true_l0 = statistics.mean(r["rows"][0]["metrics"]["true_l0"] for r in results)
    minutes = statistics.mean(r["wall_s"] for r in results) / 60
    seeds = ", ".join(str(r["config"]["seed"]) for r in results)
    lines = [f"### {name}", "", f"*{describe(cfg, true_l0)}; mean ± sample std over seeds "
             f"{seeds} (true L0: the mean); {minutes:.1f} min per seed*", "",
             "| arch | trainer | " + " | ".join(h for h, _, _ in COLUMNS) + " |",
             "|---|---|" + "---:|" * len(COLUMNS)]
    for (arch, trainer), runs in rows.items():
        cells = [mean_std([m[key] for m in runs], FORMATS.get(key, fmt)) for _, key, fmt in COLUMNS]
        lines.append(f"| {arch} | {trainer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def commit() -> str:
    """The checked-out commit, and whether the tree had changes (what a run really ran)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True)
    return head + (" + uncommitted changes" if dirty.stdout.strip() else "")


def machine(commits: set[str]) -> str:
    """Date, CPU model and its AVX-512 flags, torch and SAELens versions, commits."""
    model, avx512 = cpu()
    threads = torch.get_num_threads()
    from importlib.metadata import version

    return (f"Date {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; CPU {model}, "
            f"AVX-512 flags: {' '.join(avx512) or 'none'}; "
            f"torch {torch.__version__} ({threads} thread{'s' * (threads > 1)}); sae-lens "
            f"{version('sae-lens')}; Python {platform.python_version()}; runs made at "
            f"{'; '.join(sorted(commits))}.")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) \
        else "python"
    command = shlex.join([python, *sys.argv])
    start = time.perf_counter()
    tables, results = [], []
    for name in args.configs:
        workspace = args.workspace / name
        runs = [run_one(config(args, name, seed), workspace, workspace / f"seed{seed}.json")
                for seed in args.seeds]
        tables.append(table(name, config(args, name, args.seeds[0]), runs))
        results += runs
    minutes = sum(r["wall_s"] for r in results) / 60
    text = "\n\n".join([
        f"Command: `{command}`. {len(results)} (config, seed) runs, {minutes:.1f} min of "
        f"training and scoring in all (this invocation: {time.perf_counter() - start:.0f} s; "
        "finished runs are read back, not redone).",
        machine({r.get("commit", "unknown") for r in results}), *tables]) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
