"""Task suites: the batch contract for every task, known metric values, the runner and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from saebench.cli import main
from saebench.tasks import TASKS, TaskBatch, get_task
from saebench.tasks.greater_than import digit_ids
from saebench.tasks.run import last_logits, run_task, run_tasks, usable_tasks
from store.errors import UserError
from store.models import load_model, load_tokenizer
from store.windows import special_ids

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("random:tiny")


@pytest.mark.parametrize("name", list(TASKS))
def test_batch_contract(tok, name):
    b = TASKS[name].batch(tok, 12, seed=0)
    bos, _ = special_ids(tok)
    assert isinstance(b, TaskBatch) and len(b) == 12
    assert b.clean.shape == b.corrupt.shape and b.clean.dtype == torch.long
    assert (b.clean[:, 0] == bos).all() and (b.corrupt[:, 0] == bos).all()
    assert b.answer.shape == b.wrong.shape == b.pos.shape == (12,)
    assert ((b.answer >= 0) & (b.answer < len(tok))).all()
    assert ((b.wrong == -1) | (b.wrong >= 0)).all()
    for i in range(12):
        p = int(b.pos[i])
        # pos is the last real token: re-tokenizing the display text gives exactly 1..pos.
        if name != "induction":
            ids = tok.encode(b.prompts[i], add_special_tokens=False)
            assert b.clean[i, 1 : p + 1].tolist() == ids
        assert len(tok.decode([int(b.answer[i])])) > 0  # one token id, one piece of text
        # corrupt differs somewhere before pos; padding after pos is shared
        assert not torch.equal(b.clean[i, : p + 1], b.corrupt[i, : p + 1])
        assert torch.equal(b.clean[i, p + 1 :], b.corrupt[i, p + 1 :])
    assert b.mask.sum(1).tolist() == (b.pos + 1).tolist()


@pytest.mark.parametrize("name", list(TASKS))
def test_batches_are_seeded(tok, name):
    task = TASKS[name]
    a, b, c = task.batch(tok, 8, seed=1), task.batch(tok, 8, seed=1), task.batch(tok, 8, seed=2)
    assert torch.equal(a.clean, b.clean) and torch.equal(a.corrupt, b.corrupt)
    assert a.prompts == b.prompts and torch.equal(a.answer, b.answer)
    assert a.prompts != c.prompts


def test_ioi_names_and_abc_corruption(tok):
    b = TASKS["ioi"].batch(tok, 10, seed=0)
    for i in range(10):
        row, cor = b.clean[i].tolist(), b.corrupt[i].tolist()
        assert row.count(int(b.answer[i])) == 1 and row.count(int(b.wrong[i])) == 2
        # ABC: exactly one token differs, the repeated subject, replaced by a third name
        diff = [j for j in range(len(row)) if row[j] != cor[j]]
        assert len(diff) == 1 and row[diff[0]] == int(b.wrong[i])
        assert cor[diff[0]] not in (int(b.answer[i]), int(b.wrong[i]))
    orders = {b.prompts[i].index(tok.decode([int(b.answer[i])]).strip()) for i in range(10)}
    assert len(orders) > 1  # both ABBA and BABA


def _logits(b: TaskBatch, vocab: int, values: dict[int, torch.Tensor]) -> torch.Tensor:
    logits = torch.zeros(len(b), int(b.pos.max()) + 1, vocab)
    rows, pos = torch.arange(len(b))[:, None], b.pos[:, None]
    for col, tokens in values.items():
        logits[rows, pos, tokens.view(len(b), -1)] = float(col)
    return logits


def test_logit_diff_metric_known_values(tok):
    b = TASKS["ioi"].batch(tok, 6, seed=0)
    task = get_task("ioi")
    logits = _logits(b, len(tok), {3: b.answer, 1: b.wrong})
    assert torch.allclose(task.metric(logits, b), torch.full((6,), 2.0))
    assert task.correct(logits, b).all()
    flipped = _logits(b, len(tok), {1: b.answer, 3: b.wrong})
    assert torch.allclose(task.metric(flipped, b), torch.full((6,), -2.0))
    assert not task.correct(flipped, b).any()


def test_induction_metric_is_centred_logit(tok):
    b = TASKS["induction"].batch(tok, 4, seed=0)
    vocab = len(tok)
    logits = _logits(b, vocab, {5: b.answer})
    m = TASKS["induction"].metric(logits, b)
    assert torch.allclose(m, torch.full((4,), 5.0 - 5.0 / vocab))
    assert TASKS["induction"].correct(logits, b).all()
    assert not TASKS["induction"].correct(torch.zeros_like(logits), b).all()


def test_greater_than_metric_known_values(tok):
    task = TASKS["greater_than"]
    b = task.batch(tok, 8, seed=0)
    digits = torch.tensor(digit_ids(tok))
    tens = torch.tensor([int(p.split("year ")[1][2]) for p in b.prompts])
    assert torch.equal(b.answer, digits[tens + 1]) and torch.equal(b.wrong, digits[tens - 1])
    # all probability on a digit above / below / equal to the start's tens digit → 1 / −1 / 0
    for target, want in ((b.answer, 1.0), (b.wrong, -1.0), (digits[tens], 0.0)):
        logits = _logits(b, len(tok), {60: target})
        assert torch.allclose(task.metric(logits, b), torch.full((8,), want), atol=1e-5)
    # uniform over the ten digits: (9 − X)/10 − X/10
    logits = _logits(b, len(tok), {60: digits.expand(8, 10)})
    want = (9 - tens).float() / 10 - tens.float() / 10
    assert torch.allclose(task.metric(logits, b), want, atol=1e-5)
    assert all("year " in p and "01 to" not in p for p in b.prompts)
    assert "01 to the year" in tok.decode(b.corrupt[0])


def test_unknown_task_is_a_user_error():
    with pytest.raises(UserError, match="unknown task 'nope'; choose from ioi"):
        get_task("nope")
    with pytest.raises(UserError, match="unknown task"):
        run_tasks(None, ["ioi", "nope"])


def test_runner_on_tiny_model():
    model = load_model("random:tiny")
    b = TASKS["ioi"].batch(model.tokenizer, 4, seed=0)
    with torch.no_grad():
        full = model(b.clean)
    at_pos = full[torch.arange(4), b.pos]
    assert torch.allclose(last_logits(model, b.clean, b.pos)[:, 0], at_pos, atol=1e-5)
    results = run_tasks(model, n=6, seed=0)
    assert [r.task for r in results] == list(TASKS)
    for r in results:
        assert r.n == 6 and 0.0 <= r.accuracy <= 1.0
        assert r.usable == (r.reason == "")
    # chunked, sorted scoring gives each pair its own metric, in the original order
    r = run_task(model, "ioi", n=4, seed=0)
    assert r.clean_mean == pytest.approx(TASKS["ioi"].metric(full, b).mean().item(), abs=1e-4)
    assert set(usable_tasks(model, ["ioi"], n=4)) <= {"ioi"}


def test_cli(capsys, tmp_path):
    out = tmp_path / "t.json"
    argv = ["tasks", "--model", "random:tiny", "--n", "4", "--tasks", "ioi", "sva", "--out"]
    assert main([*argv, str(out)]) == 0
    record = json.loads(out.read_text())
    assert [r["task"] for r in record["results"]] == ["ioi", "sva"]
    assert "ioi" in capsys.readouterr().out
    assert main(["tasks", "--model", "random:tiny", "--tasks", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["saebench tasks: error: unknown task 'nope'; choose from " + ", ".join(TASKS)]


def test_real_model_does_ioi():
    """Integration: the default model on 20 IOI pairs (Wang et al.: ~all correct)."""
    r = run_task(load_model("smollm2-135m"), "ioi", n=20, seed=0)
    assert r.accuracy >= 0.9 and r.clean_mean > 2, r
    assert r.corrupt_mean < r.clean_mean
