"""Dead latents: tokens since each latent last fired (DESIGN §5: dead = silent for a window)."""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor


def fires(codes: Tensor, d_sae: int) -> tuple[Bool[Tensor, " d_sae"], Float[Tensor, ""]]:
    """Which latents fired in this batch, and the mean number of nonzero codes per token."""
    n_tokens = codes.shape[0]
    if codes.is_sparse:
        # The raw (possibly uncoalesced) entries: coalescing would sort them for nothing, and
        # each entry is a distinct (token, latent) pair anyway.
        on = codes._values() > 0
        fired = torch.zeros(d_sae, dtype=torch.bool, device=codes.device)
        fired[codes._indices()[1][on]] = True
        return fired, on.sum() / n_tokens
    on = codes > 0
    return on.any(dim=0), on.sum() / n_tokens


class DeadLatents:
    """Per-latent count of tokens since the latent last fired.

    Counted per batch: a latent that fires anywhere in a batch resets to 0. Counters start at 0,
    so no latent can be dead before `window` tokens have passed.
    """

    def __init__(self, d_sae: int, window: int, device: torch.device | str = "cpu") -> None:
        self.window = window
        self.since = torch.zeros(d_sae, dtype=torch.int64, device=device)

    def update(self, fired: Bool[Tensor, " d_sae"], n_tokens: int) -> None:
        self.since.add_(n_tokens).masked_fill_(fired, 0)

    def mask(self) -> Bool[Tensor, " d_sae"]:
        return self.since >= self.window

    def fraction(self) -> float:
        return float(self.mask().float().mean())

    def state_dict(self) -> dict:
        return {"window": self.window, "since": self.since.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.window = int(state["window"])
        self.since.copy_(state["since"])
