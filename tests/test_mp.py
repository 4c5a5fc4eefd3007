"""Matching-pursuit SAE: the fast Gram-update pursuit equals the explicit residual loop (values
and gradients), residuals shrink, adaptive stopping, SAELens agreement, and a short training."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch
from sae_lens import SAE
from sae_lens.saes.matching_pursuit_sae import _encode_matching_pursuit

from store.errors import UserError
from store.sources import InMemorySource
from trainers.config import TrainConfig
from trainers.loop import train_saes
from trainers.mp import MPSAE, MPConfig, pursue
from trainers.protocol import SparseCoder
from trainers.saelens_format import load_sae, save_sae
from trainers.sparse import decode_rows
from trainers.topk import _fvu

D_IN = 16
pytestmark = pytest.mark.usefixtures("one_thread")


def _sae(d_sae: int = 48, k: int = 6, seed: int = 0, **cfg) -> MPSAE:
    g = torch.Generator().manual_seed(seed)
    cfg.setdefault("select_bf16", False)  # exact MP; the bf16 picks have their own test
    sae = MPSAE(D_IN, MPConfig(d_sae=d_sae, k=k, **cfg), generator=g)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(D_IN, generator=g))
    return sae


def _x(n: int, seed: int = 1) -> torch.Tensor:
    return 3 * torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed)) + 1


def naive_mp(sae: MPSAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook loop (Costa et al. 2025, §3): explicit residual, one dense product a step."""
    W, r = sae.W_dec, x - sae.b_dec
    codes = torch.zeros(x.shape[0], sae.d_sae)
    for _ in range(sae.k):
        with torch.no_grad():
            i = (r @ W.T).relu().argmax(dim=1)
        a = (r * W[i]).sum(dim=1).relu()
        codes = codes.scatter_add(1, i[:, None], a[:, None])
        r = r - a[:, None] * W[i]
    return codes, codes @ W + sae.b_dec


def test_config_errors_are_one_line():
    with pytest.raises(UserError, match="positive"):
        MPConfig(k=0)
    with pytest.raises(UserError, match="residual-threshold"):
        MPConfig(residual_threshold=-1.0)


def test_residual_norm_never_increases():
    sae = _sae(d_sae=40, k=12)
    x = _x(200)
    x_c = x - sae.b_dec.detach()
    idx, vals, _ = pursue(x_c, sae.W_dec.detach(), sae.gram(200), sae.cfg)
    norms = torch.stack([(x_c - decode_rows(idx[:, :t], vals[:, :t], sae.W_dec.detach()))
                         .norm(dim=1) for t in range(1, sae.k + 1)], dim=1)
    norms = torch.cat([x_c.norm(dim=1, keepdim=True), norms], dim=1)
    assert (norms[:, 1:] <= norms[:, :-1] + 1e-5).all()
    assert (norms[:, -1] < 0.8 * norms[:, 0]).all()  # and it does shrink
    assert (idx[:, 1:] == idx[:, :-1]).float().mean() < 0.05  # rarely the same atom twice


# (n_tokens, d_sae): the Gram path across several token chunks, a width that is not a whole
# number of argmax blocks, and the rows-on-the-fly path (d_sae > tokens·k).
@pytest.mark.parametrize(("n", "d_sae"), [(150, 48), (40, 100), (5, 64)])
def test_gram_pursuit_equals_the_explicit_loop(n, d_sae):
    sae = _sae(d_sae=d_sae)
    assert (sae.gram(n) is None) == (d_sae > n * sae.k)
    x = _x(n)
    codes, x_hat = naive_mp(sae, x)
    with torch.no_grad():
        assert torch.allclose(sae.encode(x), codes, atol=1e-5)
        assert torch.allclose(sae(x), x_hat, atol=1e-5)
    # Training loss and its gradients: autograd through the naive unroll vs our backward.
    sae.eval()  # no parallel-gradient removal: compare the true gradients
    params = [sae.W_dec, sae.b_dec]
    out = sae.loss(x)
    ours = torch.autograd.grad(out.total, params)
    ref = torch.autograd.grad(_fvu(x, x_hat), params)
    assert torch.allclose(out.total, _fvu(x, x_hat), atol=1e-6)
    for a, b in zip(ours, ref, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(out.codes.to_dense(), codes, atol=1e-5)


def unrolled_along(sae: MPSAE, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x̂ of MP forced along given picks, written with autograd: a_t = relu(⟨r_t, d_{i_t}⟩)."""
    W, r = sae.W_dec, x - sae.b_dec
    x_hat = torch.zeros_like(x)
    for t in range(idx.shape[1]):
        d = W[idx[:, t]]
        a = (r * d).sum(dim=1).relu()
        r, x_hat = r - a[:, None] * d, x_hat + a[:, None] * d
    return x_hat + sae.b_dec


def test_bf16_picks_are_weak_mp_with_exact_values_and_gradients():
    from trainers.precision import fast_bf16

    if not fast_bf16(torch.device("cpu")):
        pytest.skip("this CPU has no native bf16: training picks stay exact")
    sae, x = _sae(d_sae=64, k=6, select_bf16=True), _x(400)
    sae.eval()
    out = sae.loss(x)
    dense = out.codes.to_dense()
    exact_codes, _ = naive_mp(sae, x)
    same = ((dense > 0) == (exact_codes > 0)).all(dim=1).float().mean()
    assert same > 0.8  # most tokens make exactly MP's picks; the rest differ on near-ties
    # Whatever the picks, values and gradients are those of MP along them.
    picks, _, _ = pursue((x - sae.b_dec).detach(), sae.W_dec.detach(), sae.gram(400, True),
                         sae.cfg, low_precision=True)
    ref = unrolled_along(sae, x, picks)
    params = [sae.W_dec, sae.b_dec]
    ours = torch.autograd.grad(out.total, params)
    theirs = torch.autograd.grad(_fvu(x, ref), params)
    assert torch.allclose(out.total, _fvu(x, ref), atol=1e-6)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("dup", [False, True])
def test_stopping_rules_match_saelens_with_gradients(dup):
    sae = _sae(d_sae=48, k=10, residual_threshold=2.0, stop_on_duplicate_support=dup).eval()
    x = _x(120)
    theirs = _encode_matching_pursuit(x - sae.b_dec, sae.W_dec, 2.0, 10, dup)
    stopped = (theirs > 0).sum(dim=1) < 10
    assert stopped.any() and not stopped.all()  # both branches are exercised
    with torch.no_grad():
        assert torch.allclose(sae.encode(x), theirs, atol=1e-5)
    out = sae.loss(x)
    ref = _fvu(x, theirs @ sae.W_dec + sae.b_dec)
    for a, b in zip(torch.autograd.grad(out.total, [sae.W_dec, sae.b_dec]),
                    torch.autograd.grad(ref, [sae.W_dec, sae.b_dec]), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_adaptive_stopping_on_an_input_that_is_one_atom():
    sae = _sae(d_sae=48, k=8, residual_threshold=1e-3)
    x = sae.b_dec.detach() + 2.5 * sae.W_dec.detach()[7]
    batch = torch.cat([x[None], _x(9)])
    with torch.no_grad():
        alone, together = sae.encode(x[None]), sae.encode(batch)[:1]
    assert alone.count_nonzero() == 1 and alone[0, 7].item() == pytest.approx(2.5, abs=1e-5)
    assert torch.allclose(alone, together, atol=1e-6)  # batch-independent
    assert (sae.encode(batch)[1:] > 0).sum(dim=1).float().mean() > 4  # others go on


def _folder(tmp_path, sae: MPSAE, scale: float):
    save_sae(tmp_path, sae.export_saelens(scale), d_in=D_IN, d_sae=sae.d_sae,
             meta={"model": "m", "hook": "blocks.0.hook_resid_post"}, run={})
    return tmp_path


def test_export_agrees_with_saelens_and_round_trips(tmp_path):
    scale = 2.5  # trained units are raw·scale: the export must fold it
    sae = _sae(d_sae=48, k=10, residual_threshold=3.0)
    folder = _folder(tmp_path, sae, scale)
    theirs, back = SAE.load_from_disk(str(folder)), load_sae(folder)
    assert isinstance(back, MPSAE) and isinstance(back, SparseCoder)
    assert theirs.cfg.stop_on_duplicate_support is False and theirs.cfg.max_iterations == 10
    raw = _x(100) / scale
    with torch.no_grad():
        ours = sae.encode(raw * scale) / scale
        assert ((ours > 0).sum(dim=1) < 10).any()  # the threshold bites somewhere
        assert torch.allclose(theirs.encode(raw), ours, atol=1e-5)
        assert torch.allclose(back.encode(raw), ours, atol=1e-5)
        assert torch.allclose(theirs.decode(ours), back.decode(ours), atol=1e-5)
        assert torch.allclose(theirs(raw), back(raw), atol=1e-5)
        assert torch.allclose(back(raw), sae(raw * scale) / scale, atol=1e-5)


def test_training_reduces_fvu(tmp_path):
    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(32, D_IN, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    sel = torch.rand(4096, 32, generator=g).topk(3, dim=1).indices
    coef = torch.rand(4096, 3, generator=g) + 0.5
    x = torch.zeros(4096, 32).scatter_(1, sel, coef) @ atoms + 2.0
    train = TrainConfig(tokens=60 * 128, batch_size=128, log_every=10, progress=False)
    meta = {"model": "synthetic", "hook": "blocks.0.hook_resid_post", "d_in": D_IN}
    (out,) = train_saes(InMemorySource(x), [MPConfig(d_sae=48, k=3)], [tmp_path / "mp"], meta,
                        train)
    curves = pq.read_table(out / "curves.parquet").to_pylist()
    assert curves[-1]["fvu"] < 0.7 * curves[0]["fvu"]
    assert 0 < curves[-1]["l0"] <= 3
    sae = load_sae(out)
    with torch.no_grad():
        assert _fvu(x, sae(x)) < 0.5
