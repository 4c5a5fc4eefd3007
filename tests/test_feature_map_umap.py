"""The real UMAP + HDBSCAN feature map on planted clusters (numba compiles UMAP: ~20 s)."""

from __future__ import annotations

import numpy as np
import pytest
from dictionary_workspace import planted, write_sae

pytest.importorskip("umap")


def test_planted_direction_clusters_become_map_clusters(tmp_path):
    from sklearn.metrics import adjusted_rand_score

    import saebench.feature_map as fm
    from saebench.decoders import unit_decoder

    W = planted()["a"]  # 4 clusters of 16 directions (within-cluster |cos| ~0.97)
    truth = np.arange(len(W)) // 16
    coords = fm.embed(W)
    assert coords.shape == (64, 2) and np.isfinite(coords).all()
    # Every point's nearest map neighbour comes from its own planted cluster.
    d = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert (truth[d.argmin(1)] == truth).all()
    assert adjusted_rand_score(truth, fm.clusters(coords)) == pytest.approx(1.0)
    assert np.array_equal(fm.embed(W), coords)  # a fixed seed gives the same map
    folder = write_sae(tmp_path, "s", W)
    table = fm.read_feature_map(fm.build_feature_map(folder).parent)
    again = fm.embed(unit_decoder(folder))  # what the stored map was computed from
    assert np.array_equal(table["x"].to_numpy(), again[:, 0])
    assert adjusted_rand_score(truth, table["cluster"].to_numpy()) == pytest.approx(1.0)
