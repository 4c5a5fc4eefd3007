"""How many tokens the demo caches: as many as this machine's forward speed fits in a budget.

The same demo ran 2.9x slower on a CPU without AVX-512 than on one with it, and caching is the
step that scales with the model's speed. So instead of a fixed size the demo times a few
forwards to its hook first and caches `rate x budget` tokens, clipped to a range that keeps the
SAEs worth browsing. The choice is written to `<workspace>/demo_plan.json` before the cache
starts, so a rerun after an interrupt resumes the same store instead of planning a new one.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PLAN_FILE = "demo_plan.json"
ROUND = 8192  # tokens: whole chunks of 64 windows of 128


@dataclass(frozen=True)
class Plan:
    """What the demo chose on this machine, and why."""

    tokens: int
    """Training tokens to cache."""
    forward_tokens_per_s: float
    """Measured forward speed to the hook (0 when the size was given, not measured)."""
    budget_s: float
    """Seconds of caching the size was chosen to fit."""
    cpu: str
    """The CPU model and whether it has AVX-512, since speed depends on it."""


def cpu_summary() -> str:
    """The CPU model name and its AVX-512 flag, from /proc/cpuinfo where it exists."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                 if ln.startswith("model name")), platform.machine())
    flags = next((ln for ln in info.splitlines() if ln.startswith("flags")), "")
    avx512 = "avx512f" in flags.split()
    # torch's kernels can be held below the CPU's best ISA (how a CPU without AVX-512 is
    # emulated on one with it): say so, since it changes the speed.
    cap = os.environ.get("ATEN_CPU_CAPABILITY")
    capped = f", torch kernels capped at {cap}" if cap else ""
    return f"{name}, {os.cpu_count()} cores, {'with' if avx512 else 'without'} AVX-512{capped}"


def measure_rate(model_name: str, hook: str, ctx: int = 128, batch: int = 8, reps: int = 2,
                 device: str = "cpu") -> float:
    """Tokens per second of the model's forward up to `hook` (after one warm-up batch)."""
    import torch

    from store.caching import forward
    from store.models import load_model

    model = load_model(model_name, device)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.cfg.d_vocab, (batch, ctx), generator=gen).to(device)
    forward(model, hook, tokens, False)  # warm-up: first-call allocations and kernel choice
    start = time.perf_counter()
    for _ in range(reps):
        forward(model, hook, tokens, False)
    return reps * batch * ctx / (time.perf_counter() - start)


def choose_tokens(rate: float, budget_s: float, lo: int, hi: int) -> int:
    """`rate x budget`, rounded down to whole chunks, within [lo, hi]."""
    return int(min(hi, max(lo, (rate * budget_s) // ROUND * ROUND)))


def load_or_make(workspace: Path, model: str, hook: str, tokens: int | None, budget_s: float,
                 lo: int, hi: int) -> Plan:
    """The workspace's saved plan, else a new one (measured unless `tokens` is given)."""
    path = Path(workspace) / PLAN_FILE
    if path.is_file():
        return Plan(**json.loads(path.read_text()))
    if tokens is not None:
        plan = Plan(tokens, 0.0, budget_s, cpu_summary())
    else:
        rate = measure_rate(model, hook)
        plan = Plan(choose_tokens(rate, budget_s, lo, hi), round(rate, 1), budget_s,
                    cpu_summary())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(plan), indent=2))
    os.replace(tmp, path)
    return plan
