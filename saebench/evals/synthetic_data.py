"""Synthetic activations with a known dictionary, from SAELens's `sae_lens.synthetic` package.

`build_model` makes a `SyntheticModel` (true feature directions, Zipfian firing, optional
hierarchy and correlation). `SyntheticSource` is an ActivationSource over it: batch i of a
stream is sampled under a seed derived from (data seed, stream, i), so the data are a pure
function of the batch index (exact resume) and need no memory. `Replay` hands SAELens's own
trainer and evaluator the very same feature activations, batch for batch.

The downstream loss (for gradient-aware SAEs such as gsae): synthetic data has no model, so a
fixed linear readout R stands in for one. R's rows are the true directions of a known random
subset of `readout_features` features, and L(x) = ½‖R(x − μ)‖² with μ the data mean, so
∂L/∂x = RᵀR(x − μ): the gradient is large exactly where the read features are active.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from jaxtyping import Float
from sae_lens.synthetic import (
    ExponentialMagnitudeConfig,
    HierarchyConfig,
    LowRankCorrelationConfig,
    SyntheticModel,
    SyntheticModelConfig,
    ZipfianFiringProbabilityConfig,
)
from torch import Tensor

from saebench.evals.synthetic_config import SyntheticConfig
from store.sources import Batch, NormStats, compute_stats

TRAIN, EVAL, STATS = 0, 1, 2  # stream ids: disjoint seeds, so eval tokens are never trained on
STATS_TOKENS = 16_384


def build_model(cfg: SyntheticConfig) -> SyntheticModel:
    """SAELens's synthetic model for `cfg`: package defaults except the knobs we expose."""
    hierarchy = None
    if cfg.hierarchy:
        low, high = cfg.hierarchy_branching
        # Compensation raises children's conditional rates so that each feature keeps its
        # Zipfian marginal rate. Where that would take a rate above 1 (exclusive siblings as
        # frequent as their parent), SAELens clamps it and warns: a parent then always fires
        # with one of its children, and those features fire less often than Zipf says.
        hierarchy = HierarchyConfig(
            total_root_nodes=cfg.root_count, branching_factor=(low, high),
            max_depth=cfg.hierarchy_depth,
            mutually_exclusive_portion=cfg.hierarchy_exclusive, compensate_probabilities=True)
    correlation = LowRankCorrelationConfig(seed=cfg.seed) if cfg.correlation else None
    first, last = cfg.magnitude_mean_range
    # A plain float when constant: the saved model config then reads as it always did.
    mean = 1.0 if first == last == 1.0 else ExponentialMagnitudeConfig(start=first, end=last)
    model_cfg = SyntheticModelConfig(
        num_features=cfg.n_features, hidden_dim=cfg.d_in,
        firing_probability=ZipfianFiringProbabilityConfig(),
        hierarchy=hierarchy, correlation=correlation,
        std_firing_magnitudes=cfg.magnitude_std, mean_firing_magnitudes=mean, seed=cfg.seed)
    return SyntheticModel(model_cfg).eval()


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> 1)


@torch.no_grad()
def feature_acts(model: SyntheticModel, batch_size: int, seed: int) -> Tensor:
    """One batch of true feature activations [batch, n_features], a pure function of `seed`."""
    # SAELens samples from torch's global CPU generator: fork it so nothing else is disturbed,
    # and seed it directly (torch.manual_seed also queues a CUDA seed, with a stack trace).
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return model.activation_generator.sample(batch_size)


def readout(model: SyntheticModel, cfg: SyntheticConfig) -> tuple[Tensor, Tensor]:
    """(R [readout_features, d_in], the indices of the true features it reads)."""
    g = torch.Generator().manual_seed(_seed(cfg.seed, 7))
    read = torch.randperm(cfg.n_features, generator=g)[: cfg.readout_features].sort().values
    return model.feature_dict.feature_vectors.detach()[read].clone(), read


class SyntheticSource:
    """An ActivationSource (store.sources) that samples SAELens synthetic data on the fly."""

    has_grads = True

    def __init__(self, model: SyntheticModel, cfg: SyntheticConfig, stream: int = TRAIN) -> None:
        self.model, self.cfg, self.stream = model, cfg, stream
        self.d_in, self.n_tokens = cfg.d_in, cfg.tokens
        self.R, self.read = readout(model, cfg)
        self._stats: NormStats | None = None

    def stats(self) -> NormStats:
        if self._stats is None:
            acts = feature_acts(self.model, STATS_TOKENS, _seed(self.cfg.seed, STATS))
            with torch.no_grad():
                self._stats = compute_stats(self.model.feature_dict(acts))
        return self._stats

    def acts(self, batch_size: int, seed: int, index: int) -> Tensor:
        """The true feature activations of batch `index`."""
        return feature_acts(self.model, batch_size, _seed(self.cfg.seed, self.stream, seed, index))

    def grad(self, x: Float[Tensor, "tokens d_in"]) -> Float[Tensor, "tokens d_in"]:
        """∂L/∂x of the synthetic downstream loss L = ½‖R(x − μ)‖² (module docstring)."""
        mu = torch.tensor(self.stats().mean, dtype=x.dtype)
        return ((x - mu) @ self.R.T) @ self.R

    def batches(self, batch_size: int, *, seed: int = 0, start: int = 0,
                with_grads: bool = False) -> Iterator[Batch]:
        index = start
        while True:
            with torch.no_grad():
                x = self.model.feature_dict(self.acts(batch_size, seed, index))
            yield (x, self.grad(x)) if with_grads else x
            index += 1


class Replay:
    """Stands in for SAELens's ActivationGenerator: returns a stream's batches in order."""

    def __init__(self, source: SyntheticSource, seed: int) -> None:
        self.source, self.seed, self.index = source, seed, 0

    def sample(self, batch_size: int) -> Tensor:
        acts = self.source.acts(batch_size, self.seed, self.index)
        self.index += 1
        return acts

    __call__ = sample
