"""The feature index on data with known answers, its resumability, and the tiny workspace."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from eval_helpers import TINY_HOOK, ReluCoder

from saebench.index import schema
from saebench.index.build import IndexSettings, build_index
from store.errors import UserError

VOCAB, CTX, N_SEQ, CHUNK_SEQS = 24, 16, 64, 16
DEAD, DUPLICATE, TWIN = 0, 22, 23  # token 0 never occurs; 22 copies 5's decoder; 23 rides on 3


class FakeStore:
    """The reading side of a store: x = one-hot(token) · pos/ctx, stored as fp16 words."""

    def __init__(self, tokens: torch.Tensor):
        self.ctx, self.d_in, self.dtype = CTX, VOCAB, "float16"
        self.meta = {"hook": TINY_HOOK, "d_in": VOCAB, "created_at": "synthetic"}
        self.tokens = tokens
        scale = torch.arange(CTX, dtype=torch.float32)[None, :, None] / CTX
        x = torch.nn.functional.one_hot(tokens, VOCAB).float() * scale
        self.words = x.half().view(torch.int16).numpy().reshape(-1, VOCAB)
        self.chunks = [
            SimpleNamespace(split="train", first_seq=s, n_seq=CHUNK_SEQS)
            for s in range(0, N_SEQ, CHUNK_SEQS)
        ]

    def split_chunks(self, split: str) -> list:
        return self.chunks if split == "train" else []

    def chunk_words(self, chunk) -> np.ndarray:
        return self.words[chunk.first_seq * CTX : (chunk.first_seq + chunk.n_seq) * CTX]

    def token_windows(self, split: str) -> torch.Tensor:
        return self.tokens


def make_store() -> FakeStore:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(2, VOCAB, (N_SEQ, CTX), generator=g)
    tokens[:, 0] = 1  # BOS
    return FakeStore(tokens)


def make_sae() -> ReluCoder:
    """Latent i < 22 fires only on token i (activation pos/ctx); 22 is dead, 23 fires with 3."""
    d_sae = VOCAB
    W_enc = torch.eye(VOCAB)[:, :d_sae].clone()
    W_enc[:, DUPLICATE] = 0.0
    W_enc[:, TWIN] = 0.5 * torch.eye(VOCAB)[:, 3]
    b_enc = torch.zeros(d_sae)
    b_enc[DUPLICATE] = -1.0
    W_dec = torch.randn(d_sae, VOCAB, generator=torch.Generator().manual_seed(1))
    W_dec[DUPLICATE] = W_dec[5]
    return ReluCoder(W_enc, b_enc, W_dec, torch.zeros(VOCAB))


W_U = torch.randn(VOCAB, 40, generator=torch.Generator().manual_seed(2))


def build(sae_dir: Path, store=None, **kwargs) -> Path:
    settings = IndexSettings(context=4, top=5, batch_tokens=64)
    return build_index(sae_dir, store or make_store(), settings, sae=make_sae(), W_U=W_U,
                       progress=False, echo=kwargs.pop("echo", lambda _: None), **kwargs)


def read(index_dir: Path, name: str):
    return pq.read_table(index_dir / name).to_pandas()


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("idx") / "saes" / "syn")


def test_features_counts_and_dead(index_dir):
    f = read(index_dir, schema.FEATURES_FILE).set_index("latent")
    tokens = make_store().tokens[:, 1:]
    assert (f.tokens_seen == tokens.numel()).all()
    for i in range(2, 22):
        assert f.fires[i] == int((tokens == i).sum())
    assert f.fires[TWIN] == f.fires[3]
    assert np.allclose(f.density, f.fires / tokens.numel())
    assert f.dead[DEAD] and f.dead[DUPLICATE] and not f.dead[5]
    assert len(f.hist_counts[DEAD]) == 0 and np.isnan(f.mean_act[DEAD])
    assert all(sum(f.hist_counts[i]) == f.fires[i] for i in range(2, 22))
    assert f.max_act[5] == pytest.approx((CTX - 1) / CTX, abs=1e-3)


def test_top_tokens_summarise_the_top_contexts(index_dir):
    f = read(index_dir, schema.FEATURES_FILE).set_index("latent")
    for i in range(2, 22):
        assert list(f.top_tokens[i]) == [i]  # latent i fires on token i alone
    assert list(f.top_tokens[TWIN]) == [3] and len(f.top_tokens[DEAD]) == 0


def test_top_token_ids_rank_by_count_then_activation():
    from saebench.index.tables import top_token_ids

    tokens = torch.tensor([[0, 5, 6, 7, 5, 6, 5, 8]])  # one window of 8
    stats = {"top_loc": torch.tensor([[2, 1, 3, 4, 5, 6, -1], [7, 3, -1, -1, -1, -1, -1]]),
             "top_act": torch.tensor([[9.0, 8, 7, 6, 5, 4, 0], [2, 1, 0, 0, 0, 0, 0]])}
    got = top_token_ids(stats, tokens, first_seq=0, n=3, block=1)
    # latent 0 sits on 6 5 7 5 6 5: 5 thrice, 6 twice, 7 once; latent 1 on 8 then 7 (a tie)
    assert got.tolist() == [[5, 6, 7], [8, 7, -1]]


def test_top_contexts_centre_on_their_token(index_dir):
    c = read(index_dir, schema.CONTEXTS_FILE)
    top = c[c.kind == "top"]
    assert set(top.latent) == set(range(2, 22)) | {TWIN}
    for row in top.itertuples():
        token = 3 if row.latent == TWIN else row.latent
        assert row.tokens[row.center] == token
        assert row.acts[row.center] == pytest.approx(row.act, abs=1e-3)
        assert len(row.tokens) == len(row.acts) <= 2 * 4 + 1
    ranks = top.groupby("latent").act.apply(lambda a: list(a) == sorted(a, reverse=True))
    assert ranks.all() and (top.bucket == -1).all()


def test_interval_samples_lie_in_their_buckets(index_dir):
    f = read(index_dir, schema.FEATURES_FILE).set_index("latent")
    c = read(index_dir, schema.CONTEXTS_FILE)
    iv = c[c.kind == "interval"]
    assert len(iv) and (iv.groupby(["latent", "bucket"]).size() <= schema.PER_BUCKET).all()
    top = f.max_act[iv.latent].to_numpy()
    assert (iv.act.to_numpy() > iv.bucket.to_numpy() / 10 * top - 1e-6).all()
    assert (iv.act.to_numpy() <= (iv.bucket.to_numpy() + 1) / 10 * top + 1e-6).all()
    keys = list(zip(c.latent, c.kind, c.bucket, c["rank"], strict=True))
    assert keys == sorted(keys)


def test_neighbours_and_logit_lens(index_dir):
    n = read(index_dir, schema.NEIGHBOURS_FILE)
    first = n[n["rank"] == 0].set_index(["kind", "latent"])
    assert first.other["decoder", 5] == DUPLICATE and first.other["decoder", DUPLICATE] == 5
    assert first.value["decoder", 5] == pytest.approx(1.0, abs=1e-5)
    assert first.other["coactivation", TWIN] == 3 and first.other["coactivation", 3] == TWIN
    assert first.value["coactivation", 3] == pytest.approx(1.0, abs=1e-4)
    lg = read(index_dir, schema.LOGITS_FILE)
    effects = make_sae().W_dec.detach() @ W_U
    row = lg[(lg.latent == 7) & (lg.kind == "top") & (lg["rank"] == 0)]
    assert int(row.token_id.iloc[0]) == int(effects[7].argmax())
    row = lg[(lg.latent == 7) & (lg.kind == "bottom") & (lg["rank"] == 0)]
    assert int(row.token_id.iloc[0]) == int(effects[7].argmin())


def _interrupt_after(k: int):
    calls = []

    def on_chunk(pass_no: int, chunk: int) -> None:
        calls.append((pass_no, chunk))
        if len(calls) == k:
            raise KeyboardInterrupt

    return on_chunk


@pytest.mark.parametrize("k", [2, 6])  # stop in pass 1, then in pass 2
def test_resume_equals_uninterrupted(tmp_path, index_dir, k):
    sae_dir = tmp_path / "saes" / "syn"
    with pytest.raises(KeyboardInterrupt):
        build(sae_dir, on_chunk=_interrupt_after(k))
    assert (sae_dir / "index" / schema.STATE_FILE).exists()
    assert not (sae_dir / "index" / schema.DONE_FILE).exists()
    said = []
    build(sae_dir, echo=said.append)
    assert any("resuming" in s for s in said)
    assert not (sae_dir / "index" / schema.STATE_FILE).exists()
    for name in (schema.FEATURES_FILE, schema.CONTEXTS_FILE, schema.NEIGHBOURS_FILE):
        assert pq.read_table(sae_dir / "index" / name).equals(pq.read_table(index_dir / name))


def test_completed_rerun_is_a_no_op(index_dir):
    before = (index_dir / schema.CONTEXTS_FILE).stat().st_mtime_ns
    said = []
    build(index_dir.parent, echo=said.append)
    assert any("nothing to do" in s for s in said)
    assert (index_dir / schema.CONTEXTS_FILE).stat().st_mtime_ns == before


def test_mismatched_d_in_fails_without_files(tmp_path):
    store = make_store()
    store.d_in = VOCAB + 1
    with pytest.raises(UserError, match="d_in"):
        build(tmp_path / "saes" / "bad", store=store)
    assert not (tmp_path / "saes" / "bad" / "index").exists()


def test_tiny_workspace_index_through_the_catalog(tiny_workspace):
    from store.catalog import query

    n = query(tiny_workspace, "SELECT count(*) AS n FROM contexts WHERE latent = ?", [0])
    assert n["n"][0].as_py() > 0
    f = query(tiny_workspace, "SELECT count(*) AS n, sum(dead::INT) AS d FROM features")
    assert f["n"][0].as_py() == 64
    v = query(tiny_workspace, "SELECT count(*) AS n FROM vocab")
    assert v["n"][0].as_py() > 0


def test_cli_rerun_is_a_no_op(tiny_workspace, capsys):
    from saebench.commands.index import Args, main

    main(Args(sae=tiny_workspace / "saes" / "tiny-topk", device="cpu", batch_tokens=1024))
    assert "nothing to do" in capsys.readouterr().out
