"""Batch-coupled SAEs (BatchTopK, mutual choice, feature choice): selection, calibrated
inference, aux_zipf_loss, the CSR sparse kernels, SAELens export and exact state."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from sae_lens import SAE
from safetensors.torch import load_file

from store.errors import UserError
from store.sources import InMemorySource
from trainers.aux_zipf import aux_zipf_loss, dying_allocation, zipf_target
from trainers.batch_select import flat_topk
from trainers.batchtopk import BatchTopKConfig, BatchTopKSAE
from trainers.config import TrainConfig
from trainers.feature_choice import FeatureChoiceConfig, FeatureChoiceSAE, zipf_caps
from trainers.loop import train_saes
from trainers.mutual_choice import MutualChoiceConfig, MutualChoiceSAE
from trainers.saelens_format import WEIGHTS_FILE, load_sae, save_sae
from trainers.sparse import decode_rows, selected_pre

pytestmark = pytest.mark.usefixtures("one_thread")

D_IN, D_SAE, K, BATCH = 32, 128, 4, 512
META = {"model": "synthetic", "hook": "blocks.0.hook_resid_post", "d_in": D_IN, "ctx": 16}
ARCHS = {
    "batchtopk": (BatchTopKConfig, BatchTopKSAE),
    "mutual_choice": (MutualChoiceConfig, MutualChoiceSAE),
    "feature_choice": (FeatureChoiceConfig, FeatureChoiceSAE),
}


def varied_data(n: int, seed: int = 0) -> torch.Tensor:
    """Positive combinations of 1 to 5 atoms of a fixed random dictionary (so tokens differ in
    how many latents they need), plus a large mean."""
    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(96, D_IN, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    offset = 3.0 * torch.randn(D_IN, generator=g)
    g.manual_seed(1 + seed)
    score = torch.rand(n, 96, generator=g)
    n_on = torch.randint(1, 6, (n, 1), generator=g)
    on = score >= score.sort(dim=1, descending=True).values.gather(1, n_on - 1)
    coef = (torch.rand(n, 96, generator=g) + 0.5) * on
    return coef @ atoms + offset


def from_folder(name: str, folder: Path) -> torch.nn.Module:
    """Our module (not the inference-only loader) with a folder's raw-unit weights."""
    config, model = ARCHS[name]
    sae = model(D_IN, config(d_sae=D_SAE, k=K))
    tensors = load_file(str(folder / WEIGHTS_FILE))
    with torch.no_grad():
        for key in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, key).copy_(tensors[key])
        theta = tensors["threshold"]
        sae.threshold.copy_(theta if sae.threshold.ndim else theta[0])
    return sae.eval()  # eval: the loss then leaves the calibration alone


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return float((x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """All three trained in one pass over the same synthetic stream (200 steps)."""
    train = TrainConfig(tokens=200 * BATCH, batch_size=BATCH, warmup_steps=20, log_every=20,
                        progress=False)
    configs = [config(d_sae=D_SAE, k=K) for config, _ in ARCHS.values()]
    root = tmp_path_factory.mktemp("ws") / "saes"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped, so `one_thread` is not active yet
    try:
        folders = train_saes(InMemorySource(varied_data(16384)), configs,
                             [root / name for name in ARCHS], META, train)
    finally:
        torch.set_num_threads(threads)
    return dict(zip(ARCHS, folders, strict=True))


@pytest.mark.parametrize("name", list(ARCHS))
def test_train_time_and_inference_agree(trained, name):
    """DESIGN §2: the calibrated threshold reproduces the batch-coupled selection's L0 and FVU."""
    sae = from_folder(name, trained[name])
    held = varied_data(8 * BATCH, seed=1)  # rows not trained on
    train_l0, train_fvu, inf_l0, inf_fvu = [], [], [], []
    with torch.no_grad():
        for x in held.split(BATCH):
            out = sae.loss(x, SimpleNamespace(dead_mask=None))
            codes = out.codes.to_dense()
            train_l0.append(float((codes > 0).sum(1).float().mean()))
            train_fvu.append(fvu(x, sae.decode(codes)))
            inf = sae.encode(x)
            inf_l0.append(float((inf > 0).sum(1).float().mean()))
            inf_fvu.append(fvu(x, sae.decode(inf)))
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    assert mean(train_fvu) < 0.3  # it learned something (the mean alone gives 1.0)
    assert mean(inf_l0) == pytest.approx(mean(train_l0), rel=0.10)
    assert mean(inf_fvu) == pytest.approx(mean(train_fvu), rel=0.10)


@pytest.mark.parametrize("name", list(ARCHS))
def test_calibration_hits_the_target_l0_on_other_held_out_data(trained, name):
    """Fit the shift on one held-out sample, check L0 on another: within 1% of the target."""
    from trainers.calibrate import l0_shift, measure_l0

    sae = load_sae(trained[name])

    def pre(seed: int) -> list[torch.Tensor]:
        x = varied_data(16384, seed=seed)
        return [(b - sae.b_dec) @ sae.W_enc + sae.b_enc for b in x.split(4096)]

    with torch.no_grad():
        before = measure_l0(pre(2), sae.threshold)
        cal = l0_shift(pre(1), sae.threshold, float(K))
        after = measure_l0(pre(2), sae.threshold + cal.shift)
    assert cal.l0_after == pytest.approx(K, abs=1 / 16384)  # exact on the calibration tokens
    assert after == pytest.approx(K, rel=0.01)
    assert cal.l0_before == pytest.approx(before, rel=0.05)
    with pytest.raises(UserError, match="out of reach"):
        l0_shift(pre(1), sae.threshold, float(D_SAE))


def test_selection_is_batch_global():
    g = torch.Generator().manual_seed(0)
    pre = torch.randn(64, 50, generator=g) * torch.linspace(0.2, 3, 64)[:, None]
    tok, feat, vals, cut = flat_topk(pre, 64 * 4)
    assert set((tok * 50 + feat).tolist()) == set(pre.reshape(-1).topk(64 * 4).indices.tolist())
    assert float(vals.min()) == float(cut)
    sae = MutualChoiceSAE(D_IN, MutualChoiceConfig(d_sae=D_SAE, k=K))
    x = torch.randn(BATCH, D_IN, generator=g) * torch.linspace(0.1, 4, BATCH)[:, None]
    for model in (sae, BatchTopKSAE(D_IN, BatchTopKConfig(d_sae=D_SAE, k=K))):
        sel = model._allocate(x - model.b_dec)
        counts = torch.bincount(model.loss(x).codes._indices()[0], minlength=BATCH)
        assert sel.feat.numel() == K * BATCH == int(counts.sum())
        assert counts.max() > 2 * K and counts.min() < K  # big tokens take more latents


@pytest.mark.parametrize("capacity", [1.0, 2.0])
def test_feature_choice_uniform_caps_each_latent(capacity):
    sae = FeatureChoiceSAE(D_IN, FeatureChoiceConfig(d_sae=D_SAE, k=K, capacity=capacity,
                                                     cap_dist="uniform"))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, D_IN, generator=g) * torch.linspace(0.1, 4, BATCH)[:, None]
    m = sae.cap(BATCH)
    assert m == math.ceil(capacity * K * BATCH / D_SAE)
    sel = sae._allocate(x - sae.b_dec)
    per_latent = torch.bincount(sel.feat, minlength=D_SAE)
    per_token = torch.diff(sel.offsets, append=torch.tensor([sel.feat.numel()]))
    assert int(per_latent.max()) <= m and sel.feat.numel() == K * BATCH
    assert per_token.max() > per_token.min()  # tokens get variable counts
    assert sel.theta.shape == (D_SAE,)  # a threshold per latent


@pytest.mark.parametrize(("n", "total", "alpha", "cap"),
                         [(128, 2048, 1.0, 512), (4608, 32 * 4096, 1.0, 4096), (50, 60, 2.0, 3),
                          (10, 1000, 1.0, 100)])
def test_zipf_caps_sum_to_the_budget_and_follow_zipf(n, total, alpha, cap):
    caps = zipf_caps(n, total, alpha, cap)
    assert int(caps.sum()) == total
    assert int(caps.min()) >= 1 and int(caps.max()) <= cap
    assert bool((caps[:-1] >= caps[1:]).all())  # by rank, largest first
    free = (caps > 1) & (caps < cap)  # away from both bounds, m − 1 ∝ rank^−α (±1 rounding)
    rank = torch.arange(1, n + 1, dtype=torch.float64)[free]
    if int(free.sum()) > 4:
        c = (caps[free] - 1).double()
        fit = c[0] * (rank / rank[0]).pow(-alpha)
        assert float(((c - fit).abs() / fit.clamp_min(1)).max()) < 0.5


def test_feature_choice_zipf_caps_bind_by_usage_rank():
    sae = FeatureChoiceSAE(D_IN, FeatureChoiceConfig(d_sae=D_SAE, k=K))
    with torch.no_grad():  # latent 5 is the most used, latent 9 the second
        sae.usage.copy_(torch.rand(D_SAE, generator=torch.Generator().manual_seed(1)) * 0.01)
        sae.usage[5], sae.usage[9] = 0.5, 0.4
    caps = sae.caps(BATCH)
    assert int(caps.sum()) == K * BATCH
    assert int(caps[5]) == int(caps.max()) and int(caps[9]) == int(caps.sort().values[-2])
    # Inputs on which every latent would like every token: the caps bind exactly.
    x = torch.randn(BATCH, D_IN, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        sae.b_enc.fill_(100.0)
    sel = sae._allocate(x - sae.b_dec)
    assert torch.equal(torch.bincount(sel.feat, minlength=D_SAE), caps)
    assert sel.feat.numel() == K * BATCH


def test_zipf_target_is_exact_on_zipf_usage_and_aux_is_off():
    usage = 0.3 * torch.arange(1, 201).float() ** -0.8
    usage = usage[torch.randperm(200, generator=torch.Generator().manual_seed(0))]
    torch.testing.assert_close(zipf_target(usage, 0.5), usage)
    dying, n_tok = dying_allocation(usage, None, 1024, 0.5, 0.1, max_features=100)
    assert dying.numel() == 0
    x = torch.randn(8, 4)
    W = torch.randn(4, 200)
    none = torch.zeros(0, dtype=torch.long)
    assert aux_zipf_loss(x, x, W, torch.zeros(200), W.t(), none, 2, dying, n_tok) is None


def _zipf_sae(**cfg) -> MutualChoiceSAE:
    sae = MutualChoiceSAE(D_IN, MutualChoiceConfig(d_sae=D_SAE, k=K, **cfg),
                          generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        sae.b_enc.copy_(0.2 * torch.randn(D_SAE, generator=torch.Generator().manual_seed(8)))
    return sae


def test_aux_zipf_equals_auxk_when_only_dead_latents_fall_short():
    """A target flat over the dead latents (alive ones on the law): aux_zipf_loss is AuxK."""
    sae = _zipf_sae()
    x = varied_data(BATCH)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[torch.randperm(D_SAE, generator=torch.Generator().manual_seed(9))[:40]] = True
    usage = 0.3 * torch.arange(1, D_SAE + 1).float() ** -0.8
    usage[dead] = 0.0
    usage[~dead] = 0.3 * torch.arange(1, int((~dead).sum()) + 1).float() ** -0.8
    dying, n_tok = dying_allocation(usage, dead, BATCH, 0.5, 0.1, max_features=100)
    assert dying.numel() == 0  # zero usage, but dead: AuxK's job
    x_c = x - sae.b_dec
    e = torch.randn(BATCH, D_IN, generator=torch.Generator().manual_seed(10))
    ours = aux_zipf_loss(x_c, e, sae.W_enc, sae.b_enc, sae.W_dec, dead.nonzero().squeeze(1),
                         sae.k_aux, dying, n_tok)
    auxk = sae._auxk(x_c, e, dead)
    assert ours is not None and torch.equal(ours, auxk)
    # and through the SAE's own loss, with the usage buffer set to that law
    sae.eval()
    with torch.no_grad():
        sae.usage.copy_(usage)
    parts = sae.loss(x, SimpleNamespace(dead_mask=dead)).parts
    topk_twin = BatchTopKSAE(D_IN, BatchTopKConfig(d_sae=D_SAE, k=K)).eval()
    topk_twin.load_state_dict({k: v for k, v in sae.state_dict().items()
                               if k in topk_twin.state_dict()})
    twin = topk_twin.loss(x, SimpleNamespace(dead_mask=dead)).parts
    assert torch.equal(parts["aux_zipf"], twin["auxk"])


def test_dead_and_dying_latents_never_get_a_zero_allocation():
    rank = torch.arange(1, 201).float()
    usage = 0.3 * rank**-0.8
    target = usage.clone()
    usage[-20:] *= 0.05  # dying: 20x below the fitted law, some near the tail (~1e-4 · B < 1)
    usage[-5:] = 0.0  # silent, not yet past the dead window: dying too
    dying, n_tok = dying_allocation(usage, None, 1024, 0.5, 0.1, max_features=100)
    assert set(dying.tolist()) == set(range(180, 200))
    assert int(n_tok.min()) >= 1
    expect = ((target - usage) * 1024).ceil().long()[dying]
    assert torch.equal(n_tok, expect)
    # A dead mask takes latents out of the dying group (AuxK covers them on every token).
    dead = torch.zeros(200, dtype=torch.bool)
    dead[-5:] = True
    d2, _ = dying_allocation(usage, dead, 1024, 0.5, 0.1, max_features=100)
    assert set(d2.tolist()) == set(range(180, 195))
    three, n3 = dying_allocation(usage, None, 1024, 0.5, 0.1, max_features=3)
    assert set(three.tolist()) <= set(range(195, 200))  # the furthest below the law first


def test_healthy_latents_get_no_aux_loss():
    """Scatter around the law (the old rule sent half the head to aux every step): off."""
    g = torch.Generator().manual_seed(0)
    noise = torch.exp(0.3 * torch.randn(4608, generator=g))
    usage = 0.3 * torch.arange(1, 4609).float() ** -0.8 * noise
    dying, _ = dying_allocation(usage, None, 4096, 0.5, 0.1, max_features=288)
    assert dying.numel() == 0


def test_aux_zipf_loss_pulls_an_under_used_latent_towards_the_residual():
    # Latent 1 is under-used; its decoder row is the residual's direction but its codes are too
    # small, so raising its pre-activation lowers the loss. Latent 0 gets no allocation.
    W_dec = torch.eye(2, 4)
    W_enc = torch.eye(4, 2).requires_grad_()
    b_enc = torch.zeros(2, requires_grad=True)
    x_c = torch.tensor([[0.0, 0.5, 0.0, 0.0], [0.0, 0.2, 1.0, 0.0], [3.0, -1.0, 0.0, 0.0]])
    e = torch.tensor([[0.0, 2.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    none = torch.zeros(0, dtype=torch.long)
    loss = aux_zipf_loss(x_c, e, W_enc, b_enc, W_dec, none, 2, torch.tensor([1]),
                         torch.tensor([2]))
    # Latent 1 takes its 2 best tokens (0 and 1): ê = [0.5, 0.2] along e_1.
    expected = ((2 - 0.5) ** 2 + (1 - 0.2) ** 2 + 1.0) / (4 + 1 + 1)
    assert float(loss.detach()) == pytest.approx(expected)
    loss.backward()
    assert b_enc.grad[1] < 0 and b_enc.grad[0] == 0


def test_csr_kernels_match_dense_autograd():
    g = torch.Generator().manual_seed(0)
    n_tok, d_in, d_sae = 6, 5, 7
    x_c = torch.randn(n_tok, d_in, generator=g)
    keep = torch.rand(n_tok, d_sae, generator=g) < 0.4
    keep[2] = False  # a token with no latent at all
    W_enc = torch.randn(d_sae, d_in, generator=g).t().requires_grad_()  # column-major, as ours
    b_enc = torch.randn(d_sae, generator=g).requires_grad_()
    W_dec = torch.randn(d_sae, d_in, generator=g).requires_grad_()
    pre = x_c @ W_enc + b_enc
    dense = torch.where(keep, pre, 0.0) @ W_dec
    tok, feat = keep.nonzero().unbind(1)
    counts = torch.bincount(tok, minlength=n_tok)
    offsets = torch.cumsum(counts, 0) - counts
    vals = selected_pre(x_c, W_enc, b_enc, feat, pre.detach()[tok, feat], offsets)
    sparse = decode_rows(feat, vals, W_dec, offsets)
    torch.testing.assert_close(sparse, dense)
    grads = []
    for out in (dense, sparse):
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        grads.append(torch.autograd.grad((out * w).sum(), (W_enc, b_enc, W_dec)))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def _randomised(name: str) -> torch.nn.Module:
    config, model = ARCHS[name]
    sae = model(D_IN, config(d_sae=D_SAE, k=K), generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        sae.b_enc.copy_(0.3 * torch.randn(D_SAE, generator=g))
        sae.b_dec.copy_(torch.randn(D_IN, generator=g))
        sae.threshold.copy_(torch.rand(sae.threshold.shape, generator=g) + 0.5)
    return sae.eval()


@pytest.mark.parametrize("name", list(ARCHS))
def test_export_loads_in_saelens_and_ours(tmp_path, name):
    sae, scale = _randomised(name), 2.5
    save_sae(tmp_path, sae.export_saelens(scale), d_in=D_IN, d_sae=D_SAE, meta={}, run={})
    theirs = SAE.load_from_disk(str(tmp_path))
    loaded = load_sae(tmp_path)
    x = 3 * torch.randn(64, D_IN, generator=torch.Generator().manual_seed(5)) + 1
    with torch.no_grad():
        codes = sae.encode(x * scale) / scale  # trained on x·scale; exported in raw units
        assert (codes > 0).any() and (codes == 0).any()
        torch.testing.assert_close(theirs.encode(x), codes, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loaded.encode(x), codes, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs.decode(codes), sae.decode(codes * scale) / scale,
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loaded(x), theirs(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(ARCHS))
def test_state_dict_carries_the_calibration(name):
    sae = _randomised(name).train()
    x = torch.randn(BATCH, D_IN, generator=torch.Generator().manual_seed(6))
    for _ in range(3):
        sae.loss(x)  # moves the threshold (and usage) EMAs
    state = sae.state_dict()
    assert "threshold" in state and "threshold_steps" in state
    assert int(state["threshold_steps"]) == 3
    if name != "batchtopk":
        assert "usage" in state and float(state["usage"].sum()) > 0
    config, model = ARCHS[name]
    fresh = model(D_IN, config(d_sae=D_SAE, k=K))
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.encode(x), sae.encode(x))
    a, b = fresh.loss(x), sae.loss(x)
    torch.testing.assert_close(a.total, b.total)
    torch.testing.assert_close(fresh.threshold, sae.threshold)


@pytest.mark.parametrize(
    ("config", "kwargs"),
    [(BatchTopKConfig, {"k": 0}), (MutualChoiceConfig, {"k": 200}),
     (BatchTopKConfig, {"threshold_decay": 1.0}), (MutualChoiceConfig, {"zipf_fit_frac": 0.0}),
     (FeatureChoiceConfig, {"capacity": 0.5}), (FeatureChoiceConfig, {"aux_features": 0}),
     (FeatureChoiceConfig, {"zipf_exponent": -1.0}),
     (MutualChoiceConfig, {"dying_ratio": 2.0})],
)
def test_bad_config_is_one_line(config, kwargs):
    with pytest.raises(UserError) as err:
        config(d_sae=D_SAE, **kwargs)
    assert "\n" not in str(err.value)
