"""TrainConfig: the loop's settings, shared by every SAE of a sweep.

Kept free of torch so that `saebench train --help` (which builds its flags from this class)
stays instant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

# Fields that change how a run is watched or where it runs, not what it computes: a resumed
# run may change them freely.
NON_SEMANTIC = ("log_every", "checkpoint_every", "device", "devices", "wandb", "wandb_project",
                "progress")


@dataclass(frozen=True)
class TrainConfig:
    """How to train: data budget, optimiser, schedule, bookkeeping."""

    tokens: int
    """Training tokens per SAE (every SAE of a sweep sees the same stream, once)."""
    batch_size: int = 4096
    """Tokens per optimiser step."""
    lr: float | None = None
    """Adam learning rate; None means 2e-4 / sqrt(d_sae / 2**14) for each SAE."""
    warmup_steps: int = 1000
    """Linear warm-up length in steps, capped at 5% of the run."""
    decay_frac: float = 0.2
    """Fraction of the run, at its end, over which the learning rate decays linearly to 0."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam's (beta1, beta2)."""
    adam_eps: float = 6.25e-10
    """Adam's epsilon: tiny, because a normalised loss has tiny gradients that 1e-8 would damp."""
    seed: int = 0
    """Seed of the weight initialisation and of the data order."""
    b_dec_init: Literal["geometric_median", "mean"] = "geometric_median"
    """How b_dec is initialised from the first batch (Gao et al. 2024, App. A.1: the median)."""
    dead_window: int = 10_000_000
    """A latent is dead after this many tokens without firing (capped at the run's length)."""
    log_every: int | None = None
    """Steps between logged rows of the training curves; None: every step for runs of up to
    1000 steps, else every (steps // 100)-th, so that every curve has at least 100 points."""
    checkpoint_every: int = 1000
    """Steps between checkpoints (Ctrl-C also writes one)."""
    device: str = "auto"
    """cpu, cuda, cuda:N, or auto (cuda when available). On cuda: bf16 autocast, TF32 allowed."""
    devices: tuple[str, ...] = ()
    """Spread the SAEs of a sweep over these devices, round-robin (e.g. cuda:0 cuda:1): each
    trains on its own device from the same batches, with no gradient sync. Empty: --device."""
    wandb: bool = False
    """Also log the curves to Weights & Biases (needs `pip install wandb`)."""
    wandb_project: str = "saebench"
    """W&B project name, when --wandb is set."""
    progress: bool = True
    """Show a progress bar."""
    loss: Literal["local", "e2e", "e2e+ds"] = "local"
    """local: reconstruct the hook's activations (MSE); e2e: KL of the model's output with the
    SAE spliced in to the clean output; e2e+ds: e2e plus the downstream blocks' residuals
    (Braun et al. 2024, arXiv 2405.12241; trainers/e2e_loss.py). e2e needs --store."""

    def semantic(self) -> dict:
        """The fields that determine the trained weights (a resumed run must match them)."""
        out = {k: v for k, v in asdict(self).items() if k not in NON_SEMANTIC}
        if out["loss"] == "local":  # so local runs keyed before `loss` existed still match
            del out["loss"]
        return out
