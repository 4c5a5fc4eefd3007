"""A complete small workspace (store, trained TopK SAE, core eval, feature index) for tests."""

from __future__ import annotations

from pathlib import Path

SAE_NAME = "tiny-topk"


def build_tiny_workspace(root: Path) -> Path:
    """Build `root/store.duckdb`, `root/saes/tiny-topk` (evaluated and indexed); return root."""
    from conftest import tiny_spec

    from saebench.cli import main
    from saebench.index.build import IndexSettings, build_index
    from store.caching import cache
    from store.reader import open_store

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    store_path, sae_dir = root / "store.duckdb", root / "saes" / SAE_NAME
    cache(tiny_spec(), store_path, progress=False)
    train = ["train", "--store", str(store_path), "--out", str(sae_dir), "--k", "4",
             "--width", "64", "--tokens", "4096", "--batch-size", "512", "--warmup-steps", "2",
             "--device", "cpu", "--no-progress"]
    assert main(train) == 0, "training the tiny SAE failed"
    evaluate = ["eval", "--sae", str(sae_dir), "--store", str(store_path), "--device", "cpu",
                "--core.ce-tokens", "256"]
    assert main(evaluate) == 0, "the core eval of the tiny SAE failed"
    settings = IndexSettings(batch_tokens=1024)
    build_index(sae_dir, open_store(store_path), settings, progress=False, echo=lambda _: None)
    return root


def add_second_sae(ws: Path) -> str:
    """Train and evaluate a second SAE (k 2) on the workspace's store; returns its name."""
    import saebench
    from saebench.cli import main as cli

    workspace = saebench.open_workspace(ws)
    first = workspace.sae(workspace.saes()[0])
    out = ws / "saes" / f"{first.name}-k2"
    assert cli(["train", "--store", str(ws / first.run["store_path"]), "--out", str(out),
                "--k", "2", "--width", str(first.cfg["d_sae"]), "--tokens", "4096",
                "--batch-size", "256", "--no-progress"]) == 0
    assert cli(["eval", "--sae", str(out)]) == 0
    return out.name
