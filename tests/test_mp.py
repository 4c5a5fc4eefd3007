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
from trainers.mp import MPSAE, MPConfig, _apply_stops, pursue
from trainers.protocol import SparseCoder
from trainers.saelens_format import load_sae, save_sae
from trainers.sparse import decode_rows
from trainers.topk import _fvu

D_IN = 16
pytestmark = pytest.mark.usefixtures("one_thread")


def _sae(d_sae: int = 48, k: int = 6, seed: int = 0, **cfg) -> MPSAE:
    g = torch.Generator().manual_seed(seed)
    cfg.setdefault("select_bf16", False)  # exact MP; the bf16 picks have their own test
    cfg.setdefault("decoder_bias", True)  # a nonzero b_dec exercises the centring
    cfg.setdefault("stop_on_duplicate_support", False)  # T full steps, as naive_mp takes
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
    assert isinstance(back, MPSAE) and back.cfg.stop_on_duplicate_support is False
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
    (out,) = train_saes(InMemorySource(x), [MPConfig(d_sae=48, k=3, decoder_bias=True)],
                        [tmp_path / "mp"], meta, train)
    curves = pq.read_table(out / "curves.parquet").to_pylist()
    assert curves[-1]["fvu"] < 0.7 * curves[0]["fvu"]
    assert 0 < curves[-1]["l0"] <= 3
    sae = load_sae(out)
    with torch.no_grad():
        assert _fvu(x, sae(x)) < 0.5


def test_defaults_are_the_released_code():
    """Costa et al.'s released MP-SAE: stop on an unchanged support, no decoder bias."""
    cfg = MPConfig()
    assert cfg.stop_on_duplicate_support and not cfg.decoder_bias and cfg.cap_steps
    sae = MPSAE(D_IN, MPConfig(d_sae=48, k=4))
    assert "b_dec" not in dict(sae.named_parameters()) and float(sae.b_dec.abs().sum()) == 0
    with pytest.raises(UserError, match="stopping rule"):
        MPConfig(cap_steps=False, stop_on_duplicate_support=False)


def _two_atom_sae() -> tuple[MPSAE, torch.Tensor]:
    """Two atoms 120° apart and x in their cone: MP picks one, the other, then the first again
    (the second step's residual still leans on the first atom, as the angle is obtuse)."""
    sae = _sae(d_sae=8, k=8, stop_on_duplicate_support=True, decoder_bias=False)
    W = torch.eye(8, D_IN)
    W[1] = -0.5 * W[0] + (0.75**0.5) * W[1]
    W[2:] = -W[2:]  # the other atoms anti-correlate with x: never picked
    with torch.no_grad():
        sae.W_dec.copy_(W)
        sae.b_dec.zero_()
    return sae, (1.0 * W[0] + 0.8 * W[1])[None]


def test_stops_on_a_repick_and_matches_saelens():
    sae, x = _two_atom_sae()
    idx, vals, _ = pursue(x, sae.W_dec.detach(), None, sae.cfg)
    assert idx[0, :3].tolist() == [0, 1, 0] and float(vals[0, 2]) > 0  # the re-pick is kept
    assert float(vals[0, 3:].abs().sum()) == 0  # ... and ends the pursuit
    theirs = _encode_matching_pursuit(x, sae.W_dec, 0.0, 8, True)
    assert torch.allclose(sae.encode(x), theirs, atol=1e-6)
    free = MPSAE(D_IN, MPConfig(d_sae=8, k=8, stop_on_duplicate_support=False))
    free.load_state_dict(sae.state_dict())
    assert free.encode(x)[0, 0] > sae.encode(x)[0, 0]  # without the rule it goes on


@pytest.mark.parametrize(("dup", "threshold"), [(True, 0.0), (False, 6.0), (True, 6.0)])
def test_post_hoc_stops_equal_the_sequential_rules(dup, threshold):
    """The bf16 training path runs all T steps and truncates; that equals stopping in the loop."""
    x = _x(300)
    stopping = _sae(d_sae=24, k=12, stop_on_duplicate_support=dup, residual_threshold=threshold)
    free = _sae(d_sae=24, k=12)  # same seed: same atoms and b_dec
    x_c = x - free.b_dec.detach()
    W = free.W_dec.detach()
    idx, vals, _ = pursue(x_c, W, None, free.cfg)
    _apply_stops(x_c, idx, vals, stopping.cfg)
    ref_idx, ref_vals, _ = pursue(x_c, W, None, stopping.cfg)
    assert (ref_vals == 0).any()  # some token did stop
    live = ref_vals > 0
    assert torch.equal(vals > 0, live) and torch.equal(idx[live], ref_idx[live])
    assert torch.allclose(vals, ref_vals, atol=1e-5)


def test_bf16_training_path_applies_the_stops():
    from trainers.precision import fast_bf16

    if not fast_bf16(torch.device("cpu")):
        pytest.skip("this CPU has no native bf16: training picks stay exact")
    sae = _sae(d_sae=24, k=12, select_bf16=True, stop_on_duplicate_support=True)
    idx, vals, _ = pursue((_x(300) - sae.b_dec).detach(), sae.W_dec.detach(), sae.gram(300, True),
                          sae.cfg, low_precision=True)
    # After a token's first repeated atom, nothing: the support never changes after a stop.
    for row_i, row_v in zip(idx.tolist(), vals.tolist(), strict=True):
        seen: set[int] = set()
        for i, v in zip(row_i, row_v, strict=True):
            if not v:
                break
            if i in seen:
                assert all(w == 0 for w in row_v[row_i.index(i, len(seen)) + 1:])
                break
            seen.add(i)
    assert (vals == 0).any() and (vals > 0).sum(1).float().mean() < 12


def test_uncapped_pursuit_runs_past_k_and_exports_exactly(tmp_path):
    sae = _sae(d_sae=48, k=4, residual_threshold=2.0, cap_steps=False,
               stop_on_duplicate_support=True)
    x = _x(100)
    with torch.no_grad():
        codes = sae.encode(x)
    assert (codes > 0).sum(1).max() > 4  # more atoms than the T of training
    scale = 2.0
    folder = _folder(tmp_path, sae, scale)
    theirs = SAE.load_from_disk(str(folder))
    assert theirs.cfg.max_iterations == D_IN
    with torch.no_grad():
        assert torch.allclose(theirs.encode(x / scale), codes / scale, atol=1e-5)
        assert torch.allclose(load_sae(folder).encode(x / scale), codes / scale, atol=1e-5)


def test_no_bias_training_keeps_b_dec_at_zero_and_loads_in_saelens(tmp_path):
    x = _x(2048)
    train = TrainConfig(tokens=10 * 128, batch_size=128, log_every=5, progress=False)
    meta = {"model": "synthetic", "hook": "blocks.0.hook_resid_post", "d_in": D_IN}
    (out,) = train_saes(InMemorySource(x), [MPConfig(d_sae=48, k=3)], [tmp_path / "mp"], meta,
                        train)
    theirs = SAE.load_from_disk(str(out))
    assert float(theirs.b_dec.abs().sum()) == 0 and theirs.cfg.stop_on_duplicate_support
    with torch.no_grad():
        assert torch.allclose(theirs.encode(x[:64]), load_sae(out).encode(x[:64]), atol=1e-5)
