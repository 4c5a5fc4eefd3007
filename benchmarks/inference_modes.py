"""Inference-time sparsity rules on trained SAEs: MP's adaptive stopping, k-sparse α·k for TopK.

    .venv/bin/python benchmarks/inference_modes.py --store runs/p/store.duckdb \
        --mp runs/p/pareto/mp-k32-s0 --topk runs/p/pareto/topk-k32-s0

MP (Costa et al. 2025): the SAE as trained (T = k steps at most, stop on an unchanged support),
then with the step cap off (at most d_in steps) and a residual-norm threshold τ at three
values: the 75th, 50th and 25th percentiles of the as-trained residual norm ‖x − x̂‖ on the
held-out tokens, so the rule has each token stop once its error is as small as a typical
as-trained token's. TopK (Makhzani & Frey 2013, "k-Sparse Autoencoders", §3: train with k,
encode with the top α·k at test time): α ∈ {1, 2, 3}. Each variant gets the core eval (EV,
CE recovered, KL on the same held-out tokens; clean and ablated passes shared) and the per-token
L0 distribution. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch


def _l0_and_residual(sae, store, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token L0 and residual norm ‖x − x̂‖ over the first n held-out tokens."""
    l0, res = [], []
    with torch.inference_mode():
        for x in store.iter_activations("heldout", 2048, limit=n_tokens):
            x = x.float()
            codes = sae.encode(x)
            l0.append((codes > 0).sum(1))
            res.append((x - sae.decode(codes)).norm(dim=1))
    return torch.cat(l0)[:n_tokens], torch.cat(res)[:n_tokens]


def _row(name: str, sae, ctx_base, store, cfg, n_tokens: int) -> str:
    from saebench.evals.core import run

    ctx = dataclasses.replace(ctx_base, sae=sae)
    t0 = time.perf_counter()
    m = run(ctx, cfg).metrics
    l0, _ = _l0_and_residual(sae, store, n_tokens)
    q = torch.quantile(l0.float(), torch.tensor([0.1, 0.5, 0.9]))
    return (f"| {name} | {m['l0']:.1f} | {q[0]:.0f} / {q[1]:.0f} / {q[2]:.0f} | {int(l0.max())} | "
            f"{m['explained_variance']:.3f} | {m['ce_recovered_vs_mean_ablation']:.3f} | "
            f"{m['kl_sae']:.3f} | {time.perf_counter() - t0:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--mp", type=Path, default=None, help="an MP SAE folder")
    parser.add_argument("--topk", type=Path, default=None, help="a TopK SAE folder")
    parser.add_argument("--alphas", nargs="+", type=float, default=[1, 2, 3])
    parser.add_argument("--ce-tokens", type=int, default=4096)
    args = parser.parse_args()
    from saebench.evals.configs import CoreConfig
    from saebench.evals.downstream import shared_baselines
    from saebench.evals.runner import open_context
    from store.activation_store import open_store
    from store.models import load_model
    from trainers.mp import MPSAE

    store = open_store(args.store)
    n = store.n_tokens("heldout")
    model = load_model(str(store.meta["model"]), "cpu")
    cfg = CoreConfig(ce_tokens=args.ce_tokens)
    head = ("| SAE and rule | L0 mean | L0 p10 / p50 / p90 | L0 max | EV | CE rec. (mean) | KL "
            "| s |\n|---|---|---|---|---|---|---|---|")
    rows = []
    with shared_baselines():
        if args.mp:
            ctx = open_context(args.mp, args.store, "cpu")
            ctx.model_loader = lambda: model
            sae = ctx.sae
            rows.append(_row(f"mp as trained (T ≤ {sae.k}, stop on repeat)", sae, ctx, store,
                             cfg, n))
            _, res = _l0_and_residual(sae, store, n)
            for pct in (75, 50, 25):
                tau = float(torch.quantile(res, pct / 100))
                rule = dataclasses.replace(sae.cfg, residual_threshold=tau, cap_steps=False)
                adaptive = MPSAE(sae.d_in, rule)
                adaptive.load_state_dict(sae.state_dict())
                rows.append(_row(f"mp, no cap, τ = p{pct} of trained ‖r‖ ({tau:.2f})",
                                 adaptive.eval(), ctx, store, cfg, n))
                print(rows[-1], flush=True)
        if args.topk:
            ctx = open_context(args.topk, args.store, "cpu")
            ctx.model_loader = lambda: model
            k = ctx.sae.k
            for alpha in args.alphas:
                ctx.sae.k = round(alpha * k)  # encode_sparse reads self.k
                rows.append(_row(f"topk k={k}, encode with α·k = {ctx.sae.k}", ctx.sae, ctx,
                                 store, cfg, n))
                print(rows[-1], flush=True)
    print(f"\nstore {args.store}; {n} held-out tokens (L0, EV), CE/KL on {args.ce_tokens}\n")
    print(head + "\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
