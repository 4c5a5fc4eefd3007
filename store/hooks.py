"""Hook-point names (TransformerLens vocabulary) and what running up to one costs."""

from __future__ import annotations

import difflib
import re

from store.errors import UserError

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def default_hook(n_layers: int) -> str:
    """The residual stream after the middle block: a common, well-behaved SAE site."""
    return f"blocks.{n_layers // 2}.hook_resid_post"


def residual_hooks(n_layers: int, n: int) -> list[str]:
    """n residual streams at evenly spaced depths, e.g. blocks 6, 12, 18, 24 of 30 for n = 4."""
    if not 1 <= n <= n_layers:
        raise UserError(f"resid:{n}: choose between 1 and the model's {n_layers} layers")
    layers = sorted({min(n_layers - 1, round(i * n_layers / (n + 1))) for i in range(1, n + 1)})
    if len(layers) < n:  # shallow models: spread over every depth, ends included
        layers = [round(i * (n_layers - 1) / max(n - 1, 1)) for i in range(n)]
    return [f"blocks.{layer}.hook_resid_post" for layer in layers]


def validate_hook(model, hook: str) -> str:
    """Return the hook name if the model has it, else a UserError naming the closest ones."""
    names = list(model.hook_dict)
    if hook in names:
        return hook
    close = difflib.get_close_matches(hook, names, n=3, cutoff=0.5)
    hint = (
        f"; closest: {', '.join(close)}" if close else f"; e.g. {default_hook(model.cfg.n_layers)}"
    )
    raise UserError(f"unknown hook '{hook}' for this model{hint}")


def stop_layer(hook: str) -> int | None:
    """The `stop_at_layer` that still computes `hook` (None: the whole model is needed)."""
    match = _BLOCK.match(hook)
    if match:
        return int(match.group(1)) + 1
    if hook.startswith("hook_embed") or hook.startswith("hook_pos_embed"):
        return 0
    return None
