"""Shared by the benchmark scripts: mean ± sample std cells and the machine line."""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path


def mean_std(values: list[float], fmt: str) -> str:
    """"m ± s" over seeds (sample std), a single value alone, "–" for none."""
    if not values:
        return "–"
    if len(values) < 2:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.fmean(values))} ± {fmt.format(statistics.stdev(values))}"


def cpu() -> tuple[str, list[str]]:
    """The CPU model and its AVX-512 flags (speed here depends on them: native bf16)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    model = fields.get("model name", platform.processor() or "unknown")
    return f"{model}, {os.cpu_count()} cores", sorted(
        f for f in fields.get("flags", "").split() if f.startswith("avx512"))
