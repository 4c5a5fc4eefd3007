"""`saebench eval`: evaluate an SAE on its store's held-out split and record the results.

`--evals synthetic` is different: it needs no SAE and no store. It trains every registered
architecture on SAELens synthetic data with a known dictionary (saebench/evals/synthetic.py)
into `--workspace`, scores each against the truth and prints one row per SAE.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from saebench.evals.absorption_config import AbsorptionConfig
from saebench.evals.autointerp_config import AutointerpConfig
from saebench.evals.configs import CoreConfig
from saebench.evals.dark_matter_config import DarkMatterConfig
from saebench.evals.ioi_principled_config import IOIPrincipledConfig
from saebench.evals.mdl_config import MDLConfig
from saebench.evals.meta_config import MetaStructureConfig
from saebench.evals.scr_tpp_config import ScrConfig, TppConfig
from saebench.evals.sparse_probing_config import SparseProbingConfig
from saebench.evals.synthetic_config import SyntheticConfig
from store.errors import UserError

SYNTHETIC = "synthetic"
ALL = "all"


@dataclass(frozen=True)
class Args:
    """Evaluate an SAE folder; write evals/<name>.json and catalog rows, print a table."""

    sae: Path | None = None
    """SAE folder: saebench's or any SAELens-format folder (cfg.json + sae_weights.safetensors).
    Required by every eval except synthetic."""
    store: Path | None = None
    """Activation store (*.duckdb) whose held-out split is used; default: the store recorded
    in the SAE folder. It must hold the SAE's hook and d_in."""
    evals: tuple[str, ...] = ("core",)
    """Which evals to run, in order: core, sparse_probing, scr, tpp, absorption, autointerp,
    meta_structure, mdl, dark_matter, synthetic; `all` runs every eval that applies to the SAE
    (all but synthetic), skipping the others with a one-line reason."""
    core: CoreConfig = field(default_factory=CoreConfig)
    """Settings of the core eval."""
    meta_structure: MetaStructureConfig = field(default_factory=MetaStructureConfig)
    """Settings of the meta-SAE (decoder structure) eval."""
    mdl: MDLConfig = field(default_factory=MDLConfig)
    """Settings of the description-length eval."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """Settings of the synthetic (ground-truth) eval."""
    autointerp: AutointerpConfig = field(default_factory=AutointerpConfig)
    """Settings of the autointerp eval (--autointerp.base-url for an LLM; offline otherwise)."""
    sparse_probing: SparseProbingConfig = field(default_factory=SparseProbingConfig)
    """Settings of the sparse probing eval (datasets, sizes, k values)."""
    scr: ScrConfig = field(default_factory=ScrConfig)
    """Settings of the spurious correlation removal eval (two-attribute sets, N latents)."""
    tpp: TppConfig = field(default_factory=TppConfig)
    """Settings of the targeted probe perturbation eval (multi-class sets, N latents)."""
    absorption: AbsorptionConfig = field(default_factory=AbsorptionConfig)
    """Settings of the absorption eval (first-letter probes; --absorption.max-words subsamples)."""
    ioi_principled: IOIPrincipledConfig = field(default_factory=IOIPrincipledConfig)
    """Settings of the IOI supervised-dictionary eval (Makelov et al. 2024)."""
    dark_matter: DarkMatterConfig = field(default_factory=DarkMatterConfig)
    """Settings of the dark-matter eval (linear vs nonlinear SAE error; inference-time pursuit)."""
    workspace: Path | None = None
    """Workspace that the synthetic eval trains its SAEs into (saes/synthetic-*), e.g. runs/x."""
    markdown: bool = False
    """Also print the synthetic eval's table as Markdown (for BENCHMARKS.md)."""
    device: str | None = None
    """Torch device for the SAE and the model; default: cuda if available, else cpu."""


def _check(args: Args) -> None:
    from saebench.evals import get_eval

    for name in args.evals:
        if name != ALL:
            get_eval(name)  # an unknown name fails before anything is loaded
    if ALL in args.evals and len(args.evals) > 1:
        raise UserError("--evals all runs every eval: give it alone")
    if SYNTHETIC in args.evals:
        if args.workspace is None:
            raise UserError("--evals synthetic trains its own SAEs: pass --workspace DIR")
        if args.sae is not None or len(args.evals) > 1:
            raise UserError("--evals synthetic takes no --sae and runs alone; run the other "
                            "evals in a separate command")
    elif args.sae is None:
        raise UserError(f"--evals {' '.join(args.evals)} needs --sae FOLDER")


def _run_synthetic(args: Args) -> None:
    from dataclasses import replace

    from saebench.evals.synthetic import run_synthetic
    from saebench.evals.synthetic_report import format_rows

    cfg = args.synthetic
    if args.device is not None and cfg.device == "auto":
        cfg = replace(cfg, device=args.device)
    rows = run_synthetic(cfg, args.workspace)
    print(f"  wrote saes/*/synthetic.parquet and evals/synthetic.json under {args.workspace}")
    if args.markdown:
        print(format_rows(rows, cfg, markdown=True))


def main(args: Args) -> None:
    _check(args)
    if SYNTHETIC in args.evals:
        _run_synthetic(args)
        return
    import torch

    from saebench.evals.runner import open_context, run_evals

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ctx = open_context(args.sae, args.store, device)
    from saebench.evals import EVALS

    every = ALL in args.evals
    names = tuple(n for n in EVALS if n != SYNTHETIC) if every else tuple(args.evals)
    configs = {name: getattr(args, name) for name in names}
    run_evals(ctx, args.sae, names, configs, skip_inapplicable=every)
