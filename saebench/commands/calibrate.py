"""`saebench calibrate`: move a thresholded SAE's inference thresholds to an exact target L0.

For batch-coupled SAEs (batchtopk, mutual_choice, feature_choice: SAELens `jumprelu` folders),
whose threshold EMA lands a few percent off k. One common shift of every threshold is fitted on
the store's held-out activations (trainers/calibrate.py), written into the folder, and recorded
in saebench_train.json under "calibration". Results of earlier evals describe the old
thresholds, so the folder's evals/ is cleared. Rerunning with the same target does nothing.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from store.errors import UserError


@dataclass(frozen=True)
class Args:
    """Calibrate SAE thresholds on held-out activations so that inference L0 = a target."""

    sae: tuple[Path, ...]
    """SAE folders (SAELens jumprelu, e.g. saebench's batchtopk, mutual and feature choice)."""
    l0: float | None = None
    """Target mean L0; default: the k the SAE was trained with."""
    tokens: int = 16384
    """Held-out tokens to calibrate on (the first ones of the store's held-out split)."""
    store: Path | None = None
    """Activation store; default: the store recorded in each SAE folder."""
    device: str = "cpu"
    """Torch device."""


def _target(args: Args, run: dict | None, folder: Path) -> float:
    if args.l0 is not None:
        target = args.l0
    else:
        k = ((run or {}).get("config") or {}).get("k")
        if not isinstance(k, int):
            raise UserError(f"{folder} records no trained k; pass --l0")
        target = float(k)
    if not target > 0:
        raise UserError(f"--l0 ({target}) must be positive")
    return target


def calibrate_folder(folder: Path, args: Args) -> str:
    """Calibrate one folder; returns a one-line report."""
    import torch

    from saebench.evals.context import HELDOUT
    from saebench.evals.runner import read_sae_cfg, recorded_store
    from store.activation_store import open_store
    from trainers import saelens_format
    from trainers.calibrate import l0_shift

    meta = saelens_format.read_meta(folder)
    if meta["cfg"]["architecture"] != "jumprelu":
        raise UserError(f"{folder} is a {meta['cfg']['architecture']} SAE: only thresholded "
                        "(jumprelu) SAEs have thresholds to calibrate")
    target = _target(args, meta["run"], folder)
    done = (meta["run"] or {}).get("calibration") or {}
    if done.get("target_l0") == target and done.get("n_tokens") == args.tokens:
        return f"{folder}: already calibrated to L0 {target:g}"
    store_path = args.store or recorded_store(folder, read_sae_cfg(folder))
    store = open_store(store_path)
    if store.n_tokens(HELDOUT) < args.tokens:
        raise UserError(f"--tokens {args.tokens}: the store holds {store.n_tokens(HELDOUT)} "
                        "held-out tokens")
    sae = saelens_format.load_sae(folder, args.device)
    centre = sae.b_dec if sae.apply_b_dec_to_input else 0.0

    def pre_batches():
        with torch.inference_mode():
            for x in store.iter_activations(HELDOUT, 4096, limit=args.tokens):
                yield (x.to(args.device).float() - centre) @ sae.W_enc + sae.b_enc

    cal = l0_shift(pre_batches(), sae.threshold.detach(), target)
    new_threshold = sae.threshold.detach().cpu() + cal.shift
    record = {"target_l0": target, "n_tokens": cal.n_tokens, "shift": cal.shift,
              "l0_before": cal.l0_before, "l0_after": cal.l0_after, "split": HELDOUT,
              "store": str(store_path)}
    saelens_format.update_tensors(folder, {"threshold": new_threshold})
    saelens_format.update_run(folder, "calibration", record)
    if (folder / "evals").is_dir():
        shutil.rmtree(folder / "evals")  # they describe the old thresholds
    return (f"{folder}: L0 {cal.l0_before:.2f} -> {cal.l0_after:.2f} on {cal.n_tokens} held-out "
            f"tokens (threshold shift {cal.shift:+.4g})")


def main(args: Args) -> None:
    if args.tokens < 1:
        raise UserError(f"--tokens ({args.tokens}) must be positive")
    for folder in args.sae:
        print(calibrate_folder(folder, args))
