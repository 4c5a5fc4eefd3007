"""g-SAE: the selection rule, TopK fallback, training on (x, grad), export, both eval modes."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from eval_helpers import TINY_HOOK, MemoryStore, model_store

from saebench.evals.configs import CoreConfig
from saebench.evals.context import EvalContext
from saebench.evals.core import run
from saebench.evals.report import format_table
from saebench.evals.runner import as_trained
from store.errors import UserError
from store.sources import InMemorySource
from trainers.config import TrainConfig
from trainers.gsae import GSAE, GSAEConfig
from trainers.loop import train_saes
from trainers.saelens_format import load_sae
from trainers.topk import TopKConfig, TopKSAE

pytestmark = pytest.mark.usefixtures("one_thread")

D_IN, D_SAE, K = 16, 64, 4


def _sae(beta: float = 2.0, seed: int = 0) -> GSAE:
    sae = GSAE(D_IN, GSAEConfig(d_sae=D_SAE, k=K, beta=beta, effect_bf16=False),
               generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-trivial biases, so the reference must handle them
        sae.b_enc.copy_(0.1 * torch.randn(D_SAE, generator=g))
        sae.b_dec.copy_(0.5 * torch.randn(D_IN, generator=g))
        sae.grad_scale.fill_(1.0)  # raw-unit gradients, as the paper's formula reads
    return sae


def _data(n: int = 200, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D_IN, generator=g), torch.randn(n, D_IN, generator=g)


def reference_codes(sae: GSAE, x: torch.Tensor, grad: torch.Tensor, beta: float) -> torch.Tensor:
    """Olmo et al. 2024, §3, written densely: TopK over z + β z ⊙ |W_dec ∇ₓL|, values ReLU(z)."""
    W_enc, b_enc = sae.W_enc.detach().double(), sae.b_enc.detach().double()
    W_dec, b_dec = sae.W_dec.detach().double(), sae.b_dec.detach().double()
    z = (x.double() - b_dec) @ W_enc + b_enc
    score = z + beta * z * (grad.double() @ W_dec.T).abs()
    codes = torch.zeros_like(z)
    for t in range(z.shape[0]):
        order = sorted(range(z.shape[1]), key=lambda i: -float(score[t, i]))[:K]
        for i in order:
            codes[t, i] = max(float(z[t, i]), 0.0)
    return codes.float()


def test_selection_matches_the_papers_formula():
    sae, (x, grad) = _sae(beta=2.0), _data()
    ref = reference_codes(sae, x, grad, beta=2.0)
    with torch.no_grad():
        ours = sae.encode_with_grad(x, grad)
        plain = sae.encode(x)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert (ours != plain).any(dim=1).float().mean() > 0.2  # the gradient changes the choice
    # Training selects the same latents, with the same values.
    out = sae.loss(x, SimpleNamespace(step=0, dead_mask=None, grad=grad))
    torch.testing.assert_close(out.codes.to_dense(), ref, atol=1e-5, rtol=1e-5)


def test_selection_ignores_the_input_scale_but_not_the_gradients():
    # The loop trains on x·scale with raw-unit gradients; exporting divides the biases by the
    # scale. The selection must be the same on both sides, so it may depend on x's scale only
    # through a positive factor of the score.
    sae, (x, grad) = _sae(beta=2.0), _data()
    scaled = _sae(beta=2.0)
    with torch.no_grad():
        scaled.b_enc.mul_(3.0)
        scaled.b_dec.mul_(3.0)
        torch.testing.assert_close(scaled.encode_with_grad(3 * x, grad),
                                   3 * sae.encode_with_grad(x, grad), atol=1e-5, rtol=1e-5)
        assert not torch.equal(sae.encode_with_grad(x, 5 * grad) != 0,
                               sae.encode_with_grad(x, grad) != 0)


def test_without_a_gradient_it_is_topk():
    x, _ = _data()
    gsae = GSAE(D_IN, GSAEConfig(d_sae=D_SAE, k=K), generator=torch.Generator().manual_seed(0))
    topk = TopKSAE(D_IN, TopKConfig(d_sae=D_SAE, k=K), generator=torch.Generator().manual_seed(0))
    ctx = SimpleNamespace(step=0, dead_mask=None, grad=None)
    ours, theirs = gsae.loss(x, ctx), topk.loss(x, ctx)
    assert torch.equal(ours.total, theirs.total)
    assert torch.equal(ours.codes.to_dense(), theirs.codes.to_dense())
    assert torch.equal(gsae.encode(x), topk.encode(x))
    assert torch.equal(gsae.encode_with_grad(x, torch.zeros_like(x)), topk.encode(x))


def test_bf16_gradient_term_moves_only_near_ties():
    exact, (x, grad) = _sae(beta=2.0), _data(n=2000)
    fast = GSAE(D_IN, GSAEConfig(d_sae=D_SAE, k=K, beta=2.0, effect_bf16=True))
    fast.load_state_dict(exact.state_dict())
    with torch.no_grad():
        a, b = exact.encode_with_grad(x, grad) > 0, fast.encode_with_grad(x, grad) > 0
    assert (a & b).sum() / a.sum() > 0.97  # the same latents, up to reordered near-ties


def test_first_gradients_fix_the_normaliser_and_the_export_folds_it():
    sae = GSAE(D_IN, GSAEConfig(d_sae=D_SAE, k=K, beta=2.0, effect_bf16=False),
               generator=torch.Generator().manual_seed(0))
    x, grad = _data()
    grad = grad * 1e-3  # raw gradients are tiny next to activations
    sae.loss(x, SimpleNamespace(step=0, dead_mask=None, grad=grad))
    s_g = float(sae.grad_scale)
    assert (s_g * grad).norm(dim=1).mean() == pytest.approx(D_IN ** 0.5, rel=1e-4)
    sae.loss(x, SimpleNamespace(step=1, dead_mask=None, grad=10 * grad))
    assert float(sae.grad_scale) == s_g  # fixed after the first batch
    arch, fields, _ = sae.export_saelens(1.0)
    assert arch == "topk" and fields["gsae_beta_raw"] == pytest.approx(2.0 * s_g)
    loaded = GSAE.from_topk(sae, beta_raw=fields["gsae_beta_raw"], effect_bf16=False)
    with torch.no_grad():
        assert torch.equal(loaded.encode_with_grad(x, grad), sae.encode_with_grad(x, grad))


def test_raw_gradients_keep_their_units_and_match_a_rescaled_beta():
    x, grad = _data()
    grad = grad * 1e-3
    raw = GSAE(D_IN, GSAEConfig(d_sae=D_SAE, k=K, beta=50.0, effect_bf16=False,
                                grad_norm="raw"), generator=torch.Generator().manual_seed(0))
    raw.loss(x, SimpleNamespace(step=0, dead_mask=None, grad=grad))
    assert float(raw.grad_scale) == 1.0
    assert raw.export_saelens(1.0)[1]["gsae_beta_raw"] == 50.0
    unit = GSAE(D_IN, GSAEConfig(d_sae=D_SAE, k=K, beta=1.0, effect_bf16=False),
                generator=torch.Generator().manual_seed(0))
    unit.loss(x, SimpleNamespace(step=0, dead_mask=None, grad=grad))
    # β_raw = β·s_g selects exactly what unit-mean normalisation with β does.
    twin = GSAE(D_IN, GSAEConfig(d_sae=D_SAE, k=K, beta=float(unit.grad_scale),
                                 effect_bf16=False, grad_norm="raw"))
    twin.load_state_dict({**unit.state_dict(), "grad_scale": torch.ones(())})
    with torch.no_grad():
        pre = unit._pre(x - unit.b_dec)
        a = unit.gradient_topk(pre, grad).sort(dim=1).values
        b = twin.gradient_topk(pre, grad).sort(dim=1).values
    assert torch.equal(a, b)


def test_config_rejects_a_bad_beta():
    with pytest.raises(UserError, match="beta"):
        GSAEConfig(beta=-1.0)
    with pytest.raises(UserError, match="beta"):
        GSAEConfig(beta=math.nan)


def _synthetic(n: int = 4096, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse data whose 'downstream loss' L = ½‖R x‖² reads a few atoms only: ∇ₓL = RᵀR x."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.nn.functional.normalize(torch.randn(48, D_IN, generator=g), dim=1)
    idx = torch.rand(n, 48, generator=g).topk(3, dim=1).indices
    coef = torch.rand(n, 3, generator=g) + 0.5
    x = torch.zeros(n, 48).scatter_(1, idx, coef) @ atoms
    R = atoms[:4]  # the loss depends on four of the true features
    return x, x @ R.T @ R


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    x, grad = _synthetic()
    out = tmp_path_factory.mktemp("saes") / "gsae"
    meta = {"model": "synthetic", "hook": TINY_HOOK, "d_in": D_IN, "ctx": 16}
    train = TrainConfig(tokens=256 * 40, batch_size=256, progress=False)
    train_saes(InMemorySource(x, grad), [GSAEConfig(d_sae=D_SAE, k=K, beta=4.0)], [out],
               meta, train)
    return out, x, grad


def test_training_consumes_gradients_and_records_the_arch(trained):
    out, x, grad = trained
    run_record = json.loads((out / "saebench_train.json").read_text())
    assert run_record["arch"] == "gsae" and run_record["config"]["beta"] == 4.0
    assert json.loads((out / "cfg.json").read_text())["architecture"] == "topk"
    assert run_record["final"]["l0"] == pytest.approx(K)
    assert run_record["final"]["fvu"] < 0.9


def test_a_store_without_gradients_is_refused(tmp_path):
    x, _ = _synthetic(512)
    with pytest.raises(UserError, match="with-grads"):
        train_saes(InMemorySource(x), [GSAEConfig(d_sae=D_SAE, k=K)], [tmp_path / "g"],
                   {"d_in": D_IN}, TrainConfig(tokens=512, batch_size=256, progress=False))


def test_export_loads_in_saelens_as_plain_mode(trained):
    from sae_lens import SAE

    out, x, grad = trained
    ours = as_trained(load_sae(out), out)
    beta_raw = json.loads((out / "cfg.json").read_text())["gsae_beta_raw"]
    assert isinstance(ours, GSAE) and ours.beta == beta_raw
    # β·s_g, with s_g fixed by the first batch so that mean ‖s_g·∇ₓL‖ = √d_in.
    assert beta_raw == pytest.approx(4.0 * D_IN ** 0.5 / float(grad.norm(dim=1).mean()), rel=0.2)
    theirs = SAE.load_from_disk(str(out))
    with torch.no_grad():
        codes = ours.encode(x[:300])
        torch.testing.assert_close(theirs.encode(x[:300]), codes, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs.decode(codes), ours.decode(codes), atol=1e-5,
                                   rtol=1e-5)
        # Gradient-aware mode differs from plain mode on the exported weights.
        assert not torch.equal(ours.encode_with_grad(x[:300], grad[:300]) != 0, codes != 0)


# ---- The core eval, both modes ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    from store.models import load_model

    return load_model("random:tiny")


def _grads_of(model, windows: torch.Tensor) -> torch.Tensor:
    """The held-out gradients a `--with-grads` store would cache (position 0 dropped)."""
    from store.caching import forward

    _, grad = forward(model, TINY_HOOK, windows, with_grads=True)
    return grad[:, 1:].reshape(-1, grad.shape[-1])


def _model_gsae(store, beta: float) -> GSAE:
    d_in = store.meta["d_in"]
    sae = GSAE(d_in, GSAEConfig(d_sae=64, k=4, beta=beta),
               generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.b_dec.copy_(store.acts.mean(0))
        sae.grad_scale.fill_(1.0)
    return sae.eval()


def test_core_eval_reports_both_modes(tiny, capsys):
    store = model_store(tiny)
    grads = _grads_of(tiny, store.windows)
    sae = _model_gsae(store, beta=5.0 / float(grads.norm(dim=1).mean()))
    cfg = CoreConfig(ce_tokens=100, ce_batch_tokens=100, batch_tokens=70)
    ctx = EvalContext(sae, {"hook_name": TINY_HOOK}, store, model_loader=lambda: tiny)
    m = run(ctx, cfg).metrics  # no gradients in the store: computed with the model
    names = ("l0", "mse", "explained_variance", "fvu", "cosine_sim", "ce_sae", "delta_ce",
             "ce_recovered_vs_zero_ablation", "ce_recovered_vs_mean_ablation", "kl_sae")
    for name in names:
        assert math.isfinite(m[f"grad_aware/{name}"]), name
    assert m["grad_aware/l0"] <= 4 and m["l0"] <= 4
    for name in ("mse", "ce_sae", "kl_sae"):
        assert m[f"grad_aware/{name}"] != pytest.approx(m[name], rel=1e-6), name
    # With the same gradients cached in the store, the numbers are the same: the computed
    # gradients line up with the stored rows.
    cached = MemoryStore(store.meta, store.acts, store.windows, grads=grads)
    ctx = EvalContext(sae, {"hook_name": TINY_HOOK}, cached, model_loader=lambda: tiny)
    result = run(ctx, cfg)
    for name in names:
        assert result.metrics[f"grad_aware/{name}"] == pytest.approx(m[f"grad_aware/{name}"],
                                                                     rel=1e-5, abs=1e-7)
    table = format_table("core", "g", result)
    assert "gradient-aware selection (g-SAE)" in table and "grad_aware/ce_sae" in table
    assert "store's cached" in result.notes["grad_aware"]


def test_plain_topk_eval_has_no_gradient_aware_metrics(tiny):
    store = model_store(tiny)
    sae = TopKSAE(store.meta["d_in"], TopKConfig(d_sae=64, k=4)).eval()
    ctx = EvalContext(sae, {"hook_name": TINY_HOOK}, store, model_loader=lambda: tiny)
    m = run(ctx, CoreConfig(ce_tokens=50)).metrics
    assert not any(name.startswith("grad_aware/") for name in m)


def test_store_end_to_end(tiny_store, tmp_path):
    """Cache --with-grads (the shared fixture) -> train a g-SAE from the store -> eval from the
    folder: the held-out gradients come from the store, and both modes are reported."""
    from saebench.evals.runner import open_context
    from store.reader import open_store

    reader = open_store(tiny_store)
    assert reader.has_grads and reader.n_tokens("heldout") > 0
    out = tmp_path / "saes" / "g"
    train = TrainConfig(tokens=256 * 20, batch_size=256, progress=False)
    train_saes(reader.source("train"), [GSAEConfig(d_sae=64, k=4, beta=1.0)], [out],
               reader.meta, train, store_path=str(tiny_store))
    ctx = open_context(out, None, "cpu")  # the store is found from the run record
    assert isinstance(ctx.sae, GSAE)
    result = run(ctx, CoreConfig(ce_tokens=60))
    m = result.metrics
    assert "store's cached" in result.notes["grad_aware"]
    assert math.isfinite(m["grad_aware/fvu"]) and math.isfinite(m["grad_aware/kl_sae"])
    assert m["grad_aware/fvu"] != m["fvu"] and m["grad_aware/ce_sae"] != m["ce_sae"]
