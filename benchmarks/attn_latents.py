"""Issue #15 item 5: core metrics of a hook_z SAE beside a residual one, and a handful of its
latents with their head shares and top tokens (markdown on stdout).

    .venv/bin/python benchmarks/attn_latents.py --attn runs/attn/saes/topk-k32-s0 \
        --resid runs/p/pareto/topk-k32-s0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow.parquet as pq

METRICS = ("l0", "explained_variance", "fvu", "cosine_sim", "ce_clean", "ce_sae", "delta_ce",
           "ce_recovered_vs_zero_ablation", "ce_recovered_vs_mean_ablation", "kl_sae",
           "pct_dead", "pct_dense_1pct", "n_tokens", "ce_tokens")


def core_table(folders: list[Path]) -> str:
    cores = [json.loads((f / "evals" / "core.json").read_text())["metrics"] for f in folders]
    hooks = [json.loads((f / "cfg.json").read_text())["metadata"]["hook_name"] for f in folders]
    lines = ["| metric | " + " | ".join(f"{f.name} ({h})" for f, h in zip(folders, hooks,
                                                                          strict=True)) + " |",
             "|---|" + "---|" * len(folders)]
    for m in METRICS:
        lines.append(f"| {m} | " + " | ".join(f"{c.get(m, float('nan')):.4g}" for c in cores)
                     + " |")
    return "\n".join(lines)


def latent_table(folder: Path, n_sharp: int, n_spread: int, min_fires: int) -> str:
    index = folder / "index"
    feats = {r["latent"]: r for r in pq.read_table(index / "features.parquet").to_pylist()}
    vocab = {r["token_id"]: r["token"] for r in pq.read_table(index / "vocab.parquet")
             .to_pylist()}
    shares: dict[int, list[float]] = {}
    for r in pq.read_table(index / "head_attribution.parquet").to_pylist():
        shares.setdefault(r["latent"], []).append(r["share"])
    alive = [f for f in feats if feats[f]["fires"] >= min_fires]
    by_max = sorted(alive, key=lambda f: -max(shares[f]))
    # The most head-concentrated latent of each of the n_sharp heads that have the most
    # concentrated latents, then the n_spread most evenly spread latents.
    best: dict[int, int] = {}
    for f in by_max:
        best.setdefault(max(range(len(shares[f])), key=lambda h: shares[f][h]), f)
    picks = list(best.values())[:n_sharp] + by_max[-n_spread:]
    lines = ["| latent | fires | top heads (share) | top tokens |", "|---|---|---|---|"]
    for f in picks:
        top = sorted(range(len(shares[f])), key=lambda h: -shares[f][h])[:3]
        heads = ", ".join(f"H{h} {shares[f][h]:.2f}" for h in top)
        toks = ", ".join(repr(vocab.get(t, t).replace("Ġ", " ").replace("Ċ", "\\n"))
                         for t in feats[f]["top_tokens"] or [])
        lines.append(f"| {f} | {feats[f]['fires']} | {heads} | {toks} |")
    max_share = sorted(max(shares[f]) for f in alive)
    q = {p: max_share[int(p / 100 * (len(max_share) - 1))] for p in (10, 50, 90)}
    tops = [max(range(len(shares[f])), key=lambda h: shares[f][h]) for f in alive]
    counts = ", ".join(f"H{h} {tops.count(h)}" for h in range(len(shares[alive[0]])))
    lines.append(f"\nLargest head share per latent: p10 {q[10]:.3f}, p50 {q[50]:.3f}, "
                 f"p90 {q[90]:.3f}, max {max_share[-1]:.3f} (uniform: "
                 f"{1 / len(shares[alive[0]]):.3f}). Latents by their top head: {counts}.")
    single = sum(s > 0.5 for s in max_share)
    lines.append(f"\n{len(alive)} latents fire ≥ {min_fires} times; {single} of them "
                 f"({100 * single / max(len(alive), 1):.1f}%) put more than half of their "
                 "decoder norm² in one head.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--attn", type=Path, required=True)
    p.add_argument("--resid", type=Path, required=True)
    p.add_argument("--sharp", type=int, default=5)
    p.add_argument("--spread", type=int, default=2)
    p.add_argument("--min-fires", type=int, default=20)
    a = p.parse_args()
    print(core_table([a.attn, a.resid]))
    print()
    print(latent_table(a.attn, a.sharp, a.spread, a.min_fires))


if __name__ == "__main__":
    main()
