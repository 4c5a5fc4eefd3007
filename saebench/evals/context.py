"""What every eval receives (an SAE, its cfg, a store, a lazily loaded model) and returns."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from store.errors import UserError
from trainers.protocol import SparseCoder

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

HELDOUT = "heldout"


@runtime_checkable
class EvalStore(Protocol):
    """The part of `store.reader.StoreReader` that evals use (tests pass an in-memory one)."""

    meta: dict

    def n_tokens(self, split: str) -> int: ...

    def iter_activations(
        self, split: str, batch_tokens: int, limit: int | None = None
    ) -> Iterator[Tensor]:
        """Also takes `grads=True` (the same rows' gradients) where `has_grads` is true."""
        ...

    def token_windows(self, split: str) -> Tensor: ...


def sae_hook(sae_cfg: dict) -> str | None:
    """The hook an SAE was trained at: top-level `hook_name`, or SAELens 6's `metadata`."""
    return sae_cfg.get("hook_name") or (sae_cfg.get("metadata") or {}).get("hook_name")


@dataclass
class EvalContext:
    """One SAE against one store; the model is loaded on first use and then kept."""

    sae: SparseCoder
    sae_cfg: dict
    store: EvalStore
    device: str = "cpu"
    store_path: str = ""
    model_loader: Callable[[], Any] | None = None
    _model: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.check_compatible()

    @property
    def hook(self) -> str:
        return str(self.store.meta["hook"])

    @property
    def n_heldout(self) -> int:
        return int(self.store.n_tokens(HELDOUT))

    def check_compatible(self) -> None:
        """The SAE must read the same vectors the store holds: same width, same hook."""
        d_store = int(self.store.meta["d_in"])
        if int(self.sae.d_in) != d_store:
            raise UserError(
                f"the SAE has d_in {self.sae.d_in} but {self.store_path or 'the store'} holds "
                f"d_in {d_store} vectors (at {self.hook}); evaluate it on the store it was "
                "trained on"
            )
        hook = sae_hook(self.sae_cfg)
        if hook is not None and hook != self.hook:
            raise UserError(
                f"the SAE was trained at {hook} but the store holds {self.hook}; "
                "pass --store with a store cached at the SAE's hook"
            )

    def model(self) -> HookedTransformer:
        if self._model is None:
            if self.model_loader is not None:
                self._model = self.model_loader()
            else:
                from store.models import load_model

                self._model = load_model(str(self.store.meta["model"]), self.device)
        return self._model

    def sae_dtype(self) -> torch.dtype:
        return self.sae.W_dec.dtype


@dataclass
class EvalResult:
    """Flat metrics, notes on how they were measured, and optional per-feature tables."""

    metrics: dict[str, float]
    """Metric name -> value; every value is a plain float (NaN where undefined)."""
    notes: dict[str, str] = field(default_factory=dict)
    """Human-readable facts about the measurement (which positions, which baseline)."""
    tables: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    """Table name -> columns, written to `saes/<name>/features/<table>.parquet`."""


def sae_name(sae_dir: Path) -> str:
    """The name that identifies an SAE in the catalog: its folder's name."""
    return Path(sae_dir).resolve().name
