"""The subspace-patching illusion check (arXiv 2311.17030) on a real model's MLP SAE.

Run: `.venv/bin/python benchmarks/illusion_bench.py --sae runs/illusion/saes/topk-mlp6
[--n 32] [--top 20] [--random 10] [--json OUT]`. For an SAE at blocks.L.mlp.hook_post it
prints W_out's singular-value spread at that layer, then the per-latent split (null-space share
of the squared norm; IOI logit-difference change when patching the clean run with the corrupt
projection along the full direction, its row-space part and its null-space part) for the SAE's
top latents by activation on the IOI prompts, and the same for two controls: random Gaussian
directions, and the difference of the clean and corrupt mean activations (the direction a
mean-difference patch would pick). Markdown tables plus the machine, load and git commit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

from saebench.circuits.saes import load_set
from saebench.illusion import IllusionConfig, task_prompts
from saebench.illusion_check import check_directions, check_latents, summary, top_latents
from saebench.tasks import get_task
from saebench.tasks.run import score


def _mean_difference(model, hook: str, batch) -> torch.Tensor:
    """Mean over pairs and real positions of h(clean) − h(corrupt) at `hook`."""
    outs = []

    def keep(act, hook):
        outs.append(act)

    for tokens in (batch.clean, batch.corrupt):
        with torch.inference_mode():
            model.run_with_hooks(tokens, fwd_hooks=[(hook, keep)],
                                 stop_at_layer=int(hook.split(".")[1]) + 1)
    real = torch.arange(batch.clean.shape[1])[None] <= batch.pos[:, None]
    return (outs[0] - outs[1])[real].mean(0)[None]


def _table(rows: list[dict], key: str) -> str:
    head = (f"| {key} | null share ‖v₀‖²/‖v‖² | effect full | full / gap | effect row part | "
            "effect null part | share needing null |\n|---|---|---|---|---|---|---|\n")
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    return head + "\n".join(
        f"| {r.get(key, i)} | {r['null_share']:.3f} | {r['effect_full']:.4f} | "
        f"{fmt(r['full_of_gap'])} | "
        f"{r['effect_row']:.4f} | {r['effect_null']:.1e} | {fmt(r['share_needing_null'])} |"
        for i, r in enumerate(rows))


def _optimised(model, hook, task, a, prompts, cfg) -> dict:
    """DAS-style direction fitted on --das-pairs pairs of another seed, checked on the test set."""
    from saebench.illusion_das import optimise_direction

    t = time.perf_counter()
    train = task_prompts(task, task.batch(model.tokenizer, a.das_pairs, a.seed + 1))
    d_mlp = model.blocks[int(hook.split(".")[1])].mlp.W_out.shape[0]
    u = optimise_direction(model, hook, train, d_mlp, steps=a.das_steps, lr=a.das_lr,
                           seed=a.seed, progress=True)
    print(f"optimised direction: {a.das_steps} Adam steps (lr {a.das_lr}) on {a.das_pairs} "
          f"pairs in {time.perf_counter() - t:.1f} s")
    return check_directions(model, hook, u[None], prompts, cfg)


def _machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return (f"{os.cpu_count()} × {cpu}; torch threads {torch.get_num_threads()}; "
            f"loadavg {open('/proc/loadavg').read().split()[:3]}; git {commit}; "
            f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sae", type=Path, required=True)
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--random", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--das-steps", type=int, default=30, help="0: no optimised direction")
    p.add_argument("--das-pairs", type=int, default=16)
    p.add_argument("--das-lr", type=float, default=0.05)
    p.add_argument("--no-latents", action="store_true", help="only the optimised direction")
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print(f"machine: {_machine()}")
    sset, model = load_set([a.sae])
    hook, sae = sset.hooks[0], sset.saes[0]
    task = get_task("ioi")
    batch = task.batch(model.tokenizer, a.n, a.seed)
    s = score(model, task, batch)
    print(f"IOI: {a.n} pairs, clean accuracy {s['ok'].float().mean():.2f}, mean logit diff "
          f"clean {s['clean'].mean():.3f}, corrupt {s['corrupt'].mean():.3f}")
    W = model.blocks[int(hook.split(".")[1])].mlp.W_out.detach()
    sv = torch.linalg.svdvals(W.double())
    print(f"{hook}: W_out {tuple(W.shape)}, singular values "
          f"max {sv[0]:.3f} min {sv[-1]:.4f} (ratio {sv[-1] / sv[0]:.2e})")
    prompts, cfg = task_prompts(task, batch), IllusionConfig()
    start, res = time.perf_counter(), {}
    if not a.no_latents:
        latents = top_latents(model, sae, hook, batch.clean, batch.pos, a.top)
        res["latents"] = check_latents(model, sae, hook, latents, prompts, cfg, progress=True)
        print(f"{len(latents)} latents checked in {time.perf_counter() - start:.1f} s "
              f"({3 * len(latents)} patches of {a.n} pairs)")
        print(_table(res["latents"]["rows"], "latent"))
        gen = torch.Generator().manual_seed(a.seed)
        rand = torch.randn(a.random, sae.d_in, generator=gen)
        res["random"] = check_directions(model, hook, rand, prompts, cfg)
        diff = _mean_difference(model, hook, batch)
        res["mean_difference"] = check_directions(model, hook, diff, prompts, cfg)
    if a.das_steps:
        res["optimised"] = _optimised(model, hook, task, a, prompts, cfg)
    for name in res.keys() - {"latents"}:
        print(f"\n{name}:\n{_table(res[name]['rows'], 'direction')}")
    first = next(iter(res.values()))
    print(f"\nwhole-hook patch: {first['effect_layer']:.4f} (clean {first['clean_metric']:.3f}, "
          f"corrupt {first['source_metric']:.3f})")
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
    for name, r in res.items():
        print(f"\nsummary {name}: {json.dumps(summary(r['rows']))}")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
