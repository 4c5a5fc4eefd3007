"""An SAE set: SAEs at several hooks of one model, validated against that model.

A feature circuit (Marks et al. 2024, "Sparse Feature Circuits", §2) lives in one model with
dictionaries at several hook points. The folders' `cfg.json` metadata names the model and the
hook (SAELens's `metadata.model_name` / `metadata.hook_name`), so a set is just a list of
folders; everything else is checked here so that a bad set fails in one line before any work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from store.errors import UserError
from trainers.saelens_format import load_sae, read_meta


@dataclass
class SAESet:
    """SAEs at distinct hooks of one model, ordered by where their hooks run in a forward."""

    model_name: str
    """The model every SAE was trained on (cfg.json `metadata.model_name`)."""
    hooks: list[str]
    """TransformerLens hook names, in execution order."""
    folders: list[Path]
    """SAE folders, aligned with `hooks`."""
    saes: list[nn.Module]
    """Loaded SparseCoders (eval mode, frozen), aligned with `hooks`."""

    def __len__(self) -> int:
        return len(self.hooks)

    def items(self) -> list[tuple[str, nn.Module]]:
        """(hook, sae) pairs in execution order."""
        return list(zip(self.hooks, self.saes, strict=True))


def _model_and_hook(folder: Path) -> tuple[str, str]:
    meta = read_meta(folder)["cfg"].get("metadata") or {}
    model, hook = meta.get("model_name"), meta.get("hook_name")
    if not isinstance(model, str) or not isinstance(hook, str):
        raise UserError(f"{folder}: cfg.json metadata lacks model_name or hook_name")
    return model, hook


def read_set(folders: Sequence[str | Path]) -> tuple[str, list[tuple[str, Path]]]:
    """(model name, [(hook, folder)]) from cfg.json metadata; fails on mixed models or hooks."""
    if not folders:
        raise UserError("give at least one SAE folder (--saes DIR ...)")
    entries = [(Path(f), *_model_and_hook(Path(f))) for f in folders]
    models = sorted({m for _, m, _ in entries})
    if len(models) > 1:
        raise UserError(f"the SAEs come from different models ({', '.join(models)}); "
                        "a circuit needs SAEs of one model")
    seen: dict[str, Path] = {}
    for folder, _, hook in entries:
        if hook in seen:
            raise UserError(f"two SAEs at hook {hook} ({seen[hook]}, {folder}); give one per hook")
        seen[hook] = folder
    return models[0], [(hook, folder) for folder, _, hook in entries]


@torch.no_grad()
def hook_shapes(model, hooks: Sequence[str]) -> dict[str, int]:
    """{hook: d} for each hook in execution order, from a one-token forward."""
    missing = [h for h in hooks if h not in model.hook_dict]
    if missing:
        raise UserError(f"model has no hook {missing[0]} (e.g. blocks.0.hook_resid_post)")
    order: dict[str, int] = {}

    def record(act, hook):
        if act.dim() not in (3, 4):
            raise UserError(f"hook {hook.name} has activations of shape {tuple(act.shape)}; "
                            "circuits need [batch, pos, d] hooks (e.g. hook_resid_post) or "
                            "[batch, pos, heads, d_head] ones (attn.hook_z)")
        order.setdefault(hook.name, act[0, 0].numel())

    tokens = torch.zeros(1, 1, dtype=torch.long, device=model.cfg.device)
    model.run_with_hooks(tokens, fwd_hooks=[(h, record) for h in hooks])
    return order


def load_set(
    folders: Sequence[str | Path], model=None, device: str | torch.device = "cpu"
) -> tuple[SAESet, object]:
    """Load and validate an SAE set; also returns the model (loaded by name unless given)."""
    name, entries = read_set(folders)
    if model is None:
        from store.models import load_model

        model = load_model(name, str(device))
    dims = hook_shapes(model, [h for h, _ in entries])
    by_hook = dict(entries)
    hooks = [h for h in dims if h in by_hook]  # execution order
    saes = []
    for hook in hooks:
        sae = load_sae(by_hook[hook], device).requires_grad_(False)
        if sae.d_in != dims[hook]:
            raise UserError(f"{by_hook[hook]}: d_in {sae.d_in} does not match {name}'s "
                            f"{hook} (d={dims[hook]})")
        saes.append(sae)
    return SAESet(name, hooks, [by_hook[h] for h in hooks], saes), model
