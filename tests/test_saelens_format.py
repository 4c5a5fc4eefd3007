"""SAELens interop both ways, and one-line errors for broken SAE folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sae_lens import (
    SAE,
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    JumpReLUSAEConfig,
    MatchingPursuitSAE,
    MatchingPursuitSAEConfig,
    StandardSAEConfig,
    TopKSAEConfig,
)
from sae_lens import JumpReLUSAE as LensJumpReLU
from sae_lens import StandardSAE as LensStandard
from sae_lens import TopKSAE as LensTopK

from store.errors import UserError
from store.sources import InMemorySource
from trainers.config import TrainConfig
from trainers.loop import train_saes
from trainers.protocol import SparseCoder
from trainers.saelens_format import CFG_FILE, WEIGHTS_FILE, load_sae, read_meta
from trainers.topk import TopKConfig, TopKSAE

D_IN, D_SAE = 24, 64


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A TopK SAE trained by saebench on data with a large mean and norm (so folding matters)."""
    g = torch.Generator().manual_seed(0)
    x = 5 * torch.randn(4096, D_IN, generator=g) * torch.rand(D_IN, generator=g) + 7
    train = TrainConfig(tokens=30 * 256, batch_size=256, progress=False)
    out = tmp_path_factory.mktemp("ws") / "saes" / "lens"
    meta = {"model": "m", "hook": "blocks.3.hook_resid_post", "ctx": 64, "dataset": "austen",
            "bos_policy": "bos_per_window"}
    (folder,) = train_saes(InMemorySource(x), [TopKConfig(d_sae=D_SAE, k=5)], [out], meta, train)
    return folder


def _x(scale: float = 5.0, offset: float = 7.0) -> torch.Tensor:
    return scale * torch.randn(256, D_IN, generator=torch.Generator().manual_seed(1)) + offset


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_saelens_loads_our_folder_and_agrees(trained):
    theirs = SAE.load_from_disk(str(trained))
    ours = load_sae(trained)
    assert isinstance(theirs, LensTopK) and isinstance(ours, TopKSAE)
    assert isinstance(ours, SparseCoder)
    x = _x()
    with torch.no_grad():
        codes = ours.encode(x)
        assert _close(theirs.encode(x), codes)
        assert _close(theirs.decode(codes), ours.decode(codes))
        assert _close(theirs(x), ours(x))
    assert theirs.cfg.metadata.hook_name == "blocks.3.hook_resid_post"
    assert theirs.cfg.metadata.context_size == 64 and theirs.cfg.metadata.prepend_bos is True


def test_run_record_sits_beside_the_weights(trained):
    meta = read_meta(trained)
    assert meta["cfg"]["architecture"] == "topk" and meta["cfg"]["k"] == 5
    run = meta["run"]
    assert run["store"]["model"] == "m" and run["config"]["d_sae"] == D_SAE
    assert run["train"]["batch_size"] == 256 and run["norm_scale"] > 0
    assert set(run["final"]) >= {"fvu", "l0", "dead_frac", "dead_window"}


def _random_weights(sae) -> None:
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.ndim == 2 else 0.2))
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.rand(sae.threshold.shape, generator=g))


def _roundtrip(theirs, tmp_path: Path) -> None:
    _random_weights(theirs)
    theirs.save_model(str(tmp_path))
    ours = load_sae(tmp_path)
    assert isinstance(ours, SparseCoder)
    x = _x(1.0, 0.3)
    with torch.no_grad():
        codes = theirs.encode(x)
        assert (codes > 0).any()
        assert _close(ours.encode(x), codes)
        assert _close(ours.decode(codes), theirs.decode(codes))
        assert _close(ours.forward(x), theirs(x))


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_we_load_saelens_standard(tmp_path, apply_b_dec):
    cfg = StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=apply_b_dec)
    _roundtrip(LensStandard(cfg), tmp_path)


def test_we_load_saelens_jumprelu(tmp_path):
    _roundtrip(LensJumpReLU(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE)), tmp_path)


@pytest.mark.parametrize(("rescale", "apply_b_dec"), [(False, True), (True, False)])
def test_we_load_saelens_topk(tmp_path, rescale, apply_b_dec):
    cfg = TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=6, rescale_acts_by_decoder_norm=rescale,
                        apply_b_dec_to_input=apply_b_dec)
    _roundtrip(LensTopK(cfg), tmp_path)


@pytest.mark.parametrize(("apply_b_dec", "threshold", "dup"),
                         [(True, 1e-2, True), (False, 1.5, False)])
def test_we_load_saelens_matching_pursuit(tmp_path, apply_b_dec, threshold, dup):
    # SAELens's defaults (max_iterations None = d_in steps, stop on a repeated support), and
    # a threshold that stops some tokens early. _random_weights gives non-unit-norm atoms.
    cfg = MatchingPursuitSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=apply_b_dec,
                                   residual_threshold=threshold, stop_on_duplicate_support=dup)
    _roundtrip(MatchingPursuitSAE(cfg), tmp_path)


def test_we_load_saelens_batchtopk_saved_as_jumprelu(tmp_path):
    lens = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=6))
    _random_weights(lens)
    lens.topk_threshold = torch.tensor(0.4)
    lens.save_inference_model(str(tmp_path))
    assert json.loads((tmp_path / CFG_FILE).read_text())["architecture"] == "jumprelu"
    theirs = SAE.load_from_disk(str(tmp_path))
    ours = load_sae(tmp_path)
    x = _x(1.0, 0.3)
    with torch.no_grad():
        assert _close(ours.encode(x), theirs.encode(x))
        assert _close(ours(x), theirs(x))


def _broken(trained: Path, tmp_path: Path, how: str) -> Path:
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in (CFG_FILE, WEIGHTS_FILE):
        (folder / name).write_bytes((trained / name).read_bytes())
    cfg = json.loads((folder / CFG_FILE).read_text())
    if how == "no_cfg":
        (folder / CFG_FILE).unlink()
    elif how == "bad_json":
        (folder / CFG_FILE).write_text('{"d_in": 24,')
    elif how == "no_weights":
        (folder / WEIGHTS_FILE).unlink()
    elif how == "truncated":
        data = (folder / WEIGHTS_FILE).read_bytes()
        (folder / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    elif how == "wrong_shape":
        (folder / CFG_FILE).write_text(json.dumps({**cfg, "d_sae": D_SAE * 2}))
    elif how == "unknown_arch":
        (folder / CFG_FILE).write_text(json.dumps({**cfg, "architecture": "mystery"}))
    elif how == "bad_k":
        (folder / CFG_FILE).write_text(json.dumps({**cfg, "k": D_SAE}))
    return folder


@pytest.mark.parametrize(
    ("how", "message"),
    [("no_cfg", "cfg.json is missing"), ("bad_json", "corrupt"),
     ("no_weights", "sae_weights.safetensors is missing"), ("truncated", "corrupt"),
     ("wrong_shape", "shape"), ("unknown_arch", "not supported"), ("bad_k", "integer k")],
)
def test_broken_folders_are_one_line_errors(trained, tmp_path, how, message):
    with pytest.raises(UserError, match=message) as err:
        load_sae(_broken(trained, tmp_path, how))
    assert "\n" not in str(err.value)


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        load_sae(tmp_path / "nope")
