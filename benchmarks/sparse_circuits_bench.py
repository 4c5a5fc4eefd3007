"""Per-position vs summed IOI circuits on SmolLM2 (issue #15 item 6): nodes for 80% faithfulness.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/sparse_circuits_bench.py \\
        --saes runs/sparse/saes/L15-topk runs/sparse/saes/L15-mp --n 40

One SAE per set (a single hook), the model loaded once. For each SAE three node kinds:
- "today": `saebench circuits` as it is, pairs of mixed templates, nodes summed over
  positions, mean-ablated to the clean mean at each absolute position;
- "role": pairs grouped by template, nodes (role, latent), template-group means
  (saebench.circuits.positional; Marks et al. 2024 §4);
- "summed by template": the same groups and means, nodes (latent) at every position.

Nodes for 80% is found by rank, not by a threshold sweep (our choice, to save forwards on a
busy 2-core machine): keep the top-N nodes by |effect|, N = 1, 4, 16, … until faithfulness
≥ 0.8, then bisect N between the last miss and the first hit (4 steps). Faithfulness only; no
random control or completeness (the CLI's sweep has them). Every ablated forward starts at
the SAE's layer from a cached clean prefix, which gives the same metric as the full forward
(checked once per SAE, printed).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from saebench.circuits import positional as P
from saebench.circuits.attribution import Attribution, node_effects
from saebench.circuits.faithfulness import circuit_metric, keep_of
from saebench.circuits.saes import load_set
from saebench.circuits.splice import ablate_hook
from saebench.tasks import get_task


class Tail:
    """The model from one resid_post hook on, over a cached clean prefix per batch."""

    def __init__(self, model, hook: str, batches: list):
        self.model, self.hook = model, hook
        self.layer = int(hook.split(".")[1])
        assert hook.endswith("hook_resid_post"), "the prefix cache needs a resid_post hook"
        self.prefix = []
        with torch.no_grad():
            for b in batches:
                _, cache = model.run_with_cache(b.clean, names_filter=hook,
                                                stop_at_layer=self.layer + 1)
                self.prefix.append(cache[hook])

    @torch.no_grad()
    def metric(self, i: int, task, batch, sae, keep, means) -> float:
        """Mean metric of batch i with `keep` (Bool [pos, node] or None) at the hook."""
        x = ablate_hook(sae, keep, means)(self.prefix[i].clone(), None)
        for block in self.model.blocks[self.layer + 1 :]:
            x = block(x)
        picked = x[torch.arange(len(batch)), batch.pos][:, None]
        logits = self.model.unembed(self.model.ln_final(picked))
        return task.metric(logits, replace(batch, pos=torch.zeros_like(batch.pos))).mean().item()


def ranked(effects: torch.Tensor) -> torch.Tensor:
    """Nodes as (pos or -1, node) rows, largest |effect| first."""
    flat = effects.abs().flatten()
    order = torch.argsort(flat, descending=True, stable=True)
    order = order[flat[order] > 0]  # nodes with exactly no effect never join
    if effects.dim() == 1:
        return torch.stack([torch.full_like(order, -1), order], 1)
    return torch.stack([order // effects.shape[1], order % effects.shape[1]], 1)


def search(faith, nodes: torch.Tensor, target: float = 0.8) -> dict:
    """Smallest top-N (by rank) with faithfulness ≥ target: powers of 4, then 4 bisections."""
    tried: dict[int, float] = {}

    def f(n: int) -> float:
        if n not in tried:
            tried[n] = faith(nodes[:n])
        return tried[n]

    lo, hi = 0, 1
    while f(min(hi, len(nodes))) < target:
        if hi >= len(nodes):
            return {"nodes_for_80": None, "tried": tried, "of": len(nodes)}
        lo, hi = hi, hi * 4
    hi = min(hi, len(nodes))
    for _ in range(4):
        if hi - lo <= 1:
            break
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if f(mid) >= target else (mid, hi)
    return {"nodes_for_80": hi, "faithfulness": tried[hi], "tried": tried, "of": len(nodes)}


def grouped(model, sset, task, g: P.Grouped, kind: str) -> dict:
    hook, sae = sset.items()[0]
    tail = Tail(model, hook, [grp.batch for grp in g.groups])

    def run(k) -> float:
        total = 0.0
        for i, grp in enumerate(g.groups):
            local = None if k is None else {hook: P.in_group(k, g.roles, grp)}
            keep = None if k is None else keep_of(grp.attr, local)[hook]
            total += grp.weight * tail.metric(i, task, grp.batch, sae, keep, grp.attr.means[hook])
        return total

    full, empty = run(None), run(torch.zeros(0, 2, dtype=torch.long))
    nodes = ranked(g.effects[hook] if kind == "role" else P.summed(g)[hook])
    out = search(lambda k: (run(k) - empty) / (full - empty), nodes)
    return {**out, "m_full": full, "m_empty": empty}


def today(model, sset, task, batch, attr: Attribution) -> dict:
    hook, sae = sset.items()[0]
    tail = Tail(model, hook, [batch])
    check = circuit_metric(model, sset, task, batch, attr, {hook: None})
    run = lambda k: tail.metric(  # noqa: E731
        0, task, batch, sae, None if k is None else keep_of(attr, {hook: k})[hook],
        attr.means[hook])
    full, empty = run(None), run(torch.zeros(0, 2, dtype=torch.long))
    print(f"  prefix cache check: full forward {check:.4f}, from layer {tail.layer + 1} "
          f"{full:.4f}", flush=True)
    out = search(lambda k: (run(k) - empty) / (full - empty), ranked(attr.effects[hook]))
    return {**out, "m_full": full, "m_empty": empty}


KINDS = {"role": "per position, by template", "summed": "summed, by template",
         "today": "summed, mixed templates (today)"}


def report(jsonl: Path, figure: Path) -> None:
    """The markdown table of a results file and its figure (faithfulness against top-N)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    print("| SAE | pairs | accuracy | " + " | ".join(KINDS.values())
          + " | today / per position | seconds |")
    print("|---|---|---|" + "---|" * len(KINDS) + "---|---|")
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=110)
    styles = {"role": "-", "summed": "--", "today": ":"}
    for i, r in enumerate(rows):
        cells = []
        for kind in KINDS:
            k = r.get(kind) or {}
            n = k.get("nodes_for_80")
            cells.append("–" if not k else f"not reached ({k['of']} nodes)" if n is None
                         else f"{n} of {k['of']} (f {k['faithfulness']:.2f})")
            tried = sorted((int(a), b) for a, b in k.get("tried", {}).items())
            if tried:
                ax.plot(*zip(*tried, strict=True), marker="o", ms=3, ls=styles[kind],
                        color=f"C{i}", label=f"{r['sae']}, {KINDS[kind]}")
        a, b = (r.get("today") or {}).get("nodes_for_80"), (r.get("role") or {}).get("nodes_for_80")
        ratio = f"{a / b:.0f}×" if a and b else "–"
        acc = f"{r['accuracy']:.2f}" if "accuracy" in r else "–"
        print(f"| {r['sae']} | {r['n']} | {acc} | " + " | ".join(cells)
              + f" | {ratio} | {r['seconds']:.0f} |")
    ax.axhline(0.8, color="black", lw=0.6, ls="--")
    ax.set_xscale("log")
    ax.set_ylim(-0.5, 1.5)
    ax.set_xlabel("top-N nodes by |effect| kept (the rest mean-ablated)")
    ax.set_ylabel("faithfulness")
    ax.set_title("IOI on SmolLM2-135M, SAEs at blocks.15.hook_resid_post: per-position vs summed")
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saes", nargs="+", type=Path, default=[])
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--kinds", nargs="+", default=["role", "today", "summed"])
    parser.add_argument("--out", type=Path, default=Path("runs/sparse/sparse_bench.jsonl"))
    parser.add_argument("--figure", type=Path, default=Path("benchmarks/figures/sparse_ioi.png"))
    args = parser.parse_args()
    if not args.saes:  # no SAEs: the table and figure of what --out already holds
        report(args.out, args.figure)
        return
    torch.set_num_threads(1)
    task = get_task("ioi")
    model = None
    for folder in args.saes:
        sset, model = load_set([folder], model)
        start = time.perf_counter()
        res: dict = {"sae": folder.name, "n": args.n, "hook": sset.hooks[0]}
        if {"role", "summed"} & set(args.kinds):
            groups = P.template_groups(task, model.tokenizer, args.n, 0)
            g = P.role_effects(model, sset, task, groups, progress=False)
            res["accuracy"] = sum(x.weight * x.attr.accuracy for x in g.groups)
            res["roles"], res["attr_s"] = len(g.roles), time.perf_counter() - start
            for kind in ("role", "summed"):
                if kind in args.kinds:
                    t = time.perf_counter()
                    res[kind] = {**grouped(model, sset, task, g, kind),
                                 "seconds": time.perf_counter() - t}
                    print(folder.name, kind, res[kind]["nodes_for_80"], flush=True)
        if "today" in args.kinds:
            t = time.perf_counter()
            batch = task.batch(model.tokenizer, args.n, 0)
            attr = node_effects(model, sset, task, batch, progress=False)
            res["today"] = {**today(model, sset, task, batch, attr),
                            "seconds": time.perf_counter() - t}
            print(folder.name, "today", res["today"]["nodes_for_80"], flush=True)
        res["seconds"] = time.perf_counter() - start
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.write(json.dumps(res, default=str) + "\n")


if __name__ == "__main__":
    main()
