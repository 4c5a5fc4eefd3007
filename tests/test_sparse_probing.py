"""Sparse probing: known answers on planted data, the eval store's build-once rule, the
sae-probes CSV reader, and one tiny end-to-end run (random:tiny model, no downloads)."""

from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import replace

import numpy as np
import pytest
import torch
from eval_helpers import TINY_HOOK, ReluCoder, tensor_store

from saebench.evals.context import EvalContext
from saebench.evals.probing import binary_tasks, top_k_by_mean_diff
from saebench.evals.sparse_probing import probe_dataset, resolve_datasets, sae_mean_codes
from saebench.evals.sparse_probing_config import SparseProbingConfig
from store import eval_store, probe_datasets

D_IN, D_SAE, TOKENS = 16, 24, 6


class TokenReader:
    """The part of EvalStoreReader that sae_mean_codes reads, over given token vectors."""

    def __init__(self, x: torch.Tensor):
        self.x = x  # [texts, tokens, d_in]

    def iter_token_acts(self, batch_texts: int):
        for lo in range(0, len(self.x), batch_texts):
            part = self.x[lo : lo + batch_texts]
            yield part.reshape(-1, D_IN), np.full(len(part), TOKENS)


def planted(n: int, seed: int = 0):
    """Texts of TOKENS tokens; the positive class adds 3 * u to every token (u = e_0)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, TOKENS, D_IN, generator=g)
    x[:, :, 0] += 3.0 * y[:, None]
    splits = np.where(np.arange(n) < 3 * n // 4, "train", "test")
    return x, y.numpy().astype(str), splits


def coder(sees_label: bool, seed: int = 1) -> ReluCoder:
    """Random ReLU SAE whose latents are blind to u = e_0, except latent 5 if `sees_label`."""
    g = torch.Generator().manual_seed(seed)
    W_enc = torch.randn(D_IN, D_SAE, generator=g) / D_IN**0.5
    W_enc[0] = 0.0  # no latent reads the label direction...
    if sees_label:
        W_enc[:, 5] = 0.0
        W_enc[0, 5] = 1.0  # ...except latent 5, which is exactly it
    return ReluCoder(W_enc, torch.zeros(D_SAE), W_enc.T.contiguous(), torch.zeros(D_IN))


def _accuracies(sees_label: bool) -> dict[str, float]:
    x, labels, splits = planted(400)
    ctx = EvalContext(coder(sees_label), {}, tensor_store(torch.zeros(1, D_IN)))
    codes = sae_mean_codes(ctx, TokenReader(x), batch_texts=64)
    cfg = SparseProbingConfig(k_values=(1, 2))
    return probe_dataset(x.mean(1).numpy(), codes, labels, splits, cfg)


def test_planted_latent_is_found_by_top_1(one_thread):
    acc = _accuracies(sees_label=True)
    assert acc["sae_top_1_test_accuracy"] > 0.97
    assert acc["llm_test_accuracy"] > 0.97  # the residual baseline sees u too


def test_a_blind_random_sae_is_near_chance(one_thread):
    acc = _accuracies(sees_label=False)
    assert abs(acc["sae_top_1_test_accuracy"] - 0.5) < 0.12
    assert abs(acc["sae_test_accuracy"] - 0.5) < 0.15
    assert acc["llm_top_1_test_accuracy"] > 0.97  # the label is still in the residual


def test_top_k_selection_and_one_vs_rest_tasks():
    x = np.zeros((4, 3))
    x[:2, 2], x[:2, 0] = 5.0, 1.0
    assert top_k_by_mean_diff(x, np.array([1, 1, 0, 0]), 2).tolist() == [2, 0]
    labels = np.array(["a", "b", "c"] * 10)
    splits = np.array(["train"] * 21 + ["test"] * 9)
    tasks = binary_tasks(labels, splits)
    assert [t.name for t in tasks] == ["a", "b", "c"]
    for t in tasks:  # balanced: all positives, as many negatives; splits kept apart
        assert t.y_train.sum() * 2 == len(t.y_train) and t.y_test.sum() * 2 == len(t.y_test)
        assert set(t.train) <= set(range(21)) and set(t.test) <= set(range(21, 30))
    (two,) = binary_tasks(np.array(["female", "male"] * 4), np.array(["train", "test"] * 4))
    assert two.name == "male"


TEXTS = ["The cat sat on the mat.", "Emma was handsome, clever and rich.", "def f(x): return x",
         "A short one.", "Another sentence about probes and latents here.", "import torch"]


def test_eval_store_is_built_once_and_reused(tmp_path, one_thread):
    from store.models import load_model

    model = load_model("random:tiny")
    calls = []

    def loader():
        calls.append(1)
        return model

    labels, splits = ["0", "1"] * 3, ["train"] * 4 + ["test"] * 2
    path = eval_store.store_path(tmp_path, "toy", "random:tiny", TINY_HOOK)
    args = (TEXTS, labels, splits, loader, "random:tiny", TINY_HOOK, 8, 4)
    assert eval_store.build(path, *args) is True
    assert eval_store.build(path, *args) is False and len(calls) == 1  # no model the 2nd time
    reader = eval_store.EvalStoreReader(path)
    table = reader.labels()
    assert table["label"].tolist() == labels and table["split"].tolist() == splits
    ids = model.tokenizer(TEXTS, add_special_tokens=False)["input_ids"]
    assert table["n_tokens"].tolist() == [min(len(t), 7) for t in ids]  # BOS dropped
    means = reader.mean_acts()
    assert means.shape == (6, model.cfg.d_model)
    (x, lengths), = list(reader.iter_token_acts(64))
    assert lengths.tolist() == table["n_tokens"].tolist() and x.shape[0] == lengths.sum()
    first = x[: lengths[0]].float().mean(0).numpy()
    np.testing.assert_allclose(first, means[0], atol=1e-2)
    reader.close()
    # A changed dataset is rebuilt, not mixed with the old rows.
    assert eval_store.build(path, TEXTS[::-1], *args[1:]) is True and len(calls) == 2


def _csv_zst(rows: list[tuple[str, str]]) -> bytes:
    import zstandard

    buf = io.StringIO()
    writer = csv.writer(buf, quoting=csv.QUOTE_ALL)
    writer.writerow(["prompt", "target"])
    writer.writerows(rows)
    return zstandard.ZstdCompressor().compress(buf.getvalue().encode())


def test_sae_probes_csv_reader_and_wheel(tmp_path, monkeypatch):
    rows = [('Title: "Great"\nReview: fun, really', "1"), ("Bad, sadly.", "0")] * 5
    assert probe_datasets.read_labelled_csv(_csv_zst(rows)) == (
        [r[0] for r in rows], [r[1] for r in rows])
    wheel = tmp_path / "sae_probes.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("sae_probes/data/cleaned_data/7_toy.csv.zst", _csv_zst(rows))
    monkeypatch.setattr(probe_datasets, "wheel_path", lambda: wheel)
    assert probe_datasets.sae_probes_names() == ["7_toy"]
    data = probe_datasets.probe_set("7_toy", 6, 2)
    assert sorted(data.splits) == ["test"] * 2 + ["train"] * 6
    assert sorted(data.labels) == ["0"] * 4 + ["1"] * 4
    cfg = SparseProbingConfig(datasets=("7_toy", "austen_book"))
    assert resolve_datasets(cfg) == (["7_toy", "austen_book"], "")
    monkeypatch.setattr(probe_datasets, "wheel_path", lambda: tmp_path / "absent.whl")
    names, note = resolve_datasets(cfg)
    assert names == ["austen_book"] and "skipped 7_toy" in note


@pytest.mark.timeout(120)
def test_end_to_end_on_a_corpus_set(tmp_path, one_thread):
    from saebench.evals import get_eval
    from store.models import load_model

    model = load_model("random:tiny")
    d = model.cfg.d_model
    sae = ReluCoder(torch.eye(d), torch.zeros(d), torch.eye(d), torch.zeros(d))
    store = tensor_store(torch.zeros(1, d))
    store.meta["model"] = "random:tiny"
    ctx = EvalContext(sae, {}, store, model_loader=lambda: model)
    cfg = SparseProbingConfig(datasets=("austen_book",), n_train=36, n_test=12, max_tokens=12,
                              k_values=(1,), store_dir=tmp_path)
    module = get_eval("sparse_probing").load()
    module.check(ctx, cfg)
    result = module.run(ctx, cfg)
    for key in ("llm_test_accuracy", "sae_test_accuracy", "sae_top_1_test_accuracy",
                "austen_book/sae_top_1_test_accuracy"):
        assert 0.0 <= result.metrics[key] <= 1.0
    assert len(list(tmp_path.glob("austen_book.*.duckdb"))) == 1
    # Another sample size gets its own store; the first one is kept, not rebuilt.
    module.run(ctx, replace(cfg, n_train=24))
    assert len(list(tmp_path.glob("austen_book.*.duckdb"))) == 2

    def no_model():
        raise AssertionError("the first store should be reused without the model")

    module.run(EvalContext(sae, {}, store, model_loader=no_model), cfg)
