"""End-to-end SAE training (trainers/e2e_*.py) on a planted tiny model, and its bad input.

The plant: a 2-block model whose blocks are zeroed (identity) and which has no final norm, so
the residual after block 0 is the token's embedding and the logits read it linearly. The
embeddings vary strongly along 8 directions the unembedding ignores, and weakly (±1) along
one direction u that the unembedding reads with a large weight. A local SAE with k = 1 spends
its latent on the high-variance directions (MSE); the output only depends on u, so an e2e SAE
at the same k must learn u, and its spliced KL must come out far below the local SAE's.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch
import tyro

from saebench.commands.train import Args, main
from store.errors import UserError
from store.sources import InMemorySource
from trainers.config import TrainConfig
from trainers.e2e_init import init_from_saved
from trainers.e2e_loop import WindowOrder, train_e2e
from trainers.e2e_loss import downstream_fvu, kl_to_clean, resid_layers
from trainers.loop import train_saes
from trainers.saelens_format import load_sae
from trainers.topk import TopKConfig, TopKSAE

pytestmark = pytest.mark.usefixtures("one_thread")

HOOK = "blocks.0.hook_resid_post"
D, VOCAB, CTX = 16, 64, 8
META = {"model": "planted", "hook": HOOK, "d_in": D, "ctx": CTX}


def planted_model():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, d_model=D, n_heads=2, d_head=8, d_mlp=16,
                                  d_vocab=VOCAB, n_ctx=CTX, act_fn="relu",
                                  normalization_type=None, seed=0)
    model = HookedTransformer(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        loud = 10 * torch.randn(VOCAB, 8, generator=g)  # high variance, unread by W_U
        sign = torch.randint(0, 2, (VOCAB,), generator=g).float() * 2 - 1
        model.W_E[:, :8] = loud
        model.W_E[:, 8] = sign  # the quiet direction u = e_8
        model.W_U[8] = 3 * torch.randn(VOCAB, generator=g)  # the logits read only u
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def windows(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, CTX), generator=g)


def spliced_kl(model, sae, tokens: torch.Tensor) -> float:
    with torch.no_grad():
        resid = model(tokens, stop_at_layer=1)
        x = resid[:, 1:].flatten(0, 1)
        new = torch.cat([resid[:, :1], sae.decode(sae.encode(x)).view_as(resid[:, 1:])], 1)
        return float(kl_to_clean(model(tokens)[:, 1:], model(new, start_at_layer=1)[:, 1:]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A local and an e2e TopK SAE (k = 1) on the planted model, from the same init."""
    root = tmp_path_factory.mktemp("e2e")
    model, tokens = planted_model(), windows(256, 0)
    cfg = TopKConfig(d_sae=8, k=1)
    with torch.no_grad():
        acts = model(tokens, stop_at_layer=1)[:, 1:].flatten(0, 1)
    train = TrainConfig(tokens=4480, batch_size=112, lr=3e-2, warmup_steps=0, progress=False)
    (local,) = train_saes(InMemorySource(acts), [cfg], [root / "local"], META, train)
    e2e_train = TrainConfig(tokens=4480, batch_size=112, lr=3e-2, warmup_steps=0,
                            progress=False, loss="e2e")
    e2e = train_e2e(model, tokens, HOOK, cfg, root / "e2e", META, e2e_train, 1.0)
    return model, load_sae(local), load_sae(e2e), e2e


def test_e2e_loss_decreases(trained):
    rows = pq.read_table(trained[3] / "curves.parquet").to_pylist()
    assert len(rows) == 40
    first = sum(r["kl"] for r in rows[:5]) / 5
    last = sum(r["kl"] for r in rows[-5:]) / 5
    assert last < 0.5 * first


def test_e2e_beats_local_on_spliced_kl_at_equal_l0(trained):
    model, local, e2e, _ = trained
    held = windows(64, 1)
    with torch.no_grad():
        x = model(held, stop_at_layer=1)[:, 1:].flatten(0, 1)
        assert (local.encode(x) > 0).sum(1).float().mean() <= 1
        assert (e2e.encode(x) > 0).sum(1).float().mean() <= 1
    kl_local, kl_e2e = spliced_kl(model, local, held), spliced_kl(model, e2e, held)
    assert kl_e2e < 0.6 * kl_local  # measured 0.23-0.38 over five plants


def test_window_order_is_a_pure_function_of_seed_and_step():
    a, b = WindowOrder(10, 4, seed=3), WindowOrder(10, 4, seed=3)
    assert torch.equal(a.batch(7), b.batch(7))  # b starts mid-run, as after a resume
    epoch0 = torch.cat([a.batch(0), a.batch(1), a.batch(2)[:2]])
    assert sorted(epoch0.tolist()) == list(range(10))


def test_loss_parts_have_known_values():
    logits = torch.randn(2, 3, 5)
    assert float(kl_to_clean(logits, logits)) == pytest.approx(0.0, abs=1e-6)
    a = torch.randn(2, 3, 4)
    assert float(downstream_fvu([a], [a])) == 0.0
    assert float(downstream_fvu([a], [a.mean((0, 1)).expand_as(a)])) == pytest.approx(1.0)
    assert resid_layers("blocks.3.hook_resid_post", 6) == (
        4, ["blocks.4.hook_resid_post", "blocks.5.hook_resid_post"])
    assert resid_layers("blocks.3.hook_resid_pre", 6)[0] == 3


def test_init_copies_a_saved_sae_in_training_units(trained, tmp_path):
    _, local, _, _ = trained
    sae = TopKSAE(D, TopKConfig(d_sae=8, k=1))
    folder = trained[3].parent / "local"
    init_from_saved(sae, folder, scale=2.0)
    assert torch.allclose(sae.W_dec, local.W_dec)
    assert torch.allclose(sae.b_dec, 2.0 * local.b_dec)
    with pytest.raises(UserError, match="no SAE folder"):
        init_from_saved(sae, tmp_path / "missing", 1.0)
    with pytest.raises(UserError, match="W_dec"):
        init_from_saved(TopKSAE(D, TopKConfig(d_sae=16, k=1)), folder, 1.0)


@pytest.mark.parametrize(("argv", "message"), [
    (["--loss", "e2e", "--tokens", "100"], "give --store"),
    (["--loss", "e2e", "--tokens", "100", "--k", "1", "2", "--store", "x.duckdb"],
     "one SAE per run"),
    (["--loss", "e2e+ds", "--tokens", "100", "--store", "missing.duckdb"], "missing.duckdb"),
    (["--tokens", "100", "--store", "x.duckdb", "--init-from", "x"], "end-to-end run"),
])
def test_bad_cli_input_is_one_line(tmp_path, argv, message):
    args = tyro.cli(Args, args=["--out", str(tmp_path / "sae"), *argv])
    with pytest.raises(UserError, match=message) as err:
        main(args)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "sae").exists()


def test_bad_train_input_is_one_line(trained, tmp_path):
    model = trained[0]
    cfg, tokens = TopKConfig(d_sae=8, k=1), windows(4, 0)
    bad = [
        ("blocks.0.hook_mlp_out", TrainConfig(tokens=100, batch_size=7, loss="e2e"),
         "residual-stream hook"),
        (HOOK, TrainConfig(tokens=100, batch_size=7), "needs --loss e2e"),
        (HOOK, TrainConfig(tokens=100, batch_size=70, loss="e2e"), "needs 10 windows"),
        (HOOK, TrainConfig(tokens=3, batch_size=7, loss="e2e"), "less than one step"),
    ]
    for hook, train, message in bad:
        with pytest.raises(UserError, match=message):
            train_e2e(model, tokens, hook, cfg, tmp_path / "sae", META, train, 1.0)
    assert not (tmp_path / "sae").exists()


def test_interrupted_run_resumes_exactly(tmp_path, monkeypatch):
    from trainers import e2e_loop

    model, tokens, cfg = planted_model(), windows(32, 2), TopKConfig(d_sae=8, k=1)
    train = TrainConfig(tokens=560, batch_size=56, lr=1e-2, warmup_steps=0, progress=False,
                        loss="e2e")
    whole = load_sae(train_e2e(model, tokens, HOOK, cfg, tmp_path / "a", META, train, 1.0))
    monkeypatch.setattr(e2e_loop, "CHECKPOINT_SECONDS", -1.0)  # a checkpoint every step
    real, calls = e2e_loop._one_step, []

    def crash_at_step_6(m, run, step, lr):
        calls.append(step)
        if step == 6 and calls.count(6) == 1:
            raise KeyboardInterrupt
        real(m, run, step, lr)

    monkeypatch.setattr(e2e_loop, "_one_step", crash_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        train_e2e(model, tokens, HOOK, cfg, tmp_path / "b", META, train, 1.0)
    assert not (tmp_path / "b" / "cfg.json").exists()
    resumed = load_sae(train_e2e(model, tokens, HOOK, cfg, tmp_path / "b", META, train, 1.0))
    assert calls[:7] == list(range(7)) and calls[7:] == list(range(6, 10))  # resumed at 6
    assert torch.equal(whole.W_dec, resumed.W_dec) and torch.equal(whole.b_enc, resumed.b_enc)


def test_cli_trains_e2e_on_a_store(tiny_store, tmp_path):
    from trainers.saelens_format import read_meta

    out = tmp_path / "e2e"
    main(tyro.cli(Args, args=["--out", str(out), "--store", str(tiny_store), "--loss",
                              "e2e+ds", "--tokens", "62", "--batch-size", "31", "--k", "2",
                              "--width", "16", "--no-progress"]))
    run = read_meta(out)["run"]
    assert run["loss"] == "e2e+ds" and run["steps"] == 2 and run["tokens_trained"] == 62
    assert run["final"]["kl"] > 0 and run["final"]["ds_fvu"] > 0
    assert load_sae(out).W_dec.shape == (16, 32)


def test_cli_trains_e2e_from_the_stream_without_a_store(tmp_path):
    """--model instead of --store: the streaming source's corpus windows, no cache on disk."""
    from trainers.saelens_format import read_meta

    out, stream = tmp_path / "e2e", ["--model", "random:tiny", "--hook",
                                     "blocks.0.hook_resid_post", "--ctx", "32"]
    main(tyro.cli(Args, args=["--out", str(out), *stream, "--loss", "e2e", "--tokens", "62",
                              "--batch-size", "31", "--k", "2", "--width", "16",
                              "--no-progress"]))
    run = read_meta(out)["run"]
    assert run["loss"] == "e2e" and run["steps"] == 2 and run["final"]["kl"] > 0
    assert {p.name for p in tmp_path.glob("*.duckdb")} <= {"catalog.duckdb"}  # no store
    # --init-from: a zero-step run from that SAE keeps its decoder exactly.
    again = tmp_path / "again"
    main(tyro.cli(Args, args=["--out", str(again), *stream, "--loss", "e2e", "--tokens", "62",
                              "--batch-size", "31", "--k", "2", "--width", "16", "--lr", "0",
                              "--init-from", str(out), "--no-progress"]))
    assert torch.allclose(load_sae(again).W_dec, load_sae(out).W_dec, atol=1e-6)
    args = tyro.cli(Args, args=["--out", str(tmp_path / "b"), *stream, "--loss", "e2e",
                                "--tokens", "62", "--cache-to", str(tmp_path / "c.duckdb")])
    with pytest.raises(UserError, match="drop --cache-to"):
        main(args)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c.duckdb").exists()


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "mutual_choice", "feature_choice",
                                  "gsae", "mp"])
def test_every_architecture_trains_end_to_end(arch, tmp_path):
    from trainers.e2e_codes import train_reconstruction
    from trainers.registry import get
    from trainers.topk import _fvu

    spec = get(arch)
    cfg = spec.config(d_sae=8, k=2)
    sae = spec.model(D, cfg, generator=torch.Generator().manual_seed(0))
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(1))
    x_hat, codes = train_reconstruction(sae, x)
    # The same reconstruction the architecture's own (local) loss scores.
    local_fvu = float(sae.loss(x).parts["fvu"])
    assert float(_fvu(x, x_hat.detach())) == pytest.approx(local_fvu, rel=1e-5)
    assert x_hat.requires_grad and codes.shape == (64, 8)
    model, tokens = planted_model(), windows(8, 3)
    train = TrainConfig(tokens=224, batch_size=56, lr=1e-2, warmup_steps=0, progress=False,
                        loss="e2e")
    out = train_e2e(model, tokens, HOOK, cfg, tmp_path / arch, META, train, 1.0)
    assert load_sae(out).W_dec.shape == (8, D)
