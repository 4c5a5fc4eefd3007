"""The architectures `saebench train --arch` knows: one explicit dict (DESIGN §2)."""

from __future__ import annotations

from dataclasses import dataclass

from store.errors import UserError
from trainers.batchtopk import BatchTopKConfig, BatchTopKSAE
from trainers.feature_choice import FeatureChoiceConfig, FeatureChoiceSAE
from trainers.gsae import GSAE, GSAEConfig
from trainers.mp import MPSAE, MPConfig
from trainers.mutual_choice import MutualChoiceConfig, MutualChoiceSAE
from trainers.topk import TopKConfig, TopKSAE


@dataclass(frozen=True)
class Architecture:
    """How to configure and build one architecture."""

    config: type
    """Its frozen hyperparameter dataclass (fields such as d_sae and k)."""
    model: type
    """Its nn.Module class: `model(d_in, config, generator=g)` is an untrained SparseCoder."""


ARCHITECTURES: dict[str, Architecture] = {
    "topk": Architecture(config=TopKConfig, model=TopKSAE),
    "mp": Architecture(config=MPConfig, model=MPSAE),
    "batchtopk": Architecture(config=BatchTopKConfig, model=BatchTopKSAE),
    "mutual_choice": Architecture(config=MutualChoiceConfig, model=MutualChoiceSAE),
    "feature_choice": Architecture(config=FeatureChoiceConfig, model=FeatureChoiceSAE),
    "gsae": Architecture(config=GSAEConfig, model=GSAE),
}


def get(name: str) -> Architecture:
    """The architecture called `name`, or a one-line error listing the known ones."""
    if name not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise UserError(f"unknown architecture {name!r}; known: {known}")
    return ARCHITECTURES[name]


def name_of(config: object) -> str:
    """The registry name of a config instance, e.g. "topk" for a TopKConfig."""
    for name, arch in ARCHITECTURES.items():
        if type(config) is arch.config:
            return name
    raise UserError(f"{type(config).__name__} is not the config of a registered architecture")
