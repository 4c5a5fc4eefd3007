"""Start an e2e SAE from a saved (e.g. locally trained) SAE folder.

Braun et al. 2024 (arXiv 2405.12241) train e2e SAEs from scratch. Starting from the local SAE
of the same architecture is ours: on a 2-core CPU the e2e budget is a few hundred thousand
tokens, too few to train a dictionary from random init, but enough to move a good local
dictionary towards what the downstream model uses.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from store.errors import UserError
from trainers.saelens_format import load_sae

# Saved biases and thresholds are in raw units; the SAE trains on x·scale (trainers/loop.py
# normalisation), and these parameters scale with the input (positive homogeneity).
_SCALED = ("b_enc", "b_dec", "threshold")


@torch.no_grad()
def init_from_saved(sae: nn.Module, folder: str | Path, scale: float) -> None:
    """Copy a saved SAE's weights into `sae` (same d_in and d_sae), in training units."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"e2e init: no SAE folder at {folder}")
    saved = load_sae(folder).state_dict()
    ours = sae.state_dict()
    if "W_dec" not in saved or saved["W_dec"].shape != ours["W_dec"].shape:
        got = tuple(saved["W_dec"].shape) if "W_dec" in saved else None
        raise UserError(f"e2e init: {folder} has W_dec {got}, this SAE needs "
                        f"{tuple(ours['W_dec'].shape)}")
    for name, tensor in ours.items():
        if name in saved and saved[name].shape == tensor.shape:
            value = saved[name].to(tensor)
            tensor.copy_(value * scale if name in _SCALED else value)
