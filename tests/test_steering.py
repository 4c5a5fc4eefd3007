"""Steering (saebench.steering): add and clamp on the tiny random model, for every architecture,
through SAEHandle.steer, and the Steer page."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch
from eval_helpers import TINY_HOOK, ReluCoder, model_store, random_windows

from saebench.steer_sampling import paired_generate
from saebench.steering import SteerConfig, SteeringHook, latent_acts, steer
from saebench.steering_inputs import estimate_max_acts, steer_handle
from store.errors import UserError
from trainers.registry import ARCHITECTURES

D_IN, D_SAE, K = 32, 64, 4
PROMPT = "It is a truth universally acknowledged"


@pytest.fixture(scope="module")
def model():
    from store.models import load_model

    torch.set_num_threads(1)
    return load_model("random:tiny")


@pytest.fixture(scope="module")
def prompt_ids(model):
    from store.windows import special_ids

    ids = model.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    return torch.tensor([special_ids(model.tokenizer)[0], *ids])


@pytest.fixture(scope="module")
def windows(model):
    return random_windows(2, 16, 1, model.cfg.d_vocab, seed=5)


def _coder(arch: str):
    spec = ARCHITECTURES[arch]
    return spec.model(D_IN, spec.config(d_sae=D_SAE, k=K),
                      generator=torch.Generator().manual_seed(0)).eval()


def _run(model, sae, prompt_ids, windows, latent=3, strength=0.0, method="add", **kw):
    cfg = SteerConfig((latent,), (strength,), method=method, n_tokens=kw.pop("n", 8), **kw)
    return steer(model, sae, TINY_HOOK, prompt_ids, cfg, [1.0], first_pos=1, windows=windows)


def test_add_strength_zero_is_the_default_generation(model, prompt_ids, windows):
    r = _run(model, _coder("topk"), prompt_ids, windows, strength=0.0, n=12, temperature=1.0)
    assert r.steered.ids == r.default.ids and len(r.default.ids) == 12
    assert r.steered.acts == r.default.acts
    assert r.loss.ce_steered == r.loss.ce_default and r.loss.n_tokens == 2 * 14


def _planted(model) -> tuple[ReluCoder, int]:
    """A ReLU SAE whose latent 0 fires on token T's residual at the hook and whose decoder row
    is T's unembedding direction: a feature that 'is' T, as real token features are."""
    W_U = model.W_U.detach()
    T = next(t for t in range(1000, 2000) if int((W_U.T @ W_U[:, t]).argmax()) == t)
    off = random_windows(4, 12, 1, model.cfg.d_vocab, seed=3)
    on = off.clone()
    on[:, 1:] = T  # T's residual in a text of T, against ordinary text
    x = [model.run_with_cache(w, names_filter=TINY_HOOK)[1][TINY_HOOK][:, 1:].reshape(-1, D_IN)
         for w in (on, off)]
    e = x[0].mean(0) - x[1].mean(0)
    e = e / e.norm()
    cut = float((x[0] @ e).min() + (x[1] @ e).max()) / 2
    g = torch.Generator().manual_seed(1)
    W_enc = torch.stack([e, torch.randn(D_IN, generator=g)], 1)
    W_dec = torch.stack([W_U[:, T] / W_U[:, T].norm(), torch.randn(D_IN, generator=g) / 5])
    return ReluCoder(W_enc, torch.tensor([-cut, 0.0]), W_dec, torch.zeros(D_IN)), T


def test_large_add_raises_the_latent_on_the_generated_text(model, prompt_ids, windows):
    sae, T = _planted(model)
    r = _run(model, sae, prompt_ids, windows, latent=0, strength=30.0, n=10, temperature=0.0)
    mean = {name: sum(g.acts[0]) / len(g.acts[0]) for name, g in
            (("default", r.default), ("steered", r.steered))}
    assert r.steered.ids.count(T) >= 8 and r.default.ids.count(T) == 0
    assert mean["steered"] > 0.3 and mean["steered"] > 3 * mean["default"]


@torch.no_grad()
def test_clamp_to_the_natural_value_is_a_no_op(model, prompt_ids, windows):
    sae = _coder("topk")
    x = torch.randn(20, D_IN, generator=torch.Generator().manual_seed(2)) * 3
    f = sae.encode(x)
    latent = int((f > 0).sum(0).argmax())  # a latent that fires on several of these tokens
    assert (f[:, latent] > 0).sum() >= 2
    for i in range(len(x)):  # each token clamped to its own value: x comes back, bit for bit
        own = sae.encode(x[i:i + 1])[0, [latent]]
        hook = SteeringHook(sae, [latent], own, "clamp", first_pos=0)
        assert torch.equal(hook.steer(x[i:i + 1]), x[i:i + 1])
    # A latent silent on the whole default text and the windows, clamped to 0 (its value
    # there): the same text and, to the bit, the same held-out loss.
    r0 = _run(model, sae, prompt_ids, None, n=10)
    seq = torch.cat([prompt_ids, torch.tensor(r0.default.ids)])[None]
    acts = [latent_acts(model, sae, TINY_HOOK, w, list(range(D_SAE)))[:, 1:].amax((0, 1))
            for w in (seq, windows)]
    silent = int(torch.nonzero((acts[0] == 0) & (acts[1] == 0))[0])
    r = _run(model, sae, prompt_ids, windows, latent=silent, method="clamp", n=10)
    assert r.steered.ids == r.default.ids == r0.default.ids
    assert r.loss.delta == 0.0


def test_kv_cached_decoding_matches_recomputing(model, prompt_ids):
    sae = _coder("topk")
    for method, value in (("add", 2.0), ("clamp", 5.0)):
        hook = SteeringHook(sae, [3], torch.tensor([value]), method, 1, rows=slice(1, 2))
        runs = [paired_generate(model, prompt_ids, TINY_HOOK, hook, 8, 1.0, 7, use_kv_cache=kv)
                for kv in (True, False)]
        assert torch.equal(runs[0], runs[1]), method


def test_loss_from_the_hook_layer_matches_a_full_hooked_run(model, windows):
    from saebench.steer_loss import heldout_ce, mean_ce, resume_layer

    assert resume_layer(TINY_HOOK) == 1 and resume_layer("blocks.3.hook_resid_pre") == 3
    assert resume_layer("blocks.0.attn.hook_z") is None
    sae = _coder("topk")
    for method in ("add", "clamp"):
        hook = SteeringHook(sae, [3], torch.tensor([4.0]), method, first_pos=1)
        clean, steered, n = heldout_ce(model, windows, TINY_HOOK, hook, 1)
        assert n == 2 * 14 and abs(steered - clean) > 1e-3
        assert clean == pytest.approx(mean_ce(model, windows, [], 1)[0], rel=1e-5)
        full = mean_ce(model, windows, [(TINY_HOOK, hook)], 1)[0]
        assert steered == pytest.approx(full, rel=1e-5), method


@pytest.mark.parametrize("arch", tuple(ARCHITECTURES))
@torch.no_grad()
def test_every_architecture(model, prompt_ids, windows, arch):
    sae = _coder(arch)
    x = torch.randn(6, D_IN, generator=torch.Generator().manual_seed(4)) * 2
    for method in ("add", "clamp"):
        hook = SteeringHook(sae, [5], torch.tensor([3.0]), method, first_pos=0)
        # per-token inference rule: a token's steering does not depend on the others
        assert torch.allclose(hook.steer(x)[:2], hook.steer(x[:2]), atol=1e-6), (arch, method)
        out = hook.steer(x)
        if method == "clamp":  # only latent 5's share of x changes, to exactly 3.0
            f5 = sae.encode(x)[:, 5:6]
            assert torch.allclose(out - x, (3.0 - f5) * sae.W_dec[5], atol=1e-5)
        r = _run(model, sae, prompt_ids, windows, latent=5, strength=50.0, method=method, n=6)
        assert len(r.steered.ids) == 6 and r.loss.delta != 0, (arch, method)
    r = _run(model, sae, prompt_ids, None, latent=5, strength=0.0, n=6)
    assert r.steered.ids == r.default.ids


@pytest.fixture(scope="module")
def sae_folder(tmp_path_factory):
    """A TopK SAE folder on the tiny model with a feature index giving latent 3 max act 2.5."""
    from saebench.index.schema import FEATURES, FEATURES_FILE, INDEX_DIR
    from store.catalog import write_parquet_atomic
    from trainers.saelens_format import save_sae

    folder = tmp_path_factory.mktemp("steer") / "saes" / "tiny-topk"
    meta = {"model_name": "random:tiny", "hook_name": TINY_HOOK, "prepend_bos": True}
    save_sae(folder, _coder("topk").export_saelens(1.0), d_in=D_IN, d_sae=D_SAE, meta=meta,
             run={"arch": "topk"})
    rows = [dict(sae=folder.name, latent=i, tokens_seen=100, fires=0 if i == 7 else 5,
                 density=0.05, max_act=0.0 if i == 7 else 2.5, mean_act=1.0, hist_counts=[],
                 dead=i == 7, dense=False) for i in range(D_SAE)]
    write_parquet_atomic(folder / INDEX_DIR / FEATURES_FILE, pa.Table.from_pylist(rows, FEATURES))
    return folder


def test_sae_handle_steer_uses_the_index_units(sae_folder):
    import saebench

    handle = saebench.open_workspace(sae_folder.parent.parent).sae(sae_folder.name)
    r = handle.steer(3, 0.0, prompt=PROMPT, n_tokens=5, heldout_text=PROMPT * 2)
    assert r.max_acts == [2.5] and r.max_act_source.startswith("feature index")
    assert r.steered.text == r.default.text and r.loss.delta == 0
    assert "given text" in r.loss.source
    r2 = handle.steer([3, 4], [1.0, -2.0], n_tokens=3, max_acts=[1.0, 1.0], temperature=0.0)
    assert r2.max_act_source == "given" and r2.loss is None  # no store recorded, no text


def test_an_index_of_other_weights_gives_no_units(sae_folder, tmp_path):
    """The index records the digest of the weights it was built from (index.json); units
    from an index of other weights (the SAE retrained since) would be stale."""
    import hashlib
    import json
    import shutil

    from saebench.index.schema import DONE_FILE, INDEX_DIR
    from saebench.steering_inputs import index_max_acts

    folder = tmp_path / "copy"
    shutil.copytree(sae_folder, folder)
    digest = hashlib.sha256((folder / "sae_weights.safetensors").read_bytes()).hexdigest()[:16]
    done = folder / INDEX_DIR / DONE_FILE
    done.write_text(json.dumps({"fingerprint": {"weights": digest}}))
    assert index_max_acts(folder)[0][3] == 2.5
    done.write_text(json.dumps({"fingerprint": {"weights": "0" * 16}}))
    assert index_max_acts(folder) is None


def test_units_estimated_from_the_store(model):
    sae = _coder("topk")
    store = model_store(model, n_seq=4, ctx=12)
    units, source = estimate_max_acts(sae, store)
    with torch.no_grad():
        expected = sae.encode(store.acts).amax(0)
    assert torch.allclose(units, expected) and units.max() > 0 and "44 held-out" in source


@pytest.mark.parametrize(("latent", "strength", "kw", "match"), [
    (-1, 1.0, {}, "out of range"), (D_SAE, 1.0, {}, "out of range"),
    ([3, D_SAE + 5], [1.0, 1.0], {}, "out of range"), ([3, 3], [1.0, 1.0], {}, "repeat"),
    (3, float("nan"), {}, "finite"), (3, float("inf"), {}, "finite"),
    (3, -1.0, {"method": "clamp"}, ">= 0"), (3, 1.0, {"method": "push"}, "add or clamp"),
    (3, [1.0, 2.0], {}, "one strength per latent"), (3, 1.0, {"n_tokens": 0}, "n_tokens"),
    (7, 1.0, {}, "never fired"),
])
def test_bad_input_is_one_line(sae_folder, latent, strength, kw, match):
    import saebench

    handle = saebench.open_workspace(sae_folder.parent.parent).sae(sae_folder.name)
    with pytest.raises(UserError, match=match) as err:
        steer_handle(handle, latent, strength, **{"n_tokens": 2, **kw})
    assert "\n" not in str(err.value)


def test_steer_page(tmp_path, monkeypatch):
    from test_app import _app, _html, make_workspace

    ws = make_workspace(tmp_path / "ws")
    at = _app(ws, monkeypatch, timeout=120)
    at.session_state["latent"] = 3
    at.switch_page("views/steer.py").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.number_input(key="steer_latent").value == 3
    assert _html(at).count("saebench-tok") >= 2 * 30
    means = [m for m in at.metric if m.label.startswith("Mean activation of latent 3")]
    assert len(means) == 2 and means[1].delta is not None  # steered, relative to default
    # strength 4 × latent 3's indexed max activation 1.3
    assert any("**5.2**" in md.value and "feature index (10000 tokens)" in md.value
               for md in at.markdown)
    assert "no store" in at.info[0].value
    at.radio(key="steer_method").set_value("clamp")
    at.text_area(key="steer_heldout").input(PROMPT * 3)
    next(b for b in at.button if b.label == "Steer").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    loss = [m for m in at.metric if m.label.startswith("Held-out CE")]
    assert len(loss) == 1 and "unsteered" in loss[0].delta


def test_copy_free_layout_is_bit_identical(prompt_ids):
    from store.models import _random_model, load_model
    from store.weight_layout import copy_free_layout

    assert load_model("random:tiny").blocks[0].mlp.W_gate.T.is_contiguous()  # every load has it
    fresh = _random_model("tiny", "cpu")  # built as TransformerLens lays it out, and unshared
    w_gate, attn = fresh.blocks[0].mlp.W_gate, fresh.blocks[0].attn
    assert not w_gate.T.is_contiguous()
    with torch.inference_mode():
        before = fresh(prompt_ids[None])
    copy_free_layout(fresh)
    assert fresh.blocks[0].mlp.W_gate is w_gate and w_gate.T.is_contiguous()
    assert attn.W_O.permute(2, 0, 1).is_contiguous() and attn.W_Q.permute(0, 2, 1).is_contiguous()
    with torch.inference_mode():
        assert torch.equal(fresh(prompt_ids[None]), before)
