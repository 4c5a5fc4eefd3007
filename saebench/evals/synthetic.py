"""The ground-truth eval: train every architecture on synthetic data with a known dictionary.

One pass of one stream (saebench/evals/synthetic_data.py) trains every SAE in
trainers.registry.ARCHITECTURES with equal d_sae and k, through the shared loop; SAELens's own
TopK and BatchTopK trainers see the same batches as reference rows. Each SAE folder is then
loaded with `sae_lens.SAE.load_from_disk` and scored by `sae_lens.synthetic.evals`: MCC
(Hungarian matching on |cos| between decoder rows and true directions), uniqueness, mean
per-latent precision/recall/F1 as a detector of its best-matching true feature, dead latents,
explained variance and L0, all on one held-out stream.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from sae_lens import (
    SAE,
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
)
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.synthetic import (
    SyntheticActivationIterator,
    SyntheticModel,
    eval_sae_on_synthetic_data,
)
from sae_lens.training.sae_trainer import SAETrainer

from saebench.evals.synthetic_config import SyntheticConfig
from saebench.evals.synthetic_data import EVAL, Replay, SyntheticSource, build_model
from saebench.evals.synthetic_report import SyntheticRow, format_rows, write_rows
from store.errors import UserError
from trainers import registry
from trainers.config import TrainConfig
from trainers.loop import train_saes
from trainers.schedule import default_lr, warmup_steps

# SAELens reference trainers: name -> (training SAE class, its config class).
REFERENCES = {
    "saelens_topk": (TopKTrainingSAE, TopKTrainingSAEConfig),
    "saelens_batchtopk": (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig),
}
EVAL_BATCH = 4096


def check(ctx: Any, cfg: SyntheticConfig) -> None:
    """The runner's contract (saebench.evals): this eval trains its own SAEs, so none is given."""
    raise UserError("the synthetic eval trains its own SAEs: run `saebench eval --evals "
                    "synthetic --workspace DIR` without --sae")


run = check


# Data knobs added after the first release: left out of the key at their defaults, so that
# workspaces made before them keep their folder names (and their finished SAEs).
LATER_FIELDS = {f.name: f.default for f in fields(SyntheticConfig)
                if f.name == "magnitude_mean_range" or f.name.startswith("hierarchy_")}


def data_id(cfg: SyntheticConfig) -> str:
    """A short hash of what determines the trained weights, to name the SAE folders."""
    key = {k: v for k, v in asdict(cfg).items() if k not in ("archs", "reference", "device")
           and not (k in LATER_FIELDS and getattr(cfg, k) == LATER_FIELDS[k])}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:6]


def arch_names(cfg: SyntheticConfig) -> list[str]:
    """The requested architectures, or every registered one, checked against the registry."""
    names = list(cfg.archs) or list(registry.ARCHITECTURES)
    for name in names:
        registry.get(name)  # a one-line error for an unknown name
    return names


def _device(spec: str) -> str:
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"synthetic: device {spec}: CUDA is not available")
    return spec


def train_config(cfg: SyntheticConfig) -> TrainConfig:
    """The loop's settings: the shared defaults, with this eval's sizes."""
    return TrainConfig(tokens=cfg.tokens, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
                       dead_window=cfg.dead_window, device=_device(cfg.device),
                       checkpoint_every=10**9, progress=sys.stderr.isatty())


def store_meta(cfg: SyntheticConfig) -> dict:
    """What stands in for a store's meta in run records and SAELens metadata."""
    return {"model": "sae_lens.synthetic", "hook": "synthetic", "dataset": f"synthetic-"
            f"{data_id(cfg)}", "d_in": cfg.d_in, "synthetic": cfg.data_fields()}


def train_reference(name: str, cfg: SyntheticConfig, source: SyntheticSource,
                    train: TrainConfig, out: Path) -> Path:
    """Train a SAELens reference SAE on the loop's exact batches and save it for inference."""
    if (out / "cfg.json").exists():
        return out  # SAEs are deterministic: a finished folder is the same SAE
    cls, cfg_cls = REFERENCES[name]
    n_steps = cfg.tokens // cfg.batch_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        sae = cls(cfg_cls(d_in=cfg.d_in, d_sae=cfg.d_sae, k=cfg.k, device=train.device,
                          normalize_activations="expected_average_only_in"))
        # Same batches, learning rate, schedule shape (warm-up, linear decay to 0) and dead
        # window as our loop, but SAELens's own init, loss and AuxK: the row measures the
        # trainer. The dead window is set explicitly because train_toy_sae's fixed 1000 steps
        # would leave AuxK off in short runs, and every latent it lets die costs MCC.
        lr = train.lr or default_lr(cfg.d_sae)
        trainer_cfg = SAETrainerConfig(
            total_training_samples=n_steps * cfg.batch_size,
            train_batch_size_samples=cfg.batch_size, lr=lr, lr_end=lr,
            lr_warm_up_steps=warmup_steps(n_steps, train.warmup_steps),
            lr_decay_steps=int(train.decay_frac * n_steps), device=train.device,
            dead_feature_window=max(1, cfg.dead_window // cfg.batch_size),
            logger=LoggingConfig(log_to_wandb=False))
        data = SyntheticActivationIterator(source.model.feature_dict,
                                           Replay(source, seed=train.seed), cfg.batch_size)
        trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=data,
                             save_checkpoint_fn=lambda _path: None)
        # SAELens's own normalisation (mean ‖x‖ = √d_in, folded into the weights at the end),
        # with our estimate of the scale so that it reads no extra batches.
        trainer.activation_scaler.scaling_factor = math.sqrt(cfg.d_in) / source.stats().mean_norm
        trainer.fit()
    sae.save_inference_model(str(out))  # BatchTopK becomes JumpReLU with its threshold
    return out


@torch.no_grad()
def score(folder: Path, model: SyntheticModel, cfg: SyntheticConfig) -> dict[str, float]:
    """SAELens's synthetic metrics of one SAE folder, on the held-out stream (on CPU)."""
    sae = SAE.load_from_disk(str(folder), device="cpu")
    held_out = SyntheticSource(model, cfg, stream=EVAL)
    result = eval_sae_on_synthetic_data(sae, model.feature_dict, Replay(held_out, seed=0),
                                        num_samples=cfg.eval_tokens,
                                        batch_size=min(cfg.eval_tokens, EVAL_BATCH))
    metrics = {k.replace("classification/", ""): float(v)
               for k, v in result.to_log_dict().items()}
    metrics["dead_frac"] = metrics["dead_latents"] / cfg.d_sae
    return metrics


def run_synthetic(cfg: SyntheticConfig, workspace: Path, echo=print) -> list[SyntheticRow]:
    """Train, score and record every SAE; returns one row per SAE (printed as a table)."""
    names = arch_names(cfg)
    workspace, train = Path(workspace), train_config(cfg)
    configs = [registry.get(n).config(d_sae=cfg.d_sae, k=cfg.k) for n in names]
    prefix = workspace / "saes" / f"synthetic-{data_id(cfg)}"
    model = build_model(cfg)
    source = SyntheticSource(model, cfg)
    model.save(workspace / "synthetic" / data_id(cfg))  # the true dictionary, for notebooks
    folders = {n: Path(f"{prefix}-{n}") for n in names}
    echo(f"synthetic: training {', '.join(names)} on {cfg.tokens:,} tokens "
         f"(d_in {cfg.d_in}, {cfg.n_features} true features, d_sae {cfg.d_sae}, k {cfg.k})")
    train_saes(source, configs, list(folders.values()), store_meta(cfg), train,
               store_path=store_meta(cfg)["dataset"])
    if cfg.reference:
        for name in REFERENCES:
            folders[name] = train_reference(name, cfg, source, train, Path(f"{prefix}-{name}"))
    rows = [SyntheticRow(sae=folder.name, arch=name,
                         trainer="saelens" if name in REFERENCES else "saebench",
                         metrics=score(folder, model, cfg))
            for name, folder in folders.items()]
    write_rows(rows, folders, cfg, store_meta(cfg))
    echo(format_rows(rows, cfg))
    return rows

