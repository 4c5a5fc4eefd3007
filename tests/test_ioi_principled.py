"""The principled IOI eval (Makelov et al. 2024): supervised dictionaries, F1, sparse control.

Synthetic activations are sums of planted orthonormal directions, one per attribute value,
so the supervised dictionary, the planted SAE's F1s and the edits have known answers."""

from __future__ import annotations

import itertools

import pytest
import torch
from eval_helpers import ReluCoder, tensor_store

from saebench.evals import get_eval
from saebench.evals.context import EvalContext
from saebench.evals.ioi_control import edit_score, greedy_latents, sparse_edits
from saebench.evals.ioi_dictionary import fit_dictionary, indicators, latent_f1
from saebench.evals.ioi_principled import check, evaluate, saebench_output
from saebench.evals.ioi_principled_config import IOIPrincipledConfig
from saebench.evals.ioi_prompts import IOIPrompts
from saebench.tasks.base import TaskBatch
from store.errors import UserError

N_NAMES, D, N_EXTRA = 4, 12, 6
VALUES = {"io": N_NAMES, "s": N_NAMES, "pos": 2}


def planted() -> dict[str, torch.Tensor]:
    """Orthonormal directions: io values, then s values, then the two patterns."""
    q = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(0)))[0]
    rows = iter(q.T)
    return {a: torch.stack([next(rows) for _ in range(n)]) for a, n in VALUES.items()}


def activations(dirs, labels) -> torch.Tensor:
    return sum(dirs[a][labels[a]] for a in VALUES)


def prompts(labels: dict, cf_io: torch.Tensor) -> IOIPrompts:
    n = len(cf_io)
    z = torch.zeros(n, 2, dtype=torch.long)
    batch = TaskBatch(z, z, torch.ones(n, dtype=torch.long), z[:, 0], z[:, 0], ("p",) * n)
    names = tuple(f"n{i}" for i in range(N_NAMES))
    return IOIPrompts(batch, labels, cf_io, names, torch.arange(N_NAMES))


def factorial(repeat: int = 1) -> dict[str, torch.Tensor]:
    """Every (io, s, pos) combination equally often: the conditional means are exact."""
    combos = list(itertools.product(range(N_NAMES), range(N_NAMES), range(2))) * repeat
    return {a: torch.tensor([c[i] for c in combos]) for i, a in enumerate(VALUES)}


def planted_sae(dirs) -> ReluCoder:
    """Latent j fires (code 0.5) exactly when its direction is in x; W_dec = 2 × direction,
    so decode is exact. N_EXTRA latents with random decoders never fire."""
    E = torch.cat(list(dirs.values()))  # [10, D]
    extra = torch.randn(N_EXTRA, D, generator=torch.Generator().manual_seed(1))
    W_enc = torch.cat([E, extra]).T
    b_enc = torch.cat([torch.full((len(E),), -0.5), torch.full((N_EXTRA,), -100.0)])
    return ReluCoder(W_enc, b_enc, torch.cat([2 * E, extra]), torch.zeros(D))


def test_dictionary_recovers_planted_vectors():
    dirs, labels = planted(), factorial(repeat=3)
    noise = 0.01 * torch.randn(len(labels["io"]), D, generator=torch.Generator().manual_seed(2))
    x = activations(dirs, labels) + noise
    dictionary = fit_dictionary(x, labels, VALUES)
    for a in VALUES:  # u_iv = E[x | v] − E[x] = planted − mean planted on a factorial design
        want = dirs[a] - dirs[a].mean(0)
        assert torch.allclose(dictionary.vectors[a], want, atol=0.02), a
    assert torch.allclose(dictionary.reconstruct(labels), x - noise, atol=0.03)
    old, new = labels["io"], (labels["io"] + 1) % N_NAMES
    edited = dictionary.edit(x, "io", old, new)
    assert torch.allclose(edited - x, dirs["io"][new] - dirs["io"][old], atol=0.03)


def test_planted_sae_has_f1_one_and_controls_with_two_latents():
    dirs, labels = planted(), factorial()
    sae = planted_sae(dirs)
    x = activations(dirs, labels)
    codes = sae.encode(x)
    for a, offset in (("io", 0), ("s", N_NAMES), ("pos", 2 * N_NAMES)):
        s = latent_f1(codes, indicators(labels[a], VALUES[a]))
        assert torch.equal(s.latent, torch.arange(VALUES[a]) + offset)
        assert torch.allclose(s.f1, torch.ones(VALUES[a]))
    cf = dict(labels, io=(labels["io"] + 1) % N_NAMES)
    x_cf = activations(dirs, cf)
    edited, used = sparse_edits(x, x_cf, codes, sae.encode(x_cf), sae.W_dec.detach(), (1, 2, 4))
    assert torch.equal(used, torch.tensor([1, 2, 2])[:, None].expand_as(used))
    assert torch.allclose(edited[1], x_cf, atol=1e-5) and torch.allclose(edited[2], x_cf,
                                                                          atol=1e-5)
    assert not torch.allclose(edited[0], x_cf, atol=0.1)  # one latent gets half way


def test_metric_formulas_on_a_hand_example():
    # Target (2, 0); candidate moves (1, 0), (3, 0), (0, 5): (1, 0) cuts ‖r‖² 4 → 1; (3, 0)
    # 4 → 1 too but comes second; then nothing helps (from (1, 0): (3, 0) gives 4, worse).
    deltas = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 5.0]])
    assert greedy_latents(torch.tensor([2.0, 0.0]), deltas, 3) == [0]
    assert greedy_latents(torch.tensor([4.0, 0.0]), deltas, 3) == [1, 0]
    m_clean, m_cf = torch.tensor([-1.0, -3.0]), torch.tensor([1.0, 3.0])
    assert edit_score(torch.tensor([0.0, 0.0]), m_clean, m_cf) == pytest.approx(0.5)
    assert edit_score(m_cf, m_clean, m_cf) == pytest.approx(1.0)
    f = latent_f1(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]),
                  torch.tensor([[True], [True], [False], [False]]))
    # latent 0 fires on both positives and nothing else: P = R = F1 = 1; latent 1: F1 0.5
    assert int(f.latent) == 0 and float(f.f1) == pytest.approx(1.0)
    g = latent_f1(torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 0.0]]),
                  torch.tensor([[True], [False], [False], [False]]))
    assert (float(g.precision), float(g.recall), float(g.f1)) == pytest.approx((1 / 3, 1, 0.5))


def readout(dirs, x: torch.Tensor, test: IOIPrompts) -> torch.Tensor:
    """A linear 'model': the logit of name j is x · (io direction of j), at (old, S, new)."""
    trip = torch.stack([test.labels["io"], test.labels["s"], test.cf_io], 1)
    return torch.einsum("nd,ntd->nt", x, dirs["io"][trip])


def run_planted(cfg=None):
    dirs, fit_labels = planted(), factorial()
    sae = planted_sae(dirs)
    io = torch.tensor([0, 1, 2, 3, 0, 1])
    labels = {"io": io, "s": (io + 1) % N_NAMES, "pos": torch.tensor([0, 1] * 3)}
    test = prompts(labels, (io + 2) % N_NAMES)
    x, x_cf = activations(dirs, labels), activations(dirs, dict(labels, io=test.cf_io))

    def runner(ends):
        return {k: readout(dirs, x if e is None else e, test) for k, e in ends.items()}

    fit = prompts(fit_labels, fit_labels["io"])
    cfg = cfg or IOIPrincipledConfig(budgets=(1, 2))
    return evaluate(sae, fit, activations(dirs, fit_labels), test, x, x_cf, runner,
                    readout(dirs, x_cf, test), cfg)


def test_evaluate_gives_the_known_answers_on_planted_data():
    m = run_planted().metrics
    assert m["clean_logit_diff"] == pytest.approx(1.0) and m["clean_accuracy"] == 1.0
    for name in ("sae", "supervised", "interpretable"):
        assert m[f"approx_{name}_frac"] == pytest.approx(1.0, abs=1e-5), name
    assert m["approx_mean_ablated_frac"] == pytest.approx(0.0, abs=1e-5)
    assert m["approx_n_kept_latents"] == 2 * N_NAMES + 2  # the planted ones, no extra
    for name in ("patch_cf", "supervised", "sae_2"):
        assert m[f"control_{name}_score"] == pytest.approx(1.0, abs=1e-5), name
        assert m[f"control_{name}_success"] == 1.0, name
    # one latent: either the old IO is removed or the new one added: half way (success is
    # then a tie between the old and the new name, decided by rounding: not asserted)
    assert m["control_sae_1_score"] == pytest.approx(0.5, abs=1e-5)
    assert m["control_sae_1_latents"] == 1.0 and m["control_sae_2_latents"] == 2.0
    assert m["interp_mean_f1"] == pytest.approx(1.0) and m["site_fvu_sae"] < 1e-8


def test_output_schema():
    result = run_planted()
    assert all(isinstance(v, float) for v in result.metrics.values())
    values = result.tables["ioi_attribute_values"]
    assert set(values) == {"attribute", "value", "n_prompts", "latent", "precision", "recall",
                           "f1", "u_norm"}
    assert len(values["f1"]) == 2 * N_NAMES + 2
    control = result.tables["ioi_control"]
    assert list(control["method"]) == ["patch_cf", "supervised", "sae", "sae"]
    assert list(control["budget"]) == [-1, -1, 1, 2]
    eval_type, groups, details = saebench_output(result, IOIPrincipledConfig())
    assert eval_type == "ioi_principled"
    assert set(groups) == {"task", "approximation", "control", "interpretability"}
    assert sum(len(g) for g in groups.values()) == len(result.metrics)
    assert len(details) == 2 * N_NAMES + 2 and details[0]["attribute"] == "io"
    assert "ioi_principled" in get_eval("ioi_principled").module


@pytest.mark.parametrize("cfg, hook, match", [
    (IOIPrincipledConfig(n_names=2), "blocks.0.hook_resid_post", "n_names"),
    (IOIPrincipledConfig(budgets=()), "blocks.0.hook_resid_post", "budgets"),
    (IOIPrincipledConfig(n_fit=1), "blocks.0.hook_resid_post", "n_fit"),
    (IOIPrincipledConfig(), "blocks.0.hook_mlp_out", "residual stream"),
    (IOIPrincipledConfig(site="bos"), "blocks.0.hook_resid_post", "site"),
])
def test_bad_input_is_one_line(cfg, hook, match):
    sae = planted_sae(planted())
    ctx = EvalContext(sae, {}, tensor_store(torch.zeros(4, D), hook=hook))
    with pytest.raises(UserError, match=match) as err:
        check(ctx, cfg)
    assert "\n" not in str(err.value)


def test_cli_knows_the_eval():
    import tyro

    from saebench.commands.eval import Args

    args = tyro.cli(Args, args=["--sae", "s", "--evals", "ioi_principled",
                                "--ioi-principled.n-fit", "10"])
    assert args.ioi_principled == IOIPrincipledConfig(n_fit=10)


@pytest.mark.usefixtures("one_thread")
def test_split_run_matches_the_full_model_and_prompts_align():
    from saebench.evals.ioi_prompts import make_prompts, site_positions
    from saebench.evals.ioi_runs import at_site, end_logits, residual, start_layer
    from store.models import load_model

    model = load_model("random:tiny")
    p = make_prompts(model.tokenizer, 6, 5, seed=0)
    differ = (p.batch.clean != p.batch.corrupt).sum(1)
    assert torch.equal(differ, torch.ones(6, dtype=torch.long))  # only the IO name moves
    assert torch.equal(p.labels["pos"], torch.tensor([0, 1] * 3))
    assert (p.cf_io != p.labels["io"]).all() and (p.cf_io != p.labels["s"]).all()
    for site, want in (("io", p.labels["io"]), ("s2", p.labels["s"])):
        at = site_positions(p, site)
        assert torch.equal(p.batch.clean[torch.arange(6), at], p.name_ids[want]), site
    s2, io = site_positions(p, "s2"), site_positions(p, "io")
    assert (s2 > io).all() and (s2 < p.batch.pos).all()
    start = start_layer("blocks.0.hook_resid_post", model.cfg.n_layers)
    resid = residual(model, p.batch.clean, start, batch=4)
    ids, pos = p.token_triples(), p.batch.pos
    with torch.inference_mode():
        full = model(p.batch.clean)[torch.arange(6), pos].gather(1, ids)
    assert torch.allclose(end_logits(model, resid, start, pos, pos, None, ids, 4), full,
                          atol=1e-4)  # the run split at the hook is the full model
    same = at_site(resid, io)
    assert torch.allclose(end_logits(model, resid, start, pos, io, same, ids, 4), full,
                          atol=1e-4)
    zeroed = end_logits(model, resid, start, pos, io, torch.zeros(6, 32), ids, 4)
    assert not torch.allclose(zeroed, full, atol=1e-3)  # an earlier site reaches END
