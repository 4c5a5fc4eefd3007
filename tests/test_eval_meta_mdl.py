"""The meta_structure and mdl evals: known answers, artifacts, CLI and bad input."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from eval_helpers import TINY_HOOK, ReluCoder, identity_coder, tensor_store

from saebench.evals import EVALS
from saebench.evals.context import EvalContext
from saebench.evals.mdl import run as run_mdl
from saebench.evals.mdl_config import MDLConfig
from saebench.evals.meta_config import MetaStructureConfig
from saebench.evals.meta_structure import run as run_meta
from saebench.evals.runner import run_evals
from store.errors import UserError

META = MetaStructureConfig(steps=300, batch_size=128, lr=2e-3, seed=0)


def _ctx(sae, store):
    return EvalContext(sae, {"hook_name": TINY_HOOK}, store)


def _decoder_sae(W_dec):
    """An SAE that only matters for its decoder rows (meta_structure reads weights only)."""
    d_sae, d_in = W_dec.shape
    return ReluCoder(W_dec.T.contiguous(), torch.zeros(d_sae), W_dec, torch.zeros(d_in))


def _unit(x):
    return torch.nn.functional.normalize(x, dim=1)


def test_meta_structure_separates_composed_from_random_decoders():
    g = torch.Generator().manual_seed(0)
    d_in, n_atoms, d_sae = 32, 16, 128
    atoms = _unit(torch.randn(n_atoms, d_in, generator=g))
    pairs = torch.stack([torch.randperm(n_atoms, generator=g)[:2] for _ in range(d_sae)])
    coef = torch.rand(d_sae, 2, 1, generator=g) + 0.5
    composed = _unit((coef * atoms[pairs]).sum(1))  # each row: 2 of 16 meta-atoms
    random = _unit(torch.randn(d_sae, d_in, generator=g))
    store = tensor_store(torch.randn(10, d_in))  # accepted, not read
    high = run_meta(_ctx(_decoder_sae(composed), store), META).metrics
    low = run_meta(_ctx(_decoder_sae(random), store), META).metrics
    assert high["decoder_fraction_variance_explained"] > 0.95
    assert low["decoder_fraction_variance_explained"] < 0.8
    assert high["meta_d_sae"] == 32 and high["meta_k"] == 4  # 0.25 · 128 latents
    # MSE in the decoder's own units: the residual share of the rows' variance per entry
    var = float((composed - composed.mean(0)).pow(2).sum()) / composed.numel()
    assert high["final_reconstruction_mse"] == pytest.approx(
        (1 - high["decoder_fraction_variance_explained"]) * var, rel=1e-3)


def _grid_store(mags=(0.5, 1.5, 2.5, 3.5)):
    """Every combination of signed magnitudes in 2 dimensions, once: exact frequencies."""
    values = [s * m for m in mags for s in (1, -1)]
    x = torch.tensor(list(itertools.product(values, values)), dtype=torch.float32)
    return tensor_store(x)


def test_mdl_known_answer_on_an_exact_grid():
    # identity SAE on 2-d points: 4 latents (±e_i), each fires on half the tokens with values
    # uniform on {0.5, 1.5, 2.5, 3.5}. Bins span [0, 3.5]: 1 bin -> 0 bits of value, 2 bins
    # -> 1 bit, 4 or 8 bins -> each value its own bin, 2 bits. Per latent H_b(1/2) = 1 bit.
    store = _grid_store()
    cfg = MDLConfig(num_bins_values=(1, 2, 4, 8), mse_epsilon_threshold=0.15, batch_tokens=7)
    m = run_mdl(_ctx(identity_coder(2), store), cfg).metrics
    assert m["bool_bits"] == pytest.approx(4)
    for b, bits in {1: 4, 2: 6, 4: 8, 8: 8}.items():
        assert m[f"description_length_bits/{b}"] == pytest.approx(bits), b
    # 4 bins of width 0.875: midpoints 0.4375 + 0.875 j; error per coordinate value
    errs = torch.tensor([0.5, 1.5, 2.5, 3.5]) - (torch.arange(4) + 0.5) * 0.875
    rmse = math.sqrt(float(errs.pow(2).mean()))
    assert m["rmse_per_dim/4"] == pytest.approx(rmse / 2, rel=1e-5)
    assert [m[f"within_tolerance/{b}"] for b in (1, 2, 4, 8)] == [0, 0, 1, 1]
    assert m["description_length_bits"] == pytest.approx(8) and m["num_bins"] == 4
    assert m["fvu"] == pytest.approx(0, abs=1e-12) and m["n_tokens"] == 64


def test_mdl_dead_latent_costs_nothing_and_nothing_viable_is_nan():
    x = _grid_store().acts
    W_enc = torch.cat([torch.eye(2), -torch.eye(2), torch.zeros(2, 1)], dim=1)  # +1 dead latent
    sae = ReluCoder(W_enc, torch.tensor([0, 0, 0, 0, -1.0]), W_enc.T.contiguous(), torch.zeros(2))
    cfg = MDLConfig(num_bins_values=(2,), mse_epsilon_threshold=1e-6)
    m = run_mdl(_ctx(sae, tensor_store(x)), cfg).metrics
    assert m["description_length_bits/2"] == pytest.approx(6)
    assert math.isnan(m["description_length_bits"]) and math.isnan(m["num_bins"])


def test_artifacts_cli_and_bad_input(tmp_path):
    sae_dir = tmp_path / "ws" / "saes" / "grid"
    ctx = _ctx(identity_coder(2), _grid_store())
    cfgs = {"meta_structure": MetaStructureConfig(steps=5, batch_size=8),
            "mdl": MDLConfig(num_bins_values=(4,), mse_epsilon_threshold=0.15)}
    run_evals(ctx, sae_dir, ("meta_structure", "mdl"), cfgs, echo=lambda _: None)
    meta = json.loads((sae_dir / "evals" / "meta_structure.saebench.json").read_text())
    assert meta["eval_type_id"] == "meta_structure_decoder_variance"
    assert set(meta["eval_result_metrics"]["meta_structure"]) == {
        "decoder_fraction_variance_explained", "train_time_seconds", "final_reconstruction_mse"}
    mdl = json.loads((sae_dir / "evals" / "mdl.saebench.json").read_text())
    assert mdl["eval_result_metrics"]["mdl"] == {"description_length": 8.0, "num_bins": 4.0}
    assert mdl["eval_result_details"][0]["within_threshold"] is True
    assert json.loads((sae_dir / "evals" / "mdl.json").read_text())["metrics"]["num_bins"] == 4

    import tyro

    from saebench.commands.eval import Args

    args = tyro.cli(Args, args=["--sae", "s", "--evals", "meta_structure", "mdl",
                                "--meta-structure.k", "8", "--mdl.num-bins-values", "4", "8"])
    assert args.meta_structure.k == 8 and args.mdl.num_bins_values == (4, 8)
    assert {"meta_structure", "mdl"} <= set(EVALS)
    with pytest.raises(UserError, match="n_tokens"):
        run_evals(ctx, tmp_path / "x", ("mdl",), {"mdl": MDLConfig(n_tokens=65)})
    with pytest.raises(UserError, match="width_ratio"):
        MetaStructureConfig(width_ratio=0.0)
