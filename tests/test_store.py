"""The activation store: contents, SQL access, gradients and reading back."""

from __future__ import annotations

import duckdb
import numpy as np
import torch
from conftest import TINY_HOOK

from store.caching import forward
from store.models import load_model
from store.reader import open_store


def test_store_holds_what_the_model_computes(tiny_store):
    s = open_store(tiny_store)
    assert s.meta["status"] == "complete" and s.meta["bos_policy"] == "bos_per_window"
    windows = s.token_windows("train")
    assert windows.shape[1] == 32 and (windows[:, 0] == s.meta["bos_token_id"]).all()
    model = load_model("random:tiny")
    acts, _ = forward(model, TINY_HOOK, windows[:16], with_grads=False)
    stored = s.read_chunk(s.split_chunks("train")[0], drop_bos=False).view(16, 32, -1)
    # Within one fp16 step: the cache ran the model in other batch shapes, and with the
    # copy-free weight layout a matmul's last float32 bit can depend on the shape, which now and
    # then rounds an element to the neighbouring fp16 value.
    torch.testing.assert_close(stored.float(), acts.half().float(), rtol=1e-3, atol=1e-3)


def test_sql_returns_the_vector_and_token(tiny_store):
    s = open_store(tiny_store)
    expect = s.read_chunk(s.chunks[0], drop_bos=False).view(-1, 32, s.d_in)[3, 7].float()
    with duckdb.connect(str(tiny_store), read_only=True) as con:
        (act,) = con.execute("SELECT act FROM activations WHERE seq = 3 AND pos = 7").fetchone()
        tok = con.execute("SELECT token_id, split FROM tokens WHERE seq = 3 AND pos = 7").fetchone()
        n = con.execute("SELECT count(*) FROM activations").fetchone()[0]
    assert np.array_equal(np.array(act, dtype=np.float32), expect.numpy())
    assert tok == (int(s.token_windows("train")[3, 7]), "train")
    assert n == sum(c.n_tokens for c in s.chunks)


def test_gradients_match_autograd(tiny_store):
    s = open_store(tiny_store)
    windows = s.token_windows("train")[:2]
    model = load_model("random:tiny")
    x = {}

    def grab(act, hook):
        x["a"] = act.detach().requires_grad_(True)
        return x["a"]

    loss = model.run_with_hooks(
        windows, fwd_hooks=[(TINY_HOOK, grab)], return_type="loss", loss_per_token=True
    )
    loss.sum().backward()
    stored = s.read_chunk(s.chunks[0], grads=True, drop_bos=False).view(-1, 32, s.d_in)[:2]
    torch.testing.assert_close(stored.float(), x["a"].grad.bfloat16().float())
    assert stored[:, -1].abs().sum() == 0  # the last position predicts nothing


def test_splits_are_disjoint_and_counted(tiny_store):
    s = open_store(tiny_store)
    assert s.meta["n_tokens"] == {"train": 4096, "heldout": 1024}
    assert s.n_tokens("train") == 4096 - 4096 // 32
    train = {tuple(w) for w in s.token_windows("train").tolist()}
    held = {tuple(w) for w in s.token_windows("heldout").tolist()}
    assert not train & held


def test_norm_stats_match_the_data(tiny_store):
    s = open_store(tiny_store)
    x = torch.cat([s.read_chunk(c) for c in s.split_chunks("train")]).float()
    # Stats are computed before fp16 rounding, hence the loose tolerance.
    assert abs(s.meta["norm"]["mean_norm"] - float(x.norm(dim=-1).mean())) < 1e-2
    assert np.allclose(s.meta["norm"]["mean"], x.mean(0).numpy(), atol=1e-2)
