"""The learning-rate schedule: a pure function of the step, so resuming needs only the step."""

from __future__ import annotations

import math


def default_lr(d_sae: int) -> float:
    """2e-4 at 2**14 latents, falling as 1/sqrt(d_sae): wider SAEs want smaller steps."""
    return 2e-4 / math.sqrt(d_sae / 2**14)


def warmup_steps(n_steps: int, requested: int) -> int:
    """Warm-up length: as requested, but at most 5% of the run, so short runs still train."""
    return min(requested, n_steps // 20)


def lr_factor(step: int, n_steps: int, warmup: int, decay_frac: float) -> float:
    """Multiplier of the base rate at `step` (0-based): linear warm-up, flat, linear decay to 0."""
    factor = 1.0
    if step < warmup:
        factor = (step + 1) / warmup
    decay = int(n_steps * decay_frac)
    if decay > 0 and step >= n_steps - decay:
        # Decay over the final 20% of training (issue recipe); the last step still moves.
        factor = min(factor, (n_steps - step) / decay)
    return factor
