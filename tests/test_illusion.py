"""The subspace-patching illusion check on a hand-built model with a planted dormant pathway.

One layer, attention off, a ReLU MLP whose hidden units are (Makelov et al. 2023's example):
  0 "disconnected": on for the clean token, off for the corrupt one; W_out row 0 is zero;
  1 "dormant": never on (no input weights), yet W_out row 1 writes strongly to the answer;
  2 "feature": on for the clean token; W_out row 2 writes to the answer (the true mechanism);
  3 unused; W_out row 3 writes 1e-7 to an unread dim (below the SVD tolerance: null).
Metric: logit[0] − logit[1] at the last position. Patching the clean run with the corrupt
projection along (e0 + e1)/√2 moves the metric by −0.5 × 6 = −3, all of it through the
dormant unit, which only the null-space part e0 can switch on; along e2 it moves by −1 × 4 = −4,
all of it in the row space.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from saebench.illusion import IllusionConfig, Prompts, mlp_layer, row_space, split
from saebench.illusion_check import check_directions, share_needing_null, summary
from store.errors import UserError

CLEAN, CORRUPT, BOS = 0, 1, 2


def planted_model():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=1, d_model=4, n_ctx=4, d_head=2, n_heads=1, d_mlp=4,
                                  d_vocab=4, act_fn="relu", normalization_type=None, seed=0)
    model = HookedTransformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.W_E[CLEAN, 0] = 1.0  # residual dim 0 marks the clean token
        mlp = model.blocks[0].mlp
        mlp.W_in[0, 0] = mlp.W_in[0, 2] = 1.0  # units 0 and 2 fire on the clean token
        mlp.W_out[1, 1] = 3.0  # dormant unit -> residual dim 1
        mlp.W_out[2, 1], mlp.W_out[2, 2] = 2.0, 1.0  # feature unit (independent of row 1)
        mlp.W_out[3, 3] = 1e-7  # a direction written with a negligible gain (dim 3 is unread)
        model.unembed.W_U[1, 0], model.unembed.W_U[1, 1] = 1.0, -1.0  # dim 1 -> logit diff
    return model


def planted_prompts(n: int = 3) -> Prompts:
    clean = torch.tensor([[BOS, CLEAN]] * n)
    source = torch.tensor([[BOS, CORRUPT]] * n)

    def metric(logits, idx):
        return logits[:, 0, 0] - logits[:, 0, 1]

    return Prompts(clean, source, torch.full((n,), 1), metric)


HOOK = "blocks.0.mlp.hook_post"
MIXED = torch.tensor([1.0, 1.0, 0.0, 0.0]) / math.sqrt(2)
FEATURE = torch.tensor([0.0, 0.0, 1.0, 0.0])


def test_split_matches_the_kernel_and_the_tolerance():
    W = planted_model().blocks[0].mlp.W_out.detach()
    basis = row_space(W, rel_tol=1e-4)
    assert basis.shape[1] == 2  # rows 1 and 2; row 3 (1e-7 gain) falls below the tolerance
    parts = split(torch.stack([MIXED, FEATURE]), basis)
    assert torch.allclose(parts.row + parts.null, torch.stack([MIXED, FEATURE]))
    assert (parts.null.double() @ W.double()).abs().max() < 1e-6  # null parts write ~nothing
    assert parts.null_share.tolist() == pytest.approx([0.5, 0.0], abs=1e-6)
    assert row_space(W, rel_tol=1e-9).shape[1] == 3  # a looser tolerance keeps row 3


def test_mixed_direction_is_an_illusion_and_the_feature_is_not():
    rec = check_directions(planted_model(), HOOK, torch.stack([MIXED, FEATURE]),
                           planted_prompts(), IllusionConfig(batch_size=2))
    mixed, feature = rec["rows"]
    assert rec["clean_metric"] == pytest.approx(4.0)  # the feature unit writes 2 to dim 1
    assert rec["source_metric"] == pytest.approx(0.0)  # nothing fires on the corrupt token
    assert rec["effect_layer"] == pytest.approx(-4.0, abs=1e-5)  # the whole MLP patched
    assert mixed["full_of_gap"] == pytest.approx(0.75, abs=1e-5)
    assert feature["full_of_gap"] == pytest.approx(1.0, abs=1e-5)
    assert mixed["effect_full"] == pytest.approx(-3.0, abs=1e-5)
    assert mixed["effect_row"] == pytest.approx(0.0, abs=1e-5)  # dormant: no variation
    assert mixed["effect_null"] == pytest.approx(0.0, abs=1e-5)  # W_out cannot see it
    assert mixed["share_needing_null"] == pytest.approx(1.0, abs=1e-5)
    assert feature["effect_full"] == pytest.approx(-4.0, abs=1e-5)
    assert feature["effect_row"] == pytest.approx(-4.0, abs=1e-5)
    assert feature["share_needing_null"] == pytest.approx(0.0, abs=1e-5)
    assert summary(rec["rows"])["illusions"] == 1
    json.dumps(rec)  # JSON-ready


def test_grouped_directions_match_one_at_a_time():
    from saebench.illusion import patch_effects

    dirs = torch.stack([MIXED, FEATURE, torch.tensor([0.3, -1.0, 0.5, 2.0])])
    model, prompts = planted_model(), planted_prompts(3)
    one = patch_effects(model, HOOK, dirs, prompts, IllusionConfig(batch_size=1))
    grouped = patch_effects(model, HOOK, dirs, prompts, IllusionConfig(batch_size=7))
    assert torch.allclose(one[0], grouped[0], atol=1e-5)
    assert one[1:] == pytest.approx(grouped[1:], abs=1e-6)
    assert one[0].abs().min() > 0.1  # every direction has an effect to compare


def test_last_position_patch_and_share_edge_cases():
    cfg = IllusionConfig(positions="last")
    rec = check_directions(planted_model(), HOOK, FEATURE[None], planted_prompts(2), cfg)
    assert rec["rows"][0]["effect_full"] == pytest.approx(-4.0, abs=1e-5)
    assert share_needing_null(1e-9, 0.0, 1e-6) is None
    assert share_needing_null(2.0, 0.5, 1e-6) == pytest.approx(0.75)


@pytest.mark.parametrize("bad", [dict(rel_tol=0.0), dict(positions="first"),
                                 dict(batch_size=0), dict(min_effect=-1.0)])
def test_bad_config_is_one_line(bad):
    with pytest.raises(UserError):
        IllusionConfig(**bad)


def test_bad_hooks_are_one_line():
    for hook in ("blocks.0.hook_resid_post", "blocks.0.mlp.hook_pre", "blocks.0.attn.hook_z"):
        with pytest.raises(UserError, match="MLP hidden hook"):
            mlp_layer(hook)
    with pytest.raises(UserError, match="only 1 layers"):
        check_directions(planted_model(), "blocks.3.mlp.hook_post", FEATURE[None],
                         planted_prompts())
    with pytest.raises(UserError, match="wide"):
        check_directions(planted_model(), HOOK, torch.ones(1, 5), planted_prompts())


def _write_sae(folder, hook: str, d_in: int):
    from trainers.saelens_format import save_sae
    from trainers.topk import TopKConfig, TopKSAE

    sae = TopKSAE(d_in, TopKConfig(d_sae=16, k=4), generator=torch.Generator().manual_seed(0))
    meta = {"model_name": "random:tiny", "hook_name": hook}
    save_sae(folder, sae.export_saelens(1.0), d_in=d_in, d_sae=16, meta=meta, run={})
    return folder


def test_command_writes_the_split_per_latent(tmp_path, one_thread):
    from saebench.cli import main

    sae = _write_sae(tmp_path / "saes" / "mlp", "blocks.1.mlp.hook_post", d_in=64)
    out = tmp_path / "ill.json"
    argv = ["illusion", "--sae", str(sae), "--n", "2", "--device", "cpu", "--out", str(out)]
    assert main([*argv, "--latents", "3,5"]) == 0
    rec = json.loads(out.read_text())
    assert [r["latent"] for r in rec["rows"]] == [3, 5]
    # random:tiny: d_mlp 64, d_model 32, so W_out has rank 32 and a 32-dim null space.
    assert rec["row_rank"] == 32 and rec["d_mlp"] == 64
    assert all(0.05 < r["null_share"] < 0.95 for r in rec["rows"])
    assert all(abs(r["effect_null"]) < 1e-4 for r in rec["rows"])  # null parts write nothing


def test_command_bad_input_is_one_line(tmp_path, capsys):
    from saebench.cli import main

    resid = _write_sae(tmp_path / "resid", "blocks.0.hook_resid_post", d_in=32)
    mlp = _write_sae(tmp_path / "mlp", "blocks.1.mlp.hook_post", d_in=64)
    out = tmp_path / "x.json"
    for argv, msg in [
        (["--sae", str(resid)], "MLP hidden hook"),
        (["--sae", str(tmp_path / "missing")], "no such directory"),
        (["--sae", str(resid), "--latents", "1,a"], "comma-separated integers"),
        (["--sae", str(resid), "--check.positions", "first"], "positions"),
        (["--sae", str(mlp), "--latents", "99"], "out of range for d_sae 16"),
    ]:
        assert main(["illusion", *argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and "\n" not in err and "Traceback" not in err
    assert not out.exists()


def test_circuit_option_checks_the_top_mlp_nodes(tmp_path, one_thread):
    from saebench.circuits.saes import load_set
    from saebench.illusion_check import check_circuit, mlp_hooks, top_latents
    from saebench.tasks import get_task

    mlp = _write_sae(tmp_path / "mlp", "blocks.1.mlp.hook_post", d_in=64)
    resid = _write_sae(tmp_path / "resid", "blocks.0.hook_resid_post", d_in=32)
    sset, model = load_set([resid, mlp])
    task = get_task("ioi")
    batch = task.batch(model.tokenizer, 4, 0)
    effects = {"blocks.0.hook_resid_post": torch.full((17,), 5.0),
               "blocks.1.mlp.hook_post": torch.zeros(3, 17)}
    effects["blocks.1.mlp.hook_post"][:, 16] = 9.0  # the error node is never checked
    effects["blocks.1.mlp.hook_post"][0, 7], effects["blocks.1.mlp.hook_post"][2, 7] = 0.1, -0.2
    effects["blocks.1.mlp.hook_post"][1, 2] = -0.5
    effects["blocks.1.mlp.hook_post"][1, 9] = 0.01
    top = top_latents(model, sset.saes[1], "blocks.1.mlp.hook_post", batch.clean, batch.pos, 3)
    assert len(top) == 3 and len(set(top)) == 3  # the --top path of `saebench illusion`
    out = check_circuit(model, sset, task, batch, effects, top=2)
    assert list(out) == ["blocks.1.mlp.hook_post"]  # the resid SAE is not an MLP hook
    assert [r["latent"] for r in out["blocks.1.mlp.hook_post"]["rows"]] == [2, 7]
    with pytest.raises(UserError, match="MLP hidden hook"):
        mlp_hooks(["blocks.0.hook_resid_post"])
    with pytest.raises(UserError, match="positive"):
        mlp_hooks(["blocks.1.mlp.hook_post"], top=0)


def test_an_optimised_direction_finds_the_planted_illusion():
    from saebench.illusion_das import optimise_direction

    model, prompts = planted_model(), planted_prompts()
    u = optimise_direction(model, HOOK, prompts, d=4, steps=15, lr=0.3, seed=0)
    rec = check_directions(model, HOOK, u[None], prompts)
    row = rec["rows"][0]
    # The best 1-d patch beats the whole-layer patch (−4: the MLP-in-the-middle signature)
    # by recruiting the dormant unit.
    assert row["effect_full"] < -4.2 and rec["effect_layer"] == pytest.approx(-4.0, abs=1e-5)
    assert abs(u[1]) > 0.3 and abs(u[0]) > 0.3  # dormant and disconnected units both used
    assert row["share_needing_null"] > 0.15  # 0.22 measured; the row part alone falls short
