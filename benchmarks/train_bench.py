"""Time one TopK training step: saebench vs SAELens's own TopK step vs the six-matmul floor.

    .venv/bin/python benchmarks/train_bench.py            # GPU shapes on CUDA, CPU shapes otherwise
    .venv/bin/python benchmarks/train_bench.py --cpu      # force the CPU shapes
    .venv/bin/python benchmarks/train_bench.py --archs    # step time of every architecture

`--archs` times every registered architecture's step at one shape (the first width), relative
to TopK of the same shape, next to SAELens's own BatchTopK and matching-pursuit steps (its MP
at 32 iterations, as our MP at T = k = 32). gsae gets a random gradient batch.

GPU shapes: d_in 576, d_sae 16384 and 24576, k 32, batch 8192 (bf16 autocast for everyone).
CPU shapes: d_in 576, d_sae 4096 and 8192, k 32, batch 2048 (fp32).

A step is what each trainer does per batch: forward, loss, backward, Adam step, plus its own
bookkeeping (our decoder renormalisation and fire counting; SAELens's fire counting and
gradient clipping). The floor is the six dense matmuls of an SAE step (encode, decode, and the
four gradient products) with nothing else: a dense trainer cannot beat it, a sparse one can.
Each time is the best of `--reps` repetitions of `--steps` steps, so neighbours on a shared
machine inflate it less.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable
from types import SimpleNamespace

import torch

from trainers import registry
from trainers.dead import fires
from trainers.loop import needs_grads

# The architectures' step-time targets relative to TopK (issue #5).
TARGETS = {"mutual_choice": 1.3, "feature_choice": 1.3, "gsae": 1.3, "mp": 3.0}
SAELENS_PEERS = {"batchtopk": "batchtopk", "mp": "matching_pursuit"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(step: Callable[[], None], device, steps: int, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / steps)
    return best


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def ours(x: torch.Tensor, d_sae: int, k: int, dead: torch.Tensor | None,
         arch: str = "topk") -> Callable[[], None]:
    spec = registry.get(arch)
    sae = spec.model(x.shape[1], spec.config(d_sae=d_sae, k=k)).to(x.device)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4, eps=6.25e-10, fused=True)
    grad = torch.randn_like(x) if needs_grads(sae) else None
    ctx = SimpleNamespace(step=0, dead_mask=dead, grad=grad)

    def step() -> None:
        with _autocast(x.device):
            out = sae.loss(x, ctx)
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        opt.step()
        if hasattr(sae, "after_step"):
            sae.after_step()
        fires(out.codes, d_sae)

    return step


def _saelens_sae(kind: str, d_in: int, d_sae: int, k: int, device: torch.device):
    import sae_lens

    # Defaults, as SAELens trains: dense codes (its use_sparse_activations=True fails in
    # backward on torch 2.13: aten::view has no SparseCPU kernel).
    if kind == "topk":
        cfg = sae_lens.TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, device=str(device))
        return sae_lens.TopKTrainingSAE(cfg)
    if kind == "batchtopk":
        cfg = sae_lens.BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k,
                                                  device=str(device))
        return sae_lens.BatchTopKTrainingSAE(cfg)
    from sae_lens.saes.matching_pursuit_sae import (
        MatchingPursuitTrainingSAE,
        MatchingPursuitTrainingSAEConfig,
    )

    # k iterations, no early stop: the same work as our MP at T = k.
    cfg = MatchingPursuitTrainingSAEConfig(
        d_in=d_in, d_sae=d_sae, device=str(device), residual_threshold=0.0, max_iterations=k,
        stop_on_duplicate_support=False)
    return MatchingPursuitTrainingSAE(cfg)


def saelens(x: torch.Tensor, d_sae: int, k: int, dead: torch.Tensor | None,
            kind: str = "topk") -> Callable[[], None]:
    from sae_lens.saes.sae import TrainStepInput

    sae = _saelens_sae(kind, x.shape[1], d_sae, k, x.device).to(x.device)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    since_fired = torch.zeros(d_sae, device=x.device)

    def step() -> None:
        # The body of SAELens's SAETrainer._train_step (6.54), minus its schedulers.
        with _autocast(x.device):
            out = sae.training_forward_pass(TrainStepInput(
                sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=0,
                is_logging_step=False))
            with torch.no_grad():
                did_fire = out.feature_acts.bool().float().sum(-2).bool()
                if did_fire.is_sparse:
                    did_fire = did_fire.to_dense()
                since_fired.add_(1)
                since_fired[did_fire] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    return step


def floor(x: torch.Tensor, d_sae: int) -> Callable[[], None]:
    dtype = torch.bfloat16 if x.device.type == "cuda" else torch.float32
    b, d_in = x.shape
    xx = x.to(dtype)
    W_enc = torch.randn(d_in, d_sae, device=x.device, dtype=dtype)
    W_dec = torch.randn(d_sae, d_in, device=x.device, dtype=dtype)
    codes = torch.randn(b, d_sae, device=x.device, dtype=dtype)
    g = torch.randn(b, d_in, device=x.device, dtype=dtype)

    def step() -> None:
        xx @ W_enc  # encode
        codes @ W_dec  # decode
        g @ W_dec.t()  # d loss / d codes
        codes.t() @ g  # d loss / d W_dec
        xx.t() @ codes  # d loss / d W_enc
        codes @ W_enc.t()  # d loss / d x

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="CPU shapes even when CUDA exists")
    parser.add_argument("--steps", type=int, default=None, help="steps per repetition")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (best is reported)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument("--archs", action="store_true", help="time every architecture")
    parser.add_argument("--batch", type=int, default=0, help="tokens per step (0: by device)")
    parser.add_argument("--width", type=int, default=0, help="d_sae for --archs (0: by device)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    batch, widths = (8192, (16384, 24576)) if cuda else (2048, (4096, 8192))
    batch = args.batch or batch
    steps = args.steps or (20 if cuda else 3)
    d_in, k = 576, 32
    name = (torch.cuda.get_device_name() if cuda else
            f"CPU ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}), "
            f"{torch.get_num_threads()} threads")
    print(f"device: {name}; torch {torch.__version__}; d_in {d_in}, k {k}, batch {batch}; "
          f"{'bf16 autocast' if cuda else 'fp32'}; best of {args.reps}x{steps} steps\n")
    print("| d_sae | dead | step | ms/step | tokens/s | vs SAELens | vs floor |")
    print("|---|---|---|---|---|---|---|")
    x = torch.randn(batch, d_in, device=device)
    if args.archs:
        return arch_table(x, args.width or widths[0], k, device, steps, args.reps)
    for d_sae in widths:
        for n_dead in (0, d_sae // 10):
            dead = torch.zeros(d_sae, dtype=torch.bool, device=device)
            dead[:n_dead] = True
            dead_arg = dead if n_dead else None
            runs = {"saebench": ours(x, d_sae, k, dead_arg),
                    "SAELens TopK": saelens(x, d_sae, k, dead_arg)}
            if n_dead == 0:
                runs["six-matmul floor"] = floor(x, d_sae)
            times = {label: _time(fn, device, steps, args.reps) for label, fn in runs.items()}
            del runs
            lens = min(t for label, t in times.items() if label.startswith("SAELens"))
            for label, t in times.items():
                vs_lens = f"{lens / t:.2f}x" if label == "saebench" else ""
                vs_floor = f"{times['six-matmul floor'] / t:.2f}x" if "six-matmul floor" in times \
                    else ""
                dead_pct = f"{100 * n_dead / d_sae:.0f}%"
                print(f"| {d_sae} | {dead_pct} | {label} | {1e3 * t:.1f} | {batch / t:,.0f} | "
                      f"{vs_lens} | {vs_floor} |", flush=True)


def arch_table(x: torch.Tensor, d_sae: int, k: int, device: torch.device, steps: int,
               reps: int) -> None:
    """Every architecture's step at one shape, relative to TopK, with SAELens's peers.

    Repetitions go round-robin over all the steps and each keeps its best, so a noisy
    neighbour on a shared machine slows every contender alike instead of one of them."""
    print(f"d_sae {d_sae}; no dead latents; best of {reps} round-robin repetitions\n")
    runs = {arch: ours(x, d_sae, k, None, arch) for arch in registry.ARCHITECTURES}
    for arch, kind in SAELENS_PEERS.items():
        if arch in runs:
            runs[f"SAELens {kind}"] = saelens(x, d_sae, k, None,
                                              "batchtopk" if arch == "batchtopk" else "mp")
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(reps):
        for label, step in runs.items():
            best[label] = min(best[label], _time(step, device, steps, 1, warmup=1))
    print("| architecture | ms/step | tokens/s | vs topk (time) | target | SAELens same arch |")
    print("|---|---|---|---|---|---|")
    for arch in registry.ARCHITECTURES:
        t, peer = best[arch], ""
        if arch in SAELENS_PEERS:
            t_lens = best[f"SAELens {SAELENS_PEERS[arch]}"]
            peer = f"{1e3 * t_lens:.1f} ms ({t_lens / t:.2f}x ours)"
        target = f"≤ {TARGETS[arch]}x" if arch in TARGETS else ""
        print(f"| {arch} | {1e3 * t:.1f} | {x.shape[0] / t:,.0f} | {t / best['topk']:.2f}x | "
              f"{target} | {peer} |", flush=True)


if __name__ == "__main__":
    main()
