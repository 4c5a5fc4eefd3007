"""A 2-D map of an SAE's dictionary: UMAP of the decoder directions, and clusters on it.

UMAP (McInnes et al. 2018) with the cosine metric on W_dec rows, as in Bricken et al. (2023,
"Towards Monosemanticity", the feature-splitting maps): nearby points write similar directions.
Clusters are HDBSCAN (Campello et al. 2013) on the 2-D embedding, the usual UMAP companion:
it finds dense islands without a preset count and leaves sparse points as noise (-1).

Measured on 2 busy CPU cores for 4608 x 576: umap-learn's own nearest-neighbour search
(NNDescent) plus 500 epochs took 90-105 s; exact cosine neighbours from one GEMM fed in as
`precomputed_knn`, and 200 epochs (umap-learn's own choice above 10k points), take about 7 s.
Numba compiles UMAP on first use in a process (about 20 s), so the map is computed once per SAE
by `saebench index` or the page's button and stored as `<sae>/feature_map.parquet`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from jaxtyping import Float, Int

from saebench.decoders import unit_decoder, unit_rows, weights_digest
from store.catalog import write_parquet_atomic
from store.errors import UserError

FILE = "feature_map.parquet"
FORMAT = "saebench-feature-map/1"
MIN_LATENTS = 10


@dataclass(frozen=True)
class MapSettings:
    """What determines a feature map (a stored map with other settings is recomputed)."""

    n_neighbors: int = 15
    """UMAP neighbourhood size (clamped to d_sae - 1)."""
    min_dist: float = 0.1
    """UMAP's minimum distance between embedded points."""
    n_epochs: int = 200
    """UMAP layout epochs."""
    seed: int = 0
    """UMAP's random_state: the same seed gives the same map."""


def cosine_knn(
    W: Float[np.ndarray, "n d"], k: int, block: int = 2048
) -> tuple[Int[np.ndarray, "n k"], Float[np.ndarray, "n k"]]:
    """Exact k nearest rows by cosine distance, self first (UMAP's knn convention)."""
    U = unit_rows(W)
    n = U.shape[0]
    idx = np.empty((n, k), dtype=np.int64)
    dist = np.empty((n, k), dtype=np.float32)
    for lo in range(0, n, block):
        sim = U[lo:lo + block] @ U.T  # never n² at once: 1 GB at 16k latents
        rows = np.arange(sim.shape[0])
        sim[rows, lo + rows] = 2.0  # self ranks first even for a zero row
        part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sim, part, 1), axis=1, kind="stable")
        top = np.take_along_axis(part, order, 1)
        idx[lo:lo + block] = top
        d = 1.0 - np.take_along_axis(sim, top, 1)
        d[:, 0] = 0.0
        dist[lo:lo + block] = np.maximum(d, 0.0)
    return idx, dist


def embed(
    W_dec: Float[np.ndarray, "d_sae d_in"], settings: MapSettings = MapSettings()
) -> Float[np.ndarray, "d_sae 2"]:
    """UMAP coordinates of each decoder row (cosine metric)."""
    n = W_dec.shape[0]
    if n < MIN_LATENTS:
        raise UserError(f"a feature map needs at least {MIN_LATENTS} latents, not {n}")
    import warnings

    import umap  # about 5 s to import (numba), so only here
    k = min(settings.n_neighbors, n - 1)
    knn = cosine_knn(W_dec, k)
    reducer = umap.UMAP(
        n_neighbors=k, min_dist=settings.min_dist, metric="cosine", n_epochs=settings.n_epochs,
        random_state=settings.seed, precomputed_knn=(knn[0], knn[1], None))
    with warnings.catch_warnings():
        # "n_jobs overridden by random_state": a fixed seed is worth the single thread here.
        warnings.simplefilter("ignore", UserWarning)
        return np.asarray(reducer.fit_transform(W_dec), dtype=np.float32)


def clusters(coords: Float[np.ndarray, "n 2"], min_size: int | None = None) -> np.ndarray:
    """HDBSCAN labels on the embedding (int32 [n]; -1 = noise)."""
    from sklearn.cluster import HDBSCAN

    n = coords.shape[0]
    size = min_size or max(5, n // 200)
    return HDBSCAN(min_cluster_size=min(size, n), copy=True).fit_predict(coords).astype(np.int32)


def _meta(sae_dir: Path, settings: MapSettings) -> dict[str, str]:
    return {"format": FORMAT, "weights": weights_digest(sae_dir),
            **{k: str(v) for k, v in asdict(settings).items()}}


def read_feature_map(sae_dir: Path, settings: MapSettings = MapSettings()) -> pa.Table | None:
    """The stored map (latent, x, y, cluster), or None if missing or made from other weights."""
    path = Path(sae_dir) / FILE
    if not path.is_file():
        return None
    table = pq.read_table(path)
    stored = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    want = _meta(sae_dir, settings)
    return table if all(stored.get(k) == v for k, v in want.items()) else None


def build_feature_map(
    sae_dir: Path, settings: MapSettings = MapSettings(), force: bool = False
) -> Path:
    """Compute and store `<sae_dir>/feature_map.parquet` unless a current one exists."""
    sae_dir = Path(sae_dir)
    path = sae_dir / FILE
    if not force and read_feature_map(sae_dir, settings) is not None:
        return path
    t0 = time.perf_counter()
    coords = embed(unit_decoder(sae_dir), settings)
    labels = clusters(coords)
    meta = _meta(sae_dir, settings) | {"seconds": f"{time.perf_counter() - t0:.1f}"}
    table = pa.table({
        "latent": pa.array(np.arange(len(coords), dtype=np.int32)),
        "x": pa.array(coords[:, 0]), "y": pa.array(coords[:, 1]),
        "cluster": pa.array(labels),
    })
    write_parquet_atomic(path, table.replace_schema_metadata(meta))
    return path
