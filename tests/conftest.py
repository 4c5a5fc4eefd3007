"""Shared fixtures: a tiny random model's store, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from store.activation_store import StoreSpec

TINY_HOOK = "blocks.0.hook_resid_post"


def tiny_spec(**overrides) -> StoreSpec:
    base = dict(
        model="random:tiny",
        hook=TINY_HOOK,
        dataset="austen",
        ctx=32,
        n_tokens=4096,
        n_heldout_tokens=1024,
        seed=0,
        dtype="float16",
        with_grads=False,
        chunk_seqs=16,
    )
    return StoreSpec(**{**base, **overrides})


@pytest.fixture
def one_thread():
    """Tiny shapes: extra OpenMP threads only add synchronisation (and contention on busy CI)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> Path:
    """A complete store from the tiny random model, with gradients."""
    from store.caching import cache

    path = tmp_path_factory.mktemp("store") / "tiny.duckdb"
    cache(tiny_spec(with_grads=True), path, progress=False)
    return path


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory) -> Path:
    """A complete small workspace (store, trained SAE, core eval, feature index)."""
    from workspace_builder import build_tiny_workspace

    return build_tiny_workspace(tmp_path_factory.mktemp("ws") / "ws")


@pytest.fixture(scope="session")
def two_sae_workspace(tiny_workspace, tmp_path_factory) -> Path:
    """A copy of the tiny workspace with a second SAE (k 2, evaluated, not indexed)."""
    import shutil

    from workspace_builder import add_second_sae

    dest = tmp_path_factory.mktemp("ws2") / "ws"
    shutil.copytree(tiny_workspace, dest)
    add_second_sae(dest)
    return dest
