"""Loss effects of the top contexts (saebench/index/loss_effects.py) against a plain
full-logits ablation, and their column in the index's contexts table."""

from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest
import torch
from eval_helpers import TINY_HOOK, ReluCoder

from saebench.index.loss_effects import top_loss_effects

N_SEQ, CTX, D_IN, D_SAE, N = 3, 12, 32, 6, 3
ZERO_ROW = 4  # a latent whose decoder row is zero: ablating it changes nothing
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    from store.models import load_model

    return load_model("random:tiny", "cpu")


def make_sae() -> ReluCoder:
    g = torch.Generator().manual_seed(0)
    W_enc = torch.randn(D_IN, D_SAE, generator=g)
    W_dec = 3.0 * torch.randn(D_SAE, D_IN, generator=g)  # large: visible effects on the loss
    W_dec[ZERO_ROW] = 0.0
    return ReluCoder(W_enc, torch.full((D_SAE,), 0.5), W_dec, torch.zeros(D_IN))


def reference(model, sae, tokens, latent: int) -> torch.Tensor:
    """ΔCE at every position of each row, by hand: full logits, clean vs ablated."""
    def ablate(act, hook):
        out = act.clone()
        a = sae.encode(act[:, 1:])[..., latent]
        out[:, 1:] -= a[..., None] * sae.W_dec[latent]
        return out

    def nll(logits):
        logp = logits.log_softmax(-1)[:, :-1]
        return -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)

    with torch.no_grad():
        clean = nll(model(tokens))
        ablated = nll(model.run_with_hooks(tokens, fwd_hooks=[(TINY_HOOK, ablate)]))
    return ablated - clean  # [seq, ctx - 1]: predictions at positions 0..ctx-2


def test_matches_a_full_logits_ablation(model):
    sae = make_sae()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(100, 5000, (N_SEQ, CTX), generator=g)
    first_seq = 10  # global sequence ids: row i is sequence first_seq + i
    # Top contexts: (latent, slot) -> (sequence row, position); one near each edge of a window.
    picks = {(0, 0): (0, 5), (0, 1): (2, 1), (1, 0): (1, CTX - 1), (ZERO_ROW, 0): (1, 6),
             (5, 0): (2, 7)}
    stats = {"top_act": torch.zeros(D_SAE, 2), "top_loc": torch.full((D_SAE, 2), -1)}
    for (lat, slot), (row, pos) in picks.items():
        stats["top_act"][lat, slot] = 1.0
        stats["top_loc"][lat, slot] = (first_seq + row) * CTX + pos
    out = top_loss_effects(model, sae, TINY_HOOK, tokens, first_seq, stats, N)
    assert out.shape == (D_SAE, 2, 2 * N + 1)
    assert torch.isnan(out[2]).all() and torch.isnan(out[0, :0]).all()  # no contexts: NaN
    for (lat, slot), (row, pos) in picks.items():
        want = reference(model, sae, tokens, lat)[row]
        for i, q in enumerate(range(pos - N, pos + N + 1)):
            got = float(out[lat, slot, i])
            if q < 0 or q >= CTX - 1:  # outside the sequence, or nothing left to predict
                assert math.isnan(got), (lat, q)
            else:
                assert got == pytest.approx(float(want[q]), abs=2e-3), (lat, q)
    assert (out[ZERO_ROW, 0][~torch.isnan(out[ZERO_ROW, 0])] == 0).all()
    assert out[0, 0].float().nan_to_num().abs().max() > 0.05  # the check has teeth


def test_contexts_table_carries_them(tmp_path, model):
    from conftest import tiny_spec

    from saebench.index.build import IndexSettings, build_index
    from store.caching import cache
    from store.reader import open_store

    cache(tiny_spec(n_tokens=1024, n_heldout_tokens=256), tmp_path / "s.duckdb", progress=False)
    store = open_store(tmp_path / "s.duckdb")
    notes = []
    # By default: on, since 6 latents x 2 contexts are cheap (~3e8 FLOP, under SMALL_FLOPS).
    out = build_index(tmp_path / "saes" / "x", store, IndexSettings(context=3, top=2,
                      batch_tokens=256), sae=make_sae(), W_U=None, model=model, progress=False,
                      echo=notes.append)
    c = pq.read_table(out / "contexts.parquet").to_pandas()
    top, iv = c[c.kind == "top"], c[c.kind == "interval"]
    assert len(top) and all(len(r.loss_effects) == len(r.tokens) for r in top.itertuples())
    assert iv.loss_effects.isna().all()  # interval samples: none computed
    assert any("loss effects: the latent ablated" in n for n in notes)
    # The window at the center token: its own prediction moves when the latent goes.
    assert any(abs(r.loss_effects[r.center]) > 0 for r in top.itertuples())


def test_default_is_off_when_costly(model):
    from saebench.index.build import IndexSettings
    from saebench.index.write import loss_effects_on

    # The tiny test workspace's shape: 64 latents x 20 contexts, 4k tokens, d_in 32.
    t = {"top_act": torch.ones(64, 20), "top_loc": torch.arange(64 * 20).view(64, 20)}
    on, why = loss_effects_on(IndexSettings(), t, model, seen=4000, d_in=32, ctx=32)
    assert not on and "--loss-effects" in why
    on, _ = loss_effects_on(IndexSettings(), t, model, seen=10**9, d_in=32, ctx=32)
    assert on  # a fifth of a billion-token index's passes covers it
    assert loss_effects_on(IndexSettings(loss_effects=True), t, model, 4000, 32, 32)[0]
