"""Several hooks cached in one model pass give exactly the stores of one pass per hook."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_spec

from store.caching import cache, cache_hooks
from store.errors import UserError
from store.reader import open_store

pytestmark = pytest.mark.usefixtures("one_thread")

HOOKS = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_mid")


def _vectors(path, split="train", grads=False) -> torch.Tensor:
    reader = open_store(path)
    return torch.cat([reader.read_chunk(c, grads=grads).float()
                      for c in reader.split_chunks(split)])


@pytest.mark.parametrize("with_grads", [False, True])
def test_one_pass_equals_one_pass_per_hook(tmp_path, with_grads):
    specs = [tiny_spec(hook=h, n_tokens=1024, n_heldout_tokens=256, with_grads=with_grads)
             for h in HOOKS]
    together = [tmp_path / f"together-{i}.duckdb" for i in range(2)]
    cache_hooks(specs, together, progress=False)
    for spec, path in zip(specs, together, strict=True):
        alone = tmp_path / f"alone-{spec.hook}.duckdb"
        cache(spec, alone, progress=False)
        assert open_store(path).meta["hook"] == spec.hook
        for split in ("train", "heldout"):
            assert torch.equal(_vectors(path, split), _vectors(alone, split))
        if with_grads:
            # The earlier hook's gradient must flow through the later hook, not stop there.
            ours, ref = _vectors(path, grads=True), _vectors(alone, grads=True)
            assert ours.abs().sum() > 0
            assert torch.allclose(ours, ref, atol=1e-2, rtol=1e-2)  # bf16 storage


def test_resume_fills_only_the_missing_store(tmp_path):
    specs = [tiny_spec(hook=h, n_tokens=1024, n_heldout_tokens=256) for h in HOOKS]
    paths = [tmp_path / "a.duckdb", tmp_path / "b.duckdb"]
    cache(specs[0], paths[0], progress=False)
    before = paths[0].stat().st_mtime_ns
    metas = cache_hooks(specs, paths, progress=False)
    assert [m["status"] for m in metas] == ["complete", "complete"]
    assert paths[0].stat().st_mtime_ns == before  # complete stores are not reopened


def test_specs_must_differ_only_in_hook(tmp_path):
    specs = [tiny_spec(hook=HOOKS[0]), tiny_spec(hook=HOOKS[1], ctx=16)]
    with pytest.raises(UserError, match="differ only in their hook"):
        cache_hooks(specs, [tmp_path / "a.duckdb", tmp_path / "b.duckdb"], progress=False)
    with pytest.raises(UserError, match="must differ"):
        cache_hooks([specs[0], specs[0]], [tmp_path / "a.duckdb", tmp_path / "c.duckdb"])
    assert not list(tmp_path.iterdir())


def test_residual_hook_presets():
    from store.hooks import residual_hooks

    assert residual_hooks(30, 4) == [f"blocks.{i}.hook_resid_post" for i in (6, 12, 18, 24)]
    assert residual_hooks(2, 2) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    with pytest.raises(UserError, match="between 1 and"):
        residual_hooks(2, 3)


def test_cli_caches_one_store_per_hook(tmp_path, capsys):
    from saebench.cli import main

    store = tmp_path / "s.duckdb"
    rc = main(["cache", "--model", "random:tiny", "--hook", "resid:2", "--ctx", "32",
               "--tokens", "512", "--heldout-tokens", "128", "--store", str(store)])
    assert rc in (0, None)
    made = sorted(p.name for p in tmp_path.glob("*.duckdb"))
    assert made == ["s.blocks.0.hook_resid_post.duckdb", "s.blocks.1.hook_resid_post.duckdb"]
