"""`saebench compare`: one-to-one matching of two SAEs' decoders and the features they share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Args:
    """Match two SAEs' decoder rows (Hungarian on |cos|) and print the share they have in common."""

    a: Path
    """First SAE folder."""
    b: Path
    """Second SAE folder (same model, hook and d_in)."""
    threshold: tuple[float, ...] = (0.5, 0.7, 0.9)
    """|cos| above which a matched pair counts as a shared feature (several: one line each)."""


def main(args: Args) -> None:
    import time

    import numpy as np

    from saebench.compare import compare, match_folders
    from store.catalog import workspace_of
    from store.errors import UserError

    if any(not 0 <= t <= 1 for t in args.threshold):
        raise UserError("--threshold values must lie in [0, 1]")
    a, b = Path(args.a).resolve(), Path(args.b).resolve()
    t0 = time.perf_counter()
    if a.parent == b.parent and a.parent.name == "saes":
        # Both in one workspace: use (and fill) its cache, which the browser reads too.
        m = compare(workspace_of(a), a.name, b.name)
    else:
        m = match_folders(a, b)
    seconds = time.perf_counter() - t0
    print(f"{a.name} ({m.d_sae_a} latents) vs {b.name} ({m.d_sae_b} latents): "
          f"{len(m.cos)} pairs, median |cos| {np.median(m.abs_cos):.3f}, {seconds:.1f} s")
    for t in args.threshold:
        share_a, share_b = m.shared(t)
        print(f"  |cos| > {t:g}: {m.n_shared(t)} shared = {share_a:.1%} of {a.name}, "
              f"{share_b:.1%} of {b.name}")
