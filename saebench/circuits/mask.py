"""Node selection by a learned mask over template groups (`saebench circuits --method mask`).

Attribution ranks nodes by their effect one at a time, at the clean run (Marks et al. 2024,
§2). On IOI with SAEs at four depths that ranking needs thousands of nodes for 80%
faithfulness: the name identity is carried redundantly, so no single node looks important
at the clean run, while ablating all but a few leaves nothing. A learned mask looks at the
circuit as a whole instead: every node gets a gate, and the gates are trained to keep the
metric while paying for each open gate, under the ablation that faithfulness uses.

- **Gates.** Hard-concrete gates (Louizos, Welling & Kingma 2018, arXiv 1712.01312, §4: a
  stretched, clipped binary concrete with the expected L0 in closed form), one per node:
  (hook, latent) or (hook, role, latent), the error node included. Learned masks for
  circuit discovery follow Bhaskar et al. 2024 ("Finding Transformer Circuits with Edge
  Pruning", arXiv 2406.16778), who prune edges; we prune SAE nodes.
- **Loss.** (1 − f)² + λ · E[open gates], f the faithfulness of the gated model
  ((m(gates) − m(∅)) / (m(M) − m(∅)), Marks et al.'s definition with the gates in place of
  a hard circuit). λ grows geometrically over the run, so one run traces circuits from large
  to small; after each λ stage the gates are read as a hard circuit (gate logit > 0) and
  recorded. Our choices: the loss, the λ path, Adam with lr 0.1, gates starting open.
- **Ablation.** A closed node takes its template-group mean at its position (as faithfulness
  does elsewhere), or with `ablate="corrupt"` its value on the pair's corrupt prompt.
- **Pairs.** Each step sees every pair, or `batch_pairs` of them drawn afresh from a larger
  pool, so that the gates fit the task's distribution of names and not one small sample.
- **Evaluation.** `evaluate_path` scores every recorded circuit like a sweep point
  (faithfulness, a random circuit of the same size, completeness). The gates were fitted on
  the pairs they are scored on: check them on held-out pairs too
  (benchmarks/mask_circuits_bench.py does; on IOI the two differ a lot).

The gated forwards are saebench.circuits.gated_run's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from saebench.circuits import positional as P
from saebench.circuits.faithfulness import TARGET, SweepRow, nodes_for
from saebench.circuits.gated_run import Runner
from saebench.circuits.saes import SAESet

BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1
"""Hard-concrete temperature and stretch (Louizos et al. 2018, §4, their suggested values)."""


@dataclass(frozen=True)
class MaskSettings:
    """The λ path and the optimiser; the defaults suit a few thousand to a few 10⁵ gates."""

    lambdas: tuple[float, ...] = tuple(1e-5 * 2.0 ** i for i in range(12))
    """λ per stage, in (1 − f)² units per expected open gate; stages run in this order."""
    steps: int = 40
    """Adam steps per λ stage."""
    lr: float = 0.1
    init: float = 3.0
    """Starting gate logit: every gate open (P(open) ≈ 0.98)."""
    seed: int = 0
    batch_pairs: int | None = None
    """Pairs per step, drawn afresh each step from all of them (None: all, every step): a
    larger pool at the cost of a small batch, so the gates fit the task's distribution of
    names rather than one small sample of them."""


@dataclass
class MaskPath:
    """The hard circuits read off the gates after each λ stage."""

    circuits: list[tuple[float, dict[str, Int[Tensor, "K 2"]]]]
    """(λ, hook -> kept (role or -1, node)) per stage, largest λ last."""
    history: list[dict]
    """Per stage: λ, faithfulness of the gated (stochastic) model, expected open gates."""


def expected_open(logit: Tensor) -> Tensor:
    """P(gate > 0) of a hard-concrete gate (Louizos et al. 2018, eq. 12)."""
    return torch.sigmoid(logit - BETA * math.log(-GAMMA / ZETA))


def sample_gate(logit: Tensor, g: torch.Generator | None) -> Tensor:
    """One draw of the stretched, clipped binary concrete gate in [0, 1]."""
    u = torch.rand(logit.shape, generator=g).clamp(1e-6, 1 - 1e-6).to(logit.device)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + logit) / BETA)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0, 1)


def hard(logits: dict[str, Tensor], kind: str) -> dict[str, Int[Tensor, "K 2"]]:
    """The circuit the gates describe: nodes whose gate logit is positive (gate mode > 0.5)."""
    out = {}
    for h, t in logits.items():
        j = (t.detach().cpu() > 0).nonzero()
        if kind == "summed":
            j = torch.stack([torch.full_like(j[:, 1], -1), j[:, 1]], 1)
        out[h] = j
    return out


def learn(model, sset: SAESet, task, g: P.Grouped, kind: str,
          settings: MaskSettings = MaskSettings(), progress: bool = True,
          ablate: str = "mean") -> MaskPath:
    """Train the gates along the λ path; see the module docstring. `ablate`: what a closed
    node is set to, its template-group mean or its value on the pair's corrupt prompt."""
    run = Runner(model, sset, task, g, ablate)
    dev = model.cfg.device
    n_rows = 1 if kind == "summed" else len(g.roles)
    ones = {h: torch.ones(n_rows, s.d_sae + 1, device=dev) for h, s in sset.items()}
    zeros = {h: torch.zeros_like(v) for h, v in ones.items()}
    with torch.no_grad():  # per pair, so that a minibatch can be normalised by its own
        full = run.per_pair(ones, kind)
        empty = run.per_pair(zeros, kind)
    n_pairs = len(full)
    minibatch = bool(settings.batch_pairs) and settings.batch_pairs < n_pairs
    logits = {h: torch.full((n_rows, s.d_sae + 1), settings.init, device=dev,
                            requires_grad=True) for h, s in sset.items()}
    opt = torch.optim.Adam(list(logits.values()), lr=settings.lr)
    gen = torch.Generator().manual_seed(settings.seed)
    circuits, history = [], []
    total = len(settings.lambdas) * settings.steps
    bar = tqdm(total=total, desc=f"mask ({kind})", disable=not progress)
    for lam in settings.lambdas:
        faith = []
        for _ in range(settings.steps):
            gates = {h: sample_gate(t, gen) for h, t in logits.items()}
            rows, w, f_all, e_all = None, run.weight, full, empty
            if minibatch:
                rows = torch.randperm(n_pairs, generator=gen)[: settings.batch_pairs]
                rows = rows.sort().values.to(full.device)
                w, f_all, e_all = run.weight[rows], full[rows], empty[rows]
            w = w / w.sum()
            m_full, m_empty = (f_all * w).sum(), (e_all * w).sum()
            m = (run.per_pair(gates, kind, rows) * w).sum()
            f = (m - m_empty) / (m_full - m_empty)
            l0 = sum(expected_open(t).sum() for t in logits.values())
            loss = (1 - f) ** 2 + lam * l0
            # Gradients for the gates only: backward() would also fill the model's weights.
            params = list(logits.values())
            for t, gr in zip(params, torch.autograd.grad(loss, params), strict=True):
                t.grad = gr
            opt.step()
            faith.append(f.item())
            bar.update()
            bar.set_postfix(lam=f"{lam:.1e}", f=f"{f.item():.2f}", open=f"{l0.item():.0f}")
        kept = hard(logits, kind)
        circuits.append((lam, kept))
        history.append({"lambda": lam, "faithfulness": sum(faith[-10:]) / len(faith[-10:]),
                        "expected_open": float(l0.item()),
                        "n_nodes": sum(len(k) for k in kept.values())})
    bar.close()
    return MaskPath(circuits, history)


def evaluate_path(model, sset: SAESet, task, g: P.Grouped, kind: str,
                  circuits: list[tuple[float, dict]], *, ablate: str = "mean",
                  seed: int = 0, progress: bool = True) -> dict:
    """The faithfulness sweep over given circuits (the λ path), shaped like
    positional_sweep.evaluate: faithfulness, a random circuit of the same per-hook size,
    completeness; scored with hard gates in the batched forward (equal to the reference
    ablation for `ablate="mean"`, see tests/test_sparse_circuits.py), so that a closed node
    can also take its corrupt-prompt value."""
    run = Runner(model, sset, task, g, ablate)
    m = run.hard
    m_full, m_empty = m(None, kind), m(run.closed(), kind)
    span = m_full - m_empty
    norm = (lambda x: (x - m_empty) / span) if span != 0 else (lambda x: float("nan"))
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for lam, k in tqdm(circuits, desc=f"faithfulness ({kind})", disable=not progress):
        m_c, m_r = m(k, kind), m(P.random_like(g, k, kind, gen), kind)
        m_rest = m(k, kind, invert=True)
        rows.append(SweepRow(lam, sum(len(v) for v in k.values()), norm(m_c), norm(m_r),
                             m_c, m_r, norm(m_rest), m_rest))
    ok = [i for i, r in enumerate(rows) if r.faithfulness >= TARGET]
    best = (min(ok, key=lambda i: rows[i].n_nodes) if ok
            else max(range(len(rows)), key=lambda i: rows[i].faithfulness))
    r = rows[best]
    return {
        "m_full": m_full, "m_empty": m_empty, "ablate": ablate,
        "sweep": [asdict(x) for x in rows],
        "circuit": {"n_nodes": r.n_nodes, "metric": r.metric, "faithfulness": r.faithfulness,
                    "completeness_metric": r.completeness_metric,
                    "completeness": r.completeness},
        "chosen": best,
        "nodes_for_80": nodes_for(rows),
        "at_80": next((asdict(x) for x in sorted(rows, key=lambda x: x.n_nodes)
                       if x.faithfulness >= TARGET), None),
    }
