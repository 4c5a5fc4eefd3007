"""The dark_matter eval and the pursuit helpers: known shares, monotone pursuit, bad input."""

from __future__ import annotations

import pytest
import torch
from eval_helpers import TINY_HOOK, MemoryStore, ReluCoder
from torch import nn

from saebench.cli import main
from saebench.evals import EVALS
from saebench.evals.context import EvalContext
from saebench.evals.dark_matter import run
from saebench.evals.dark_matter_config import DarkMatterConfig
from saebench.evals.pursuit import gradient_pursuit, refit
from store.errors import UserError

NO_PURSUIT = DarkMatterConfig(fit_tokens=None, pursuit=(), batch_tokens=1000)


class SplitStore(MemoryStore):
    """An in-memory store with distinct train and held-out rows."""

    def __init__(self, train: torch.Tensor, heldout: torch.Tensor):
        meta = {"model": "none", "hook": TINY_HOOK, "d_in": heldout.shape[1], "ctx": 17}
        super().__init__(meta, heldout)
        self.train = train

    def n_tokens(self, split: str) -> int:
        return int((self.train if split == "train" else self.acts).shape[0])

    def iter_activations(self, split, batch_tokens, limit=None, grads=False):
        rows = self.train if split == "train" else self.acts
        n = rows.shape[0] if limit is None else min(limit, rows.shape[0])
        for lo in range(0, n, batch_tokens):
            yield rows[lo : min(lo + batch_tokens, n)]


class ErrorCoder(nn.Module):
    """An 'SAE' whose error is a chosen function of x: x̂ = x − error(x) (codes are x)."""

    def __init__(self, d_in: int, error):
        super().__init__()
        self.d_in = self.d_sae = d_in
        self.W_dec = nn.Parameter(torch.eye(d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.error = error

    def encode(self, x):
        return x

    def decode(self, codes):
        return codes - self.error(codes)

    def loss(self, x, ctx):
        raise NotImplementedError


def _gauss(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _ctx(sae, store):
    return EvalContext(sae, {"hook_name": TINY_HOOK}, store)


def test_linear_and_nonlinear_shares_are_recovered():
    # e = A x + c (x₁² − 1) u with x ~ N(0, I): the second term has mean 0 and is uncorrelated
    # with every affine function of x (odd moments vanish), so the best affine prediction is
    # A x and E‖e‖² = ‖A‖²_F + 2c². With A = 0.3 I (d = 8) and c = 0.6 both parts are 0.72.
    d, c = 8, 0.6
    u = torch.nn.functional.normalize(torch.ones(d), dim=0)

    def error(x):
        return 0.3 * x + c * (x[:, :1] ** 2 - 1) * u

    train, held = _gauss(6000, d, 0), _gauss(6000, d, 1)
    m = run(_ctx(ErrorCoder(d, error), SplitStore(train, held)), NO_PURSUIT).metrics
    e, h = error(held), c * (held[:, :1] ** 2 - 1) * u
    empirical = 1 - float(h.pow(2).sum() / e.pow(2).sum())  # the share on these very tokens
    assert m["error_linear_share"] == pytest.approx(empirical, abs=0.01)
    assert m["error_linear_share"] == pytest.approx(0.5, abs=0.05)
    assert m["error_nonlinear_share"] == pytest.approx(1 - m["error_linear_share"])
    fvu = float(e.pow(2).sum() / (held - held.mean(0)).pow(2).sum())
    assert m["fvu"] == pytest.approx(fvu, rel=1e-6)
    assert m["x_share/sae"] + m["x_share/linear_error"] + m["x_share/nonlinear_error"] == (
        pytest.approx(1.0))
    assert m["x_share/linear_error"] == pytest.approx(fvu * empirical, abs=0.01 * fvu)
    assert m["n_fit_tokens"] == 6000 and m["n_tokens"] == 6000


def test_error_norm_r2_is_one_when_linear_and_zero_when_even():
    d = 6
    u = torch.nn.functional.normalize(torch.ones(d), dim=0)
    a = torch.linspace(-0.1, 0.1, d)
    train, held = _gauss(4000, d, 2), _gauss(4000, d, 3)
    # ‖(a·x + 5) u‖ = a·x + 5 (positive for |a·x| < 5): exactly affine in x
    linear = ErrorCoder(d, lambda x: (x @ a + 5)[:, None] * u)
    # ‖(x₁² − 1) u‖ = |x₁² − 1| is even in x: no affine map predicts any of it
    even = ErrorCoder(d, lambda x: (x[:, :1] ** 2 - 1) * u)
    hi = run(_ctx(linear, SplitStore(train, held)), NO_PURSUIT).metrics
    lo = run(_ctx(even, SplitStore(train, held)), NO_PURSUIT).metrics
    assert hi["error_norm_r2"] > 0.999 and hi["error_linear_share"] > 0.999
    assert abs(lo["error_norm_r2"]) < 0.02 and lo["error_linear_share"] < 0.02


def _dictionary(d_sae: int, d_in: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(_gauss(d_sae, d_in, seed), dim=1).double()


def _planted(n: int, W_dec: torch.Tensor, k: int, seed: int):
    """x = Σ of k distinct atoms with coefficients in [1, 2], and the codes."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(n, W_dec.shape[0], generator=g).topk(k, dim=1).indices
    codes = torch.zeros(n, W_dec.shape[0], dtype=W_dec.dtype)
    codes.scatter_(1, idx, 1 + torch.rand(n, k, generator=g, dtype=W_dec.dtype))
    return codes @ W_dec, codes


def _sq(x, x_hat):
    return (x - x_hat).pow(2).sum(1)


def test_refit_never_increases_error_and_removes_a_shrinkage_error():
    W = _dictionary(64, 32, 4)
    b = torch.zeros(32, dtype=W.dtype)
    x, codes = _planted(200, W, 4, 5)
    shrunk = 0.5 * codes  # the right support, half the size: a planted error
    before = _sq(x, shrunk @ W)
    after = _sq(x, refit(x, W, b, shrunk, steps=30, nonneg=True))
    assert float(after.sum() / before.sum()) < 1e-3
    # a wrong support: refit cannot reach 0 but never makes any token worse
    wrong = torch.roll(codes, 1, dims=1)
    before, after = _sq(x, wrong @ W), _sq(x, refit(x, W, b, wrong, steps=5, nonneg=True))
    assert bool((after <= before * (1 + 1e-9)).all()) and float(after.sum()) < float(before.sum())


def test_gradient_pursuit_finds_a_planted_sparse_code():
    W = _dictionary(96, 48, 6)
    b = torch.linspace(-1, 1, 48, dtype=W.dtype)  # the decoder bias is taken off first
    x, codes = _planted(100, W, 3, 7)
    k = torch.full((100,), 3)
    x_hat = gradient_pursuit(x + b, W, b, k, steps=30, nonneg=True)
    assert float(_sq(x + b, x_hat).sum() / x.pow(2).sum()) < 1e-4
    # with no atoms allowed, the reconstruction is the bias alone, also beside other tokens
    none = gradient_pursuit(x + b, W, b, torch.zeros(100, dtype=torch.long), 5, True)
    assert torch.allclose(none, b.expand_as(none))
    k[:10] = 0
    mixed = gradient_pursuit(x + b, W, b, k, steps=30, nonneg=True)
    assert torch.allclose(mixed[:10], b.expand(10, -1))
    assert float(_sq(x[10:] + b, mixed[10:]).sum() / x[10:].pow(2).sum()) < 1e-4


def test_eval_pursuit_removes_a_shrinkage_error_and_never_adds_error():
    # x̂ = 0.5 x through ± basis atoms: the error is all shrinkage, which refitting the SAE's
    # own support removes entirely; gradient pursuit (best of its codes and the SAE's) too.
    d = 8
    W_enc = torch.cat([torch.eye(d), -torch.eye(d)], dim=1)
    sae = ReluCoder(0.5 * W_enc, torch.zeros(2 * d), W_enc.T.contiguous(), torch.zeros(d))
    store = SplitStore(_gauss(600, d, 8), _gauss(400, d, 9))
    cfg = DarkMatterConfig(fit_tokens=None, pursuit_fit_tokens=300, pursuit_tokens=200,
                           refine_steps=10, batch_tokens=128)
    m = run(_ctx(sae, store), cfg).metrics
    assert m["fvu"] == pytest.approx(0.25, abs=0.03)
    assert m["error_linear_share"] > 0.999  # e = 0.5 x
    assert m["refit/error_removed"] > 0.999 and m["gp/error_removed"] > 0.999
    assert m["refit/fvu"] < 1e-3 and 0 <= m["gp/chosen_frac"] <= 1
    assert m["pursuit/n_fit_tokens"] == 300 and m["pursuit/n_tokens"] == 200


def test_registered_and_bad_input_is_one_line(capsys, tmp_path):
    assert EVALS["dark_matter"].config is DarkMatterConfig
    sae = ReluCoder(torch.eye(4), torch.zeros(4), torch.eye(4), torch.zeros(4))
    with pytest.raises(UserError, match="fit_tokens asks for 50 train tokens"):
        run(_ctx(sae, SplitStore(_gauss(10, 4, 0), _gauss(10, 4, 1))),
            DarkMatterConfig(fit_tokens=50))
    with pytest.raises(UserError, match="holds 0 train tokens"):
        run(_ctx(sae, SplitStore(_gauss(0, 4, 0), _gauss(10, 4, 1))), DarkMatterConfig())
    for bad in ({"pursuit": ("omp",)}, {"ridge": -1.0}, {"fit_tokens": 1}):
        with pytest.raises(UserError, match="dark_matter"):
            DarkMatterConfig(**bad)
    argv = ["eval", "--sae", str(tmp_path), "--evals", "dark_matter",
            "--dark-matter.pursuit", "omp"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown pursuit 'omp'" in err[0]
    assert not (tmp_path / "evals").exists()


def test_rows_are_spread_over_the_split_not_taken_from_its_start():
    from saebench.evals.dark_matter import _every, _spread

    rows = torch.arange(100, dtype=torch.float32)[:, None].repeat(1, 4)
    ctx = _ctx(ReluCoder(torch.eye(4), torch.zeros(4), torch.eye(4), torch.zeros(4)),
               SplitStore(rows, rows))
    got = torch.cat(list(_spread(ctx, "train", 50, read=7)))[:, 0]
    assert len(got) == 50 and bool((got.diff() > 0).all())  # distinct rows, in order
    assert float(got.max()) > 90 and float(got.min()) < 10  # from the whole split
    assert torch.equal(got, torch.cat(list(_spread(ctx, "train", 50, read=13)))[:, 0])
    assert torch.cat(list(_spread(ctx, "train", 100)))[:, 0].tolist() == list(range(100))
    assert _every(4, 4, 8, 2).tolist() == [0]  # sample rows 4..7: only row 4 (every 4th)
