"""One latent's nearest decoder rows in every other SAE at the same hook (the feature page).

SAEs trained at one site often learn the same direction, so the row of another SAE with the
largest |cos| to this latent's decoder row is its likeliest counterpart (Paulo & Belrose 2025
match whole dictionaries by |cos|; the Compare page does that, this is one row at a time).
Unit decoders are read with numpy (no torch) once per weights-file version and kept in
memory, so a page costs one [d_sae, d_in] @ [d_in] product per other SAE (~2 ms at 16k x 576).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from saebench.compare import comparable
from saebench.decoders import WEIGHTS_FILE, unit_decoder

N_NEAREST = 3


@lru_cache(maxsize=8)  # 8 x 38 MB at 16k x 576: the SAEs a session flips between
def _unit(folder: str, mtime_ns: int, size: int) -> np.ndarray:
    return unit_decoder(Path(folder))  # mtime and size only key the cache: a rewrite reloads


def decoder(workspace: Path, sae: str) -> np.ndarray:
    """The SAE's unit-norm decoder rows [d_sae, d_in], cached until its weights change."""
    folder = Path(workspace) / "saes" / sae
    stat = (folder / WEIGHTS_FILE).stat()
    return _unit(str(folder), stat.st_mtime_ns, stat.st_size)


def nearest(workspace: Path, sae: str, latent: int,
            n: int = N_NEAREST) -> dict[str, list[tuple[int, float]]]:
    """{other SAE: [(latent, cos)] by decreasing |cos|} for the SAEs at the same model, hook
    and d_in; the sign is kept (a negative cos is the same direction, flipped)."""
    ws = Path(workspace)
    # A folder without weights is one being written (cfg.json comes last) or broken: skip it.
    others = [o for o in comparable(ws, sae) if (ws / "saes" / o / WEIGHTS_FILE).is_file()]
    if not others:
        return {}
    row = decoder(workspace, sae)[latent]
    out = {}
    for other in others:
        cos = decoder(workspace, other) @ row
        k = min(n, len(cos))
        best = np.argpartition(-np.abs(cos), k - 1)[:k]
        best = best[np.argsort(-np.abs(cos[best]), kind="stable")]
        out[other] = [(int(i), float(cos[i])) for i in best]
    return out
