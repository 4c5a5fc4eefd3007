"""The eval registry: one explicit dict from name to config class and implementing module.

Each implementing module defines `check(ctx, cfg)` (cheap validation of the inputs, run for
every requested eval before any of them starts, so bad input leaves no artifact) and
`run(ctx, cfg) -> EvalResult` (flat metrics plus optional per-feature tables). Modules are
imported only when an eval runs, so this registry stays free of torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

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


@dataclass(frozen=True)
class EvalSpec:
    """How to run one eval."""

    config: type
    """Its frozen config dataclass."""
    module: str
    """The module that defines `check(ctx, cfg)` and `run(ctx, cfg)`."""
    summary: str
    """One line for --help and the report."""

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


EVALS: dict[str, EvalSpec] = {
# In the order `--evals all` runs them (synthetic aside: it needs no SAE).
    "core": EvalSpec(
        config=CoreConfig,
        module="saebench.evals.core",
        summary="reconstruction, spliced CE/KL, fire counts and decoder similarity",
    ),
    "synthetic": EvalSpec(
        config=SyntheticConfig,
        module="saebench.evals.synthetic",
        summary="train every architecture on SAELens synthetic data; MCC etc. vs the truth",
    ),
    "sparse_probing": EvalSpec(
        config=SparseProbingConfig,
        module="saebench.evals.sparse_probing",
        summary="top-k latent probes on mean-pooled codes per labelled text set (SAEBench)",
    ),
    "scr": EvalSpec(
        config=ScrConfig,
        module="saebench.evals.scr",
        summary="ablate latents to undo a probe's spurious shortcut: accuracy regained (SAEBench)",
    ),
    "tpp": EvalSpec(
        config=TppConfig,
        module="saebench.evals.tpp",
        summary="ablate a class's latents: its probe's accuracy drop minus others' (SAEBench)",
    ),
    "absorption": EvalSpec(
        config=AbsorptionConfig,
        module="saebench.evals.absorption",
        summary="first-letter feature absorption: probe vs k-sparse main latents (SAEBench)",
    ),
    "autointerp": EvalSpec(
        config=AutointerpConfig,
        module="saebench.evals.autointerp",
        summary="explain sampled latents from their contexts; detection accuracy (LLM or lexical)",
    ),
    "meta_structure": EvalSpec(
        config=MetaStructureConfig,
        module="saebench.evals.meta_structure",
        summary="variance of the decoder rows a small BatchTopK meta-SAE explains (weights only)",
    ),
    "mdl": EvalSpec(
        config=MDLConfig,
        module="saebench.evals.mdl",
        summary="bits per token of the codes, binned per latent within a reconstruction tolerance",
    ),
    "dark_matter": EvalSpec(
        config=DarkMatterConfig,
        module="saebench.evals.dark_matter",
        summary="share of the SAE error a linear map of x predicts; what pursuit removes",
    ),
    "ioi_principled": EvalSpec(
        config=IOIPrincipledConfig,
        module="saebench.evals.ioi_principled",
        summary="IOI vs supervised dictionaries: approximation, sparse control, F1 (Makelov 2024)",
    ),
}


def get_eval(name: str) -> EvalSpec:
    """The spec of an eval by name, or a UserError naming the known ones."""
    if name not in EVALS:
        raise UserError(f"unknown eval '{name}'; choose from {', '.join(EVALS)}")
    return EVALS[name]
