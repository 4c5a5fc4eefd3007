"""Attention-output SAEs: head shares of a planted decoder, exact DFA on a tiny random model,
and the feature page's head-attribution pane for a hook_z SAE."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from saebench.attn import hook_z_layer
from saebench.attn.dfa import direct_feature_attribution
from saebench.attn.heads import head_shares
from store.errors import UserError


def test_head_shares_match_a_planted_decoder():
    # Latent 0 writes through head 2 only; latent 1 through heads 0 and 3 with norms 1 and
    # 2 (squared: 1/5 and 4/5); latent 2 is a zero row.
    n_heads, d_head = 4, 3
    W_dec = torch.zeros(3, n_heads * d_head)
    W_dec[0, 2 * d_head : 3 * d_head] = torch.tensor([0.6, 0.0, 0.8])
    W_dec[1, 0] = 1.0
    W_dec[1, 3 * d_head + 1] = -2.0
    shares = head_shares(W_dec, n_heads)
    assert torch.allclose(shares[0], torch.tensor([0.0, 0.0, 1.0, 0.0]))
    assert torch.allclose(shares[1], torch.tensor([0.2, 0.0, 0.0, 0.8]))
    assert torch.equal(shares[2], torch.zeros(n_heads))
    rows = head_shares(torch.randn(50, n_heads * d_head), n_heads)
    assert torch.allclose(rows.sum(1), torch.ones(50))
    with pytest.raises(UserError, match="does not split"):
        head_shares(W_dec, 5)
    assert hook_z_layer("blocks.7.attn.hook_z") == 7
    assert hook_z_layer("blocks.7.hook_resid_post") is None


def test_index_writes_head_attribution_for_hook_z_stores_only(tmp_path):
    import pyarrow.parquet as pq

    from saebench.index.head_table import add_head_attribution, backfill_head_attribution

    model = SimpleNamespace(cfg=SimpleNamespace(n_heads=4, d_head=3))
    W_dec = torch.randn(5, 12, generator=torch.Generator().manual_seed(0))
    sae, folder = SimpleNamespace(W_dec=W_dec), tmp_path / "saes" / "z"
    store = SimpleNamespace(meta={"hook": "blocks.1.attn.hook_z", "model": "random:tiny"})
    assert "4 heads" in add_head_attribution(folder, sae, store, model, "cpu")
    rows = pq.read_table(folder / "index" / "head_attribution.parquet").to_pylist()
    assert [(r["latent"], r["head"]) for r in rows[:5]] == [(0, 0), (0, 1), (0, 2), (0, 3),
                                                             (1, 0)]
    got = torch.tensor([r["share"] for r in rows]).reshape(5, 4)
    assert torch.allclose(got, head_shares(W_dec, 4)) and rows[0]["sae"] == "z"
    # An index from before the table: filled in without redoing the passes; never rewritten.
    table = folder / "index" / "head_attribution.parquet"
    table.unlink()
    assert "4 heads" in backfill_head_attribution(folder, sae, store, model, "cpu")
    assert table.exists() and backfill_head_attribution(folder, sae, store, model, "cpu") == ""
    resid = SimpleNamespace(meta={"hook": "blocks.1.hook_resid_post"})
    assert add_head_attribution(tmp_path / "r", sae, resid, model, "cpu") == ""
    assert not (tmp_path / "r").exists()
    with pytest.raises(UserError, match="n_heads"):
        add_head_attribution(folder, SimpleNamespace(W_dec=torch.zeros(2, 10)), store, model,
                             "cpu")


def test_dfa_sums_to_the_pre_activation_minus_the_bias(one_thread):
    from store.models import load_model
    from trainers.topk import TopKConfig, TopKSAE

    model = load_model("random:tiny")  # grouped-query: 4 query heads share 2 value heads
    d_in = model.cfg.n_heads * model.cfg.d_head
    sae = TopKSAE(d_in, TopKConfig(d_sae=16, k=4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # biases that matter, so that leaving them out would show
        sae.b_enc.fill_(2.0)
        sae.b_dec.normal_(generator=torch.Generator().manual_seed(2))
    hook, latent = "blocks.1.attn.hook_z", 5
    tokens = torch.randint(0, model.cfg.d_vocab, (3, 12), generator=torch.Generator()
                           .manual_seed(3))
    dest = torch.tensor([11, 4, 0])
    out = direct_feature_attribution(model, sae, hook, tokens, dest, latent)
    # The reference: the SAE's own pre-activation on the hook's activation.
    _, cache = model.run_with_cache(tokens, names_filter=hook, stop_at_layer=2)
    x = cache[hook][torch.arange(3), dest].flatten(1)
    with torch.no_grad():
        pre = sae._pre(x - sae.b_dec)[:, latent]
    bias = float((sae.b_enc[latent] - sae.b_dec @ sae.W_enc[:, latent]).detach())
    assert abs(out.bias - bias) < 1e-5 and abs(bias - 2.0) > 0.1  # b_dec counts too
    assert torch.allclose(out.pre, pre, atol=1e-5)
    assert torch.allclose(out.dfa.sum(1), pre - bias, atol=1e-5)
    # Causal: nothing after the destination contributes; and the terms are not all equal.
    assert out.dfa[1, 5:].abs().max() == 0 and out.dfa[2, 1:].abs().max() == 0
    assert out.dfa[0].std() > 1e-4
    with pytest.raises(UserError, match="hook_z"):
        direct_feature_attribution(model, sae, "blocks.1.hook_resid_post", tokens, dest, 0)


def _attn_workspace(root):
    """test_app's synthetic workspace, its indexed SAE moved to blocks.0.attn.hook_z (the
    tiny model's 4 heads x 8 = its d_in 32) with a head_attribution table."""
    from safetensors.torch import load_file
    from test_app import make_workspace

    from saebench.index.head_table import write_head_attribution
    from store.catalog import refresh

    ws = make_workspace(root)
    folder = ws / "saes" / "synth-a"
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["metadata"]["hook_name"] = "blocks.0.attn.hook_z"
    (folder / "cfg.json").write_text(json.dumps(cfg))
    W_dec = load_file(folder / "sae_weights.safetensors")["W_dec"]
    W_dec[3] = 0.0
    W_dec[3, 8:16] = 1.0  # latent 3 writes through head 1 alone
    write_head_attribution(folder / "index", "synth-a", head_shares(W_dec, 4))
    refresh(ws)
    return ws


def test_feature_page_shows_head_attribution_for_a_hook_z_sae(tmp_path, monkeypatch):
    from streamlit import testing
    from test_app import MAIN

    ws = _attn_workspace(tmp_path / "ws")
    monkeypatch.setenv("SAEBENCH_WORKSPACE", str(ws))
    at = testing.v1.AppTest.from_file(MAIN, default_timeout=20)
    at.session_state["latent"] = 3
    at.switch_page("views/feature.py").run()  # straight to the page: no overview render
    assert not at.exception, [e.value for e in at.exception]
    charts = [c for c in at.get("plotly_chart") if "head_attribution" in c.proto.id
              or "Head" in c.proto.spec]
    assert charts, "no head-attribution chart on the feature page"
    spec = json.loads(charts[0].proto.spec)
    shares = np.array(spec["data"][0]["y"] if "y" in spec["data"][0] else spec["data"][0]["x"])
    assert np.allclose(sorted(shares)[-1], 1.0) and np.isclose(shares.sum(), 1.0)
    assert any("direct feature attribution" in e.label.lower() for e in at.expander)


def test_logit_lens_of_hook_z_goes_through_W_O(one_thread):
    """A hook_z decoder row's direct logit effect is row · W_O · W_U, with W_O's heads stacked
    in hook_z's flattening order (head-major, as the store flattens [head, d_head])."""
    from saebench.index.logit_lens import unembed_for
    from store.models import load_model

    model = load_model("random:tiny")
    n_heads, d_head = model.cfg.n_heads, model.cfg.d_head
    meta = {"hook": "blocks.1.attn.hook_z", "model": "random:tiny"}
    W, note = unembed_for(meta, n_heads * d_head, "cpu")
    assert note is None and W.shape == (n_heads * d_head, model.cfg.d_vocab)
    z = torch.randn(n_heads, d_head)
    via_heads = torch.einsum("hd,hdm->m", z, model.W_O[1].float()) @ model.W_U.float()
    torch.testing.assert_close(z.reshape(-1) @ W, via_heads, rtol=1e-4, atol=1e-4)
    for hook in ("blocks.1.hook_attn_out", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"):
        W, note = unembed_for({**meta, "hook": hook}, model.cfg.d_model, "cpu")
        assert note is None and torch.equal(W, model.W_U.float())
    W, note = unembed_for({**meta, "hook": "blocks.1.mlp.hook_post"}, model.cfg.d_mlp, "cpu")
    assert W is None and "not on the residual stream" in note
