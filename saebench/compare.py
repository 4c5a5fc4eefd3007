"""Which features do two SAEs share? A one-to-one matching of their decoder directions.

Following Paulo & Belrose (2025, "Sparse autoencoders trained on the same data learn different
features", §3), latents are paired by the Hungarian algorithm on |cos| of decoder rows, so no
latent is used twice (max-cos alone lets one generic direction "match" many), and a pair counts
as shared when its |cos| clears a threshold (0.7 there). |cos|, not cos: a direction and its
negation are the same feature up to the sign of the code, which e.g. a JumpReLU cannot flip
but a reparametrised SAE may.

    from saebench.compare import compare
    m = compare("runs/demo", "topk-k32-s0", "batchtopk-k32-s0")
    m.shared(0.7)          # (share of A's latents, share of B's latents)

On 4608 x 4608 decoders the cosine GEMM plus scipy's `linear_sum_assignment` (LAPJV) take
about 1-2 s on 2 CPU cores, so the exact algorithm is used; results are still cached per pair
in `<workspace>/comparisons/` so the browser re-renders instantly.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from jaxtyping import Float

from saebench.decoders import site, unit_decoder, unit_rows, weights_digest
from store.catalog import write_parquet_atomic
from store.errors import UserError

CACHE_DIR = "comparisons"
FORMAT = "saebench-compare/1"
THRESHOLD = 0.7


@dataclass(frozen=True)
class Matching:
    """A one-to-one pairing of A's and B's latents (min(d_sae_a, d_sae_b) pairs)."""

    latent_a: np.ndarray
    """int64 [pairs], A's latent of each pair."""
    latent_b: np.ndarray
    """int64 [pairs], B's latent of each pair."""
    cos: np.ndarray
    """float32 [pairs], the signed cosine of the pair's decoder rows."""
    d_sae_a: int
    d_sae_b: int

    @property
    def abs_cos(self) -> np.ndarray:
        return np.abs(self.cos)

    def n_shared(self, threshold: float = THRESHOLD) -> int:
        return int((self.abs_cos > threshold).sum())

    def shared(self, threshold: float = THRESHOLD) -> tuple[float, float]:
        """(share of A's latents, share of B's latents) in a pair with |cos| > threshold."""
        n = self.n_shared(threshold)
        return n / max(self.d_sae_a, 1), n / max(self.d_sae_b, 1)

    def unmatched(self, side: str, threshold: float = THRESHOLD) -> np.ndarray:
        """Latents of side 'a' or 'b' with no partner above the threshold, ascending."""
        if side not in ("a", "b"):
            raise UserError(f"side must be 'a' or 'b', not {side!r}")
        d_sae = self.d_sae_a if side == "a" else self.d_sae_b
        paired = self.latent_a if side == "a" else self.latent_b
        keep = np.ones(d_sae, dtype=bool)
        keep[paired[self.abs_cos > threshold]] = False
        return np.flatnonzero(keep)

    def swapped(self) -> Matching:
        """The same matching seen from B's side."""
        return Matching(self.latent_b, self.latent_a, self.cos, self.d_sae_b, self.d_sae_a)


def match_decoders(
    W_a: Float[np.ndarray, "d_sae_a d_in"], W_b: Float[np.ndarray, "d_sae_b d_in"]
) -> Matching:
    """Hungarian matching of two dictionaries' rows on |cos| (rows need not be unit norm)."""
    from scipy.optimize import linear_sum_assignment

    if W_a.shape[1] != W_b.shape[1]:
        raise UserError(f"decoders of different d_in ({W_a.shape[1]} vs {W_b.shape[1]}) "
                        "cannot be compared")
    A, B = unit_rows(W_a), unit_rows(W_b)
    cos = A @ B.T  # [d_sae_a, d_sae_b]; 85 MB at 4608², 1 GB at 16k²
    # Rectangular inputs are fine: every latent of the narrower SAE gets one partner.
    rows, cols = linear_sum_assignment(np.abs(cos), maximize=True)
    order = np.argsort(rows, kind="stable")
    rows, cols = rows[order], cols[order]
    pair_cos = np.clip(cos[rows, cols], -1.0, 1.0)  # float32 rounding gives 1.0000001
    return Matching(rows.astype(np.int64), cols.astype(np.int64),
                    pair_cos.astype(np.float32), W_a.shape[0], W_b.shape[0])


def match_folders(folder_a: Path, folder_b: Path) -> Matching:
    """Match two SAE folders' decoders; they must read the same model, hook and d_in."""
    sa, sb = site(folder_a), site(folder_b)
    if sa != sb:
        raise UserError(f"{Path(folder_a).name} reads {sa[0]} {sa[1]} (d_in {sa[2]}) but "
                        f"{Path(folder_b).name} reads {sb[0]} {sb[1]} (d_in {sb[2]})")
    return match_decoders(unit_decoder(folder_a), unit_decoder(folder_b))


# --- the workspace cache --------------------------------------------------------------------
def cache_path(workspace: Path, a: str, b: str) -> Path:
    """One file per unordered pair (named in sorted order, so A-B and B-A share it)."""
    lo, hi = sorted((a, b))
    return Path(workspace) / CACHE_DIR / f"{lo}__{hi}.parquet"


def _read_cached(path: Path, digests: tuple[str, str]) -> Matching | None:
    if not path.is_file():
        return None
    table = pq.read_table(path)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if meta.get("format") != FORMAT or (meta.get("digest_a"), meta.get("digest_b")) != digests:
        return None  # an SAE was retrained in place: recompute
    return Matching(table["latent_a"].to_numpy().astype(np.int64),
                    table["latent_b"].to_numpy().astype(np.int64),
                    table["cos"].to_numpy().astype(np.float32),
                    int(meta["d_sae_a"]), int(meta["d_sae_b"]))


def _write_cached(path: Path, m: Matching, digests: tuple[str, str]) -> None:
    meta = {"format": FORMAT, "digest_a": digests[0], "digest_b": digests[1],
            "d_sae_a": str(m.d_sae_a), "d_sae_b": str(m.d_sae_b)}
    table = pa.table({"latent_a": pa.array(m.latent_a, pa.int32()),
                      "latent_b": pa.array(m.latent_b, pa.int32()),
                      "cos": pa.array(m.cos, pa.float32())})
    try:
        write_parquet_atomic(path, table.replace_schema_metadata(meta))
    except OSError:
        pass  # a read-only workspace: the caller still gets the result, just uncached


def cached(workspace: Path, a: str, b: str) -> Matching | None:
    """The stored matching of SAEs a and b if it is current, else None (never computes)."""
    ws = Path(workspace)
    lo, hi = sorted((a, b))
    digests = (weights_digest(ws / "saes" / lo), weights_digest(ws / "saes" / hi))
    m = _read_cached(cache_path(ws, a, b), digests)
    return None if m is None else (m if a == lo else m.swapped())


def compare(workspace: str | Path, a: str, b: str) -> Matching:
    """The matching of workspace SAEs a and b (folders saes/<a>, saes/<b>), cached on disk."""
    ws = Path(workspace)
    if a == b:
        raise UserError(f"pick two different SAEs (got {a!r} twice)")
    for name in (a, b):
        if not (ws / "saes" / name / "cfg.json").is_file():
            raise UserError(f"no SAE {name!r} in {ws}")
    m = cached(ws, a, b)
    if m is not None:
        return m
    lo, hi = sorted((a, b))
    m = match_folders(ws / "saes" / lo, ws / "saes" / hi)
    digests = (weights_digest(ws / "saes" / lo), weights_digest(ws / "saes" / hi))
    _write_cached(cache_path(ws, a, b), m, digests)
    return m if a == lo else m.swapped()


def share_matrix(
    workspace: str | Path, names: list[str], threshold: float = THRESHOLD,
    compute: bool = True,
) -> np.ndarray:
    """[n, n] share of row SAE's latents matched above `threshold` in the column SAE.

    Diagonal 1. With `compute=False` only cached pairs are filled and the rest are NaN.
    """
    n = len(names)
    out = np.full((n, n), np.nan)
    np.fill_diagonal(out, 1.0)
    for i, j in itertools.combinations(range(n), 2):
        m = (compare if compute else cached)(workspace, names[i], names[j])
        if m is not None:
            out[i, j], out[j, i] = m.shared(threshold)
    return out


def comparable(workspace: str | Path, name: str) -> list[str]:
    """The other SAEs of the workspace at the same model, hook and d_in as `name`."""
    ws = Path(workspace)
    mine = site(ws / "saes" / name)
    others = sorted(p.parent.name for p in ws.glob("saes/*/cfg.json"))
    return [o for o in others if o != name and site(ws / "saes" / o) == mine]
