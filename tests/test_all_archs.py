"""Every registered architecture, end to end: one sweep trains them all from one pass over a
store with gradients, each folder loads in SAELens exactly as in saebench, and the core eval,
the feature index and the browser's feature page all work on every one of them."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from saebench.cli import main
from trainers.registry import ARCHITECTURES

ARCHS = tuple(ARCHITECTURES)
streamlit_testing = pytest.importorskip("streamlit.testing.v1")


@pytest.fixture(scope="module")
def sweep(tiny_store, tmp_path_factory):
    torch.set_num_threads(1)  # module fixtures run before the per-test one_thread fixture
    ws = tmp_path_factory.mktemp("archs")
    store = ws / "store.duckdb"
    shutil.copy(tiny_store, store)
    shutil.copytree(tiny_store.with_suffix(".shards"), store.with_suffix(".shards"))
    out = ws / "saes" / "s"
    argv = ["train", "--store", str(store), "--out", str(out), "--arch", *ARCHS, "--k", "4",
            "--width", "64", "--tokens", "4096", "--batch-size", "256", "--warmup-steps", "2",
            "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    return ws, {arch: ws / "saes" / f"s-{arch}" for arch in ARCHS}


def test_one_pass_trains_every_architecture(sweep):
    _, folders = sweep
    for arch, folder in folders.items():
        run = json.loads((folder / "saebench_train.json").read_text())
        assert run["arch"] == arch and run["tokens_trained"] == 4096


@pytest.mark.parametrize("arch", ARCHS)
def test_saelens_loads_every_architecture_as_we_do(sweep, arch):
    from sae_lens import SAE

    from saebench.evals.runner import as_trained
    from store.reader import open_store
    from trainers.saelens_format import load_sae

    ws, folders = sweep
    x = next(open_store(ws / "store.duckdb").iter_activations("heldout", 256)).float()
    ours = as_trained(load_sae(folders[arch]), folders[arch])
    theirs = SAE.load_from_disk(str(folders[arch]))
    with torch.no_grad():
        codes = ours.encode(x)
        torch.testing.assert_close(theirs.encode(x), codes, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(theirs.decode(codes), ours.decode(codes), atol=1e-4,
                                   rtol=1e-4)
    assert (codes > 0).sum(1).float().mean() > 0  # it encodes something


@pytest.mark.parametrize("arch", ["batchtopk", "feature_choice"])
def test_calibrate_hits_the_target_l0_and_clears_stale_evals(sweep, arch, tmp_path, capsys):
    from store.reader import open_store
    from trainers.saelens_format import load_sae

    ws, folders = sweep
    folder = ws / "saes" / f"cal-{arch}"
    shutil.copytree(folders[arch], folder)
    (folder / "evals").mkdir(exist_ok=True)
    (folder / "evals" / "core.json").write_text("{}")
    n = open_store(ws / "store.duckdb").n_tokens("heldout")
    assert main(["calibrate", "--sae", str(folder), "--l0", "3", "--tokens", str(n)]) == 0
    run = json.loads((folder / "saebench_train.json").read_text())
    assert run["calibration"]["target_l0"] == 3.0 and not (folder / "evals").exists()
    x = torch.cat(list(open_store(ws / "store.duckdb").iter_activations("heldout", 4096)))
    with torch.no_grad():
        l0 = (load_sae(folder).encode(x.float()) > 0).sum(1).float().mean()
    assert float(l0) == pytest.approx(3.0, rel=0.01)
    capsys.readouterr()
    assert main(["calibrate", "--sae", str(folder), "--l0", "3", "--tokens", str(n)]) == 0
    assert "already calibrated" in capsys.readouterr().out
    assert main(["calibrate", "--sae", str(folders["topk"])]) == 2  # nothing to calibrate


@pytest.mark.parametrize("arch", ARCHS)
def test_core_eval_and_index_work_on_every_architecture(sweep, arch):
    from saebench.index.build import IndexSettings, build_index
    from store.reader import open_store

    ws, folders = sweep
    assert main(["eval", "--sae", str(folders[arch]), "--device", "cpu",
                 "--core.ce-tokens", "256"]) == 0
    metrics = json.loads((folders[arch] / "evals" / "core.json").read_text())["metrics"]
    for name in ("l0", "explained_variance", "ce_recovered_vs_zero_ablation", "kl_sae"):
        assert math.isfinite(metrics[name]), name
    assert ("grad_aware/l0" in metrics) == (arch == "gsae")  # both inference modes for g-SAE
    build_index(folders[arch], open_store(ws / "store.duckdb"), IndexSettings(batch_tokens=1024),
                progress=False, echo=lambda _: None)
    assert (folders[arch] / "index").is_dir()


def test_browser_shows_every_architecture(sweep, monkeypatch):
    from pathlib import Path

    ws, folders = sweep
    if not all((f / "index").is_dir() for f in folders.values()):
        pytest.skip("needs the index of every architecture (the test above builds it)")
    monkeypatch.setenv("SAEBENCH_WORKSPACE", str(ws))
    main_py = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
    at = streamlit_testing.AppTest.from_file(main_py, default_timeout=30)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert set(at.table[0].value.index) >= {f.name for f in folders.values()}
    for folder in folders.values():
        at.session_state["sae"] = folder.name
        at.session_state["latent"] = 1
        at.switch_page("views/feature.py").run()
        assert not at.exception, (folder.name, [e.value for e in at.exception])
