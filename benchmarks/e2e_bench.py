"""End-to-end vs local SAEs on the real model: train (resumable), then compare at equal L0.

    .venv/bin/python benchmarks/e2e_bench.py --store runs/p/store.duckdb \
        --local runs/p/pareto/topk-k32-s0 --out runs/p/e2e --tokens 100000

Trains a TopK SAE with `--loss e2e` (and/or e2e+ds) on the store's training windows, started
from the local SAE `--local` (trainers/e2e_init.py), then evaluates both on held-out windows:
CE with each SAE spliced in, CE recovered against zero- and mean-ablation, KL to the clean
model, and the CE reached when each token keeps only its top-m latents by |contribution|
(|code|·‖W_dec row‖), so as to find the m at which the e2e SAE matches the local SAE's CE at
full k. Rerunning resumes an interrupted training run and skips finished ones. Prints markdown
tables and writes `<out>/results.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

from store.activation_store import open_store
from store.models import load_model
from trainers.config import TrainConfig
from trainers.e2e_loss import kl_to_clean, resid_layers
from trainers.e2e_store import train_from_store
from trainers.saelens_format import load_sae, read_meta
from trainers.topk import TopKConfig

M_GRID = (1, 4, 8, 16, 24, 32)


def _train(args, loss: str) -> Path:
    local_cfg = read_meta(args.local)["cfg"]
    cfg = TopKConfig(d_sae=local_cfg["d_sae"], k=local_cfg["k"])
    out = args.out / f"topk-k{cfg.k}-{loss.replace('+', '-')}"
    train = TrainConfig(tokens=args.tokens, batch_size=args.batch_size, lr=args.lr, loss=loss,
                        warmup_steps=args.warmup_steps, seed=0)
    t0 = time.perf_counter()
    train_from_store(args.store, cfg, out, train, init=args.local)
    print(f"{loss}: {time.perf_counter() - t0:.0f} s this session, load {os.getloadavg()}")
    return out


def _keep_top_m(codes: torch.Tensor, W_dec: torch.Tensor, m: int) -> torch.Tensor:
    """Codes with all but each token's m largest |code|·‖W_dec row‖ zeroed."""
    contrib = codes.abs() * W_dec.norm(dim=1)
    top = contrib.topk(m, dim=1).indices
    return torch.zeros_like(codes).scatter_(1, top, codes.gather(1, top))


@torch.no_grad()
def _evaluate(model, hook: str, windows: torch.Tensor, saes: dict, mean: torch.Tensor,
              batch: int) -> dict:
    start, _ = resid_layers(hook, model.cfg.n_layers)
    runs = {"clean": None, "zero_ablation": "zero", "mean_ablation": "mean"}
    runs |= {f"{name}/m{m}": (name, m) for name in saes for m in M_GRID}
    ce = dict.fromkeys(runs, 0.0)
    kl, l0, n_tok, n_kl = dict.fromkeys(runs, 0.0), dict.fromkeys(saes, 0.0), 0, 0
    for lo in range(0, windows.shape[0], batch):
        tokens = windows[lo:lo + batch]
        resid = model(tokens, stop_at_layer=start)
        x = resid[:, 1:]
        codes = {name: sae.encode(x.flatten(0, 1)) for name, sae in saes.items()}
        clean_logits = None
        for run, how in runs.items():
            if how is None:
                new = x
            elif how == "zero":
                new = torch.zeros_like(x)
            elif how == "mean":
                new = mean.expand_as(x)
            else:
                sae = saes[how[0]]
                c = codes[how[0]]
                c = c if how[1] >= sae.k else _keep_top_m(c, sae.W_dec, how[1])
                new = sae.decode(c).view_as(x)
            logits = model(torch.cat([resid[:, :1], new], 1), start_at_layer=start)
            lp = logits[:, 1:-1].log_softmax(-1)
            ce[run] += float(-lp.gather(-1, tokens[:, 2:, None]).sum())
            if how is None:
                clean_logits = logits
            else:
                kl[run] += float(kl_to_clean(clean_logits[:, 1:], logits[:, 1:])) * x.shape[0]
        for name in saes:
            l0[name] += float((codes[name] > 0).sum(1).float().mean()) * x.shape[0]
        n_tok += tokens.shape[0] * (tokens.shape[1] - 2)
        n_kl += x.shape[0]
        print(f"  eval {lo + tokens.shape[0]}/{windows.shape[0]} windows", flush=True)
    ce = {k: v / n_tok for k, v in ce.items()}
    return {"ce": ce, "kl": {k: v / n_kl for k, v in kl.items()},
            "l0": {k: v / n_kl for k, v in l0.items()}, "ce_tokens": n_tok}


def _report(res: dict, saes: dict) -> str:
    ce, kl = res["ce"], res["kl"]
    lines = ["| SAE | L0 | CE | ΔCE | CE rec. (zero) | CE rec. (mean) | KL |",
             "|---|---|---|---|---|---|---|",
             f"| clean | – | {ce['clean']:.4f} | 0 | 1 | 1 | 0 |"]
    for name, sae in saes.items():
        run = f"{name}/m{sae.k}"
        rec = {b: (ce[b] - ce[run]) / (ce[b] - ce["clean"])
               for b in ("zero_ablation", "mean_ablation")}
        lines.append(f"| {name} | {res['l0'][name]:.1f} | {ce[run]:.4f} | "
                     f"{ce[run] - ce['clean']:.4f} | {rec['zero_ablation']:.4f} | "
                     f"{rec['mean_ablation']:.4f} | {kl[run]:.4f} |")
    lines += ["", "| top-m latents kept | " + " | ".join(saes) + " |",
              "|---|" + "---|" * len(saes)]
    for m in M_GRID:
        cells = " | ".join(f"{ce[f'{n}/m{m}']:.4f} (KL {kl[f'{n}/m{m}']:.3f})" for n in saes)
        lines.append(f"| {m} | {cells} |")
    if "local" in saes:
        target = ce[f"local/m{saes['local'].k}"]
        for name in saes:
            hit = next((m for m in M_GRID if ce[f"{name}/m{m}"] <= target), None)
            lines.append(f"\n{name}: smallest m in {list(M_GRID)} with CE ≤ local's CE at full "
                         f"k ({target:.4f}): {hit if hit is not None else 'none'}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", type=Path, default=Path("runs/p/store.duckdb"))
    p.add_argument("--local", type=Path, default=Path("runs/p/pareto/topk-k32-s0"))
    p.add_argument("--out", type=Path, default=Path("runs/p/e2e"))
    p.add_argument("--losses", nargs="+", default=["e2e"], choices=["e2e", "e2e+ds"])
    p.add_argument("--tokens", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=1016, help="spliced tokens per step")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--eval-windows", type=int, default=32)
    p.add_argument("--eval-batch", type=int, default=4)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    folders = {loss: (args.out / f"topk-k32-{loss.replace('+', '-')}") if args.skip_train
               else _train(args, loss) for loss in args.losses}
    store = open_store(args.store)
    model = load_model(store.meta["model"])
    saes = {"local": load_sae(args.local)} | {loss: load_sae(f) for loss, f in folders.items()}
    windows = store.token_windows("heldout")[:args.eval_windows]
    mean = torch.tensor(store.meta["norm"]["mean"], dtype=torch.float32)
    t0 = time.perf_counter()
    res = _evaluate(model, store.meta["hook"], windows, saes, mean, args.eval_batch)
    res |= {"eval_seconds": time.perf_counter() - t0, "load": os.getloadavg(),
            "eval_windows": int(windows.shape[0]), "args": {k: str(v) for k, v in
                                                             vars(args).items()}}
    text = _report(res, saes)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=2, default=str))
    assert all(math.isfinite(v) for v in res["ce"].values())


if __name__ == "__main__":
    main()
