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

Every forward runs all pairs in one right-padded batch and starts at the first hook's block,
from the clean residual stream cached once: nothing before the first hook is gated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from saebench.circuits import positional as P
from saebench.circuits.saes import SAESet
from saebench.circuits.splice import encode_split, record_hook, tokens_of
from saebench.tasks import TaskBatch

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
    """The hard circuits read off the gates after each λ stage, and the final gate logits."""

    circuits: list[tuple[float, dict[str, Int[Tensor, "K 2"]]]]
    """(λ, hook -> kept (role or -1, node)) per stage, largest λ last."""
    logits: dict[str, Tensor]
    """hook -> gate logits [roles or 1, d_sae + 1] at the end of the run."""
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


def gated_hook(sae, gate: Float[Tensor, "pairs pos node"], mean: dict) -> Callable:
    """Each node moved towards its mean by (1 − gate): gate 1 keeps it, 0 mean-ablates it
    (saebench.circuits.splice.ablate_hook with a soft keep per pair). mean: {"c": [pairs,
    pos, d_sae], "e": [pairs, pos, d_in]}."""

    def fn(x: Tensor, hook) -> Tensor:
        (b, s), flat = x.shape[:2], tokens_of(x)
        d = flat.shape[1]
        c, e = encode_split(sae, flat)
        drop = 1 - gate[:, :s]
        dc = (mean["c"][:, :s] - c.view(b, s, -1)) * drop[..., :-1]
        de = (mean["e"][:, :s] - e.view(b, s, d)) * drop[..., -1:]
        return (flat.view(b, s, d) + (dc.reshape(b * s, -1) @ sae.W_dec).view(b, s, d)
                + de).reshape(x.shape)

    return fn


def first_layer(hooks: list[str]) -> int:
    """The block of the first hook (`blocks.L.…`); 0 for hooks before the blocks."""
    name = hooks[0]
    return int(name.split(".")[1]) if name.startswith("blocks.") else 0


def first_last(hooks: list[str]) -> int | None:
    """The block after the last hook: a forward may stop there (None: run them all)."""
    name = hooks[-1]
    return int(name.split(".")[1]) + 1 if name.startswith("blocks.") else None


class Runner:
    """Gated forwards of all template groups in one right-padded batch, from the first
    hook's block on, over the clean residual stream cached once (hooks before it never
    change it). Right padding is exact: attention is causal, and the metric reads each
    prompt's last real token."""

    def __init__(self, model, sset: SAESet, g: P.Grouped, ablate: str = "mean"):
        self.model, self.sset, self.g = model, sset, g
        self.layer = first_layer(sset.hooks)
        dev = model.cfg.device
        width = max(grp.batch.clean.shape[1] for grp in g.groups)
        pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
        cat = lambda f: torch.cat([getattr(grp.batch, f) for grp in g.groups])  # noqa: E731
        tokens = torch.cat([pad(grp.batch.clean) for grp in g.groups]).to(dev)
        self.batch = TaskBatch(clean=tokens, corrupt=tokens, pos=cat("pos").to(dev),
                               answer=cat("answer").to(dev), wrong=cat("wrong").to(dev),
                               prompts=tuple(p for grp in g.groups for p in grp.batch.prompts))
        # Each pair's weight in the mean over all pairs (groups weigh by their size already).
        self.weight = torch.cat([torch.full((len(grp.batch),), grp.weight / len(grp.batch))
                                 for grp in g.groups]).to(dev)
        # Role index of every (pair, position); padding positions point at role 0, whose
        # gate they never need (nothing after the last real token reaches the metric).
        role = [torch.tensor([g.roles.index(r) for r in grp.roles]) for grp in g.groups]
        self.role = torch.cat([pad(r[None]).expand(len(grp.batch), -1)
                               for r, grp in zip(role, g.groups, strict=True)]).to(dev)
        # Per-pair ablation values: each pair's own template group's means, or the values on
        # the pair's corrupt prompt (a counterfactual patch).
        self.means = {h: {k: torch.cat([pad_rows(grp.attr.means[h][k], width)[None]
                                        .expand(len(grp.batch), -1, -1) for grp in g.groups])
                          .to(dev) for k in ("c", "e")} for h in sset.hooks}
        if ablate == "corrupt":
            bad = torch.cat([pad(grp.batch.corrupt) for grp in g.groups]).to(dev)
            rec: dict = {}
            with torch.no_grad():
                model.run_with_hooks(bad, fwd_hooks=[(h, record_hook(sae, rec))
                                                     for h, sae in sset.items()],
                                     stop_at_layer=first_last(sset.hooks))
            b = len(bad)
            self.means = {h: {k: v.view(b, width, -1) for k, v in rec[h].items()}
                          for h in sset.hooks}
        name = f"blocks.{self.layer}.hook_resid_pre"
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=name,
                                            stop_at_layer=self.layer + 1)
        self.prefix = cache[name]

    def metric(self, hooks: list, rows: Tensor | None = None) -> Tensor:
        """Per-pair metric under `hooks`, of the pairs `rows` (None: all)."""
        model, batch, x = self.model, self.batch, self.prefix
        if rows is not None:
            keep = rows.tolist()
            x, batch = x[rows], replace(
                batch, clean=batch.clean[rows], corrupt=batch.corrupt[rows], pos=batch.pos[rows],
                answer=batch.answer[rows], wrong=batch.wrong[rows],
                prompts=tuple(batch.prompts[i] for i in keep))
        with model.hooks(fwd_hooks=hooks):
            for block in model.blocks[self.layer :]:
                x = block(x)
        picked = x[torch.arange(len(batch.pos), device=x.device), batch.pos][:, None]
        final = getattr(model, "ln_final", None) or (lambda y: y)
        logits = model.unembed(final(picked))
        return self.task.metric(logits, replace(batch, pos=torch.zeros_like(batch.pos)))

    def per_pair(self, task, gates: dict[str, Tensor], kind: str,
                 rows: Tensor | None = None) -> Tensor:
        """Per-pair metric with `gates` [roles or 1, d_sae + 1] per hook."""
        self.task = task
        role = self.role if rows is None else self.role[rows]
        hooks = []
        for h, sae in self.sset.items():
            gate = gates[h][0].expand(*role.shape, -1) if kind == "summed" else gates[h][role]
            means = self.means[h] if rows is None else {k: v[rows]
                                                        for k, v in self.means[h].items()}
            hooks.append((h, gated_hook(sae, gate, means)))
        return self.metric(hooks, rows)

    def gated(self, task, gates: dict[str, Tensor], kind: str) -> Tensor:
        """Mean metric over all pairs with `gates` [roles or 1, d_sae + 1] per hook."""
        return (self.per_pair(task, gates, kind) * self.weight).sum()


def pad_rows(t: Tensor, width: int) -> Tensor:
    """[pos, d] zero-padded to [width, d]."""
    return torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[0]))


def learn(model, sset: SAESet, task, g: P.Grouped, kind: str,
          settings: MaskSettings = MaskSettings(), progress: bool = True,
          ablate: str = "mean") -> MaskPath:
    """Train the gates along the λ path; see the module docstring. `ablate`: what a closed
    node is set to, its template-group mean or its value on the pair's corrupt prompt."""
    run = Runner(model, sset, g, ablate)
    dev = model.cfg.device
    n_rows = 1 if kind == "summed" else len(g.roles)
    ones = {h: torch.ones(n_rows, s.d_sae + 1, device=dev) for h, s in sset.items()}
    zeros = {h: torch.zeros_like(v) for h, v in ones.items()}
    with torch.no_grad():  # per pair, so that a minibatch can be normalised by its own
        full = run.per_pair(task, ones, kind)
        empty = run.per_pair(task, zeros, kind)
    n_pairs = len(full)
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
            rows = torch.arange(n_pairs, device=full.device)
            if settings.batch_pairs and settings.batch_pairs < n_pairs:
                rows = torch.randperm(n_pairs, generator=gen)[: settings.batch_pairs]
                rows = rows.sort().values.to(full.device)
            w = run.weight[rows] / run.weight[rows].sum()
            m_full, m_empty = (full[rows] * w).sum(), (empty[rows] * w).sum()
            m = (run.per_pair(task, gates, kind, rows) * w).sum()
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
    return MaskPath(circuits, {h: t.detach().cpu() for h, t in logits.items()}, history)


def gates_of(kept: dict[str, Tensor], rows: int, sizes: dict[str, int], *,
             invert: bool = False) -> dict[str, Tensor]:
    """Hard 0/1 gates [rows, d_sae + 1] per hook from kept (role or -1 for all, node)."""
    out = {}
    for h, k in kept.items():
        t = torch.zeros(rows, sizes[h] + 1)
        every = k[:, 0] < 0
        t[:, k[every, 1]] = 1
        t[k[~every, 0], k[~every, 1]] = 1
        out[h] = 1 - t if invert else t
    return out


def evaluate_path(model, sset: SAESet, task, g: P.Grouped, kind: str,
                  circuits: list[tuple[float, dict]], *, ablate: str = "mean",
                  seed: int = 0, progress: bool = True) -> dict:
    """The faithfulness sweep over given circuits (the λ path), shaped like
    positional_sweep.evaluate: faithfulness, a random circuit of the same per-hook size,
    completeness; scored with hard gates in the batched forward (equal to the reference
    ablation for `ablate="mean"`, see tests/test_sparse_circuits.py), so that a closed node
    can also take its corrupt-prompt value."""
    from dataclasses import asdict

    from saebench.circuits.faithfulness import TARGET, SweepRow, nodes_for

    run = Runner(model, sset, g, ablate)
    rows_n = 1 if kind == "summed" else len(g.roles)
    sizes = {h: s.d_sae for h, s in sset.items()}

    def m(kept: dict | None, invert: bool = False) -> float:
        gates = ({h: torch.ones(rows_n, d + 1) for h, d in sizes.items()} if kept is None
                 else gates_of(kept, rows_n, sizes, invert=invert))
        with torch.no_grad():
            return run.gated(task, {h: t.to(model.cfg.device) for h, t in gates.items()},
                             kind).item()

    m_full = m(None)
    m_empty = m({h: torch.zeros(0, 2, dtype=torch.long) for h in sset.hooks})
    span = m_full - m_empty
    norm = (lambda x: (x - m_empty) / span) if span != 0 else (lambda x: float("nan"))
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for lam, k in tqdm(circuits, desc=f"faithfulness ({kind})", disable=not progress):
        m_c, m_r = m(k), m(P.random_like(g, k, kind, gen))
        m_rest = m(k, invert=True)
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
