"""SAEs on attention outputs (`blocks.L.attn.hook_z`): which heads a latent writes through,
and which source tokens its activation comes from (Kissane et al. 2024, arXiv 2406.17759).

This module stays free of torch, so the browser can ask whether an SAE is a hook_z SAE
without loading it."""

from __future__ import annotations

import re

_HOOK_Z = re.compile(r"^blocks\.(\d+)\.attn\.hook_z$")


def hook_z_layer(hook: str) -> int | None:
    """The layer of a `blocks.L.attn.hook_z` hook, or None for any other hook."""
    match = _HOOK_Z.match(hook or "")
    return int(match.group(1)) if match else None
