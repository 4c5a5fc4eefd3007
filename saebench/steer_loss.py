"""Held-out loss under a steering hook: mean next-token CE with and without it.

The unsteered pass does not depend on the steering, so it is cached per (model, windows, hook)
and moving a slider re-runs only the steered pass. At a residual-stream hook the steered pass
also starts where the hook is: the clean residual there is cached with the clean CE, steered
directly, and run through the remaining blocks only (`start_at_layer`), which halves its cost
at the middle layer where SAEs usually sit. Both CEs then go through that same path, so a
steering that changes nothing gives exactly the clean CE. Other hooks run the whole model.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable

import torch
from jaxtyping import Int
from torch import Tensor

from store.errors import UserError

_RESID = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")
_CLEAN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
BATCH_SEQS = 4


def resume_layer(hook_name: str) -> int | None:
    """The block a forward can start at with this hook's activation as its residual, if any."""
    match = _RESID.match(hook_name)
    return None if match is None else int(match[1]) + (match[2] == "post")


def _ce_sum(logits: Tensor, tokens: Tensor, first_pos: int) -> tuple[float, int]:
    """Summed CE of the predictions at positions >= first_pos, and their count."""
    log_probs = logits[:, first_pos:-1].float().log_softmax(-1)
    ce = -log_probs.gather(-1, tokens[:, first_pos + 1:, None])
    return float(ce.sum()), ce.numel()


def _mean(parts: list[tuple[float, int]]) -> tuple[float, int]:
    n = sum(p[1] for p in parts)
    if n == 0:
        raise UserError("the held-out text is too short: it needs at least two tokens after BOS")
    return sum(p[0] for p in parts) / n, n


@torch.inference_mode()
def mean_ce(model, windows: Int[Tensor, "seq ctx"], fwd_hooks: list,
            first_pos: int) -> tuple[float, int]:
    """(mean next-token CE of the predictions at positions >= first_pos, their count)."""
    return _mean([_ce_sum(model.run_with_hooks(b, fwd_hooks=fwd_hooks), b, first_pos)
                  for b in windows.split(BATCH_SEQS)])


def _clean(model, windows: Tensor, hook_name: str, first_pos: int) -> dict:
    """The cached clean pass: {"ce": (mean, n), "resid": [per batch] or None}."""
    key = (windows.cpu().numpy().tobytes(), tuple(windows.shape), hook_name, first_pos)
    per_model = _CLEAN.setdefault(model, {})
    if key in per_model:
        return per_model[key]
    if len(per_model) > 8:
        per_model.clear()
    layer = resume_layer(hook_name)
    if layer is None:
        entry = {"ce": mean_ce(model, windows, [], first_pos), "resid": None}
    else:
        with torch.inference_mode():
            resid = [model(b, stop_at_layer=layer) for b in windows.split(BATCH_SEQS)]
            ce = _mean([_ce_sum(model(r, start_at_layer=layer), b, first_pos)
                        for r, b in zip(resid, windows.split(BATCH_SEQS), strict=True)])
        entry = {"ce": ce, "resid": resid}
    per_model[key] = entry
    return entry


def heldout_ce(model, windows: Int[Tensor, "seq ctx"], hook_name: str,
               steer: Callable[[Tensor, object], Tensor], first_pos: int
               ) -> tuple[float, float, int]:
    """(clean CE, steered CE, predictions) on the windows; `steer` is a TransformerLens hook."""
    clean = _clean(model, windows, hook_name, first_pos)
    if clean["resid"] is None:
        steered, _ = mean_ce(model, windows, [(hook_name, steer)], first_pos)
        return clean["ce"][0], steered, clean["ce"][1]
    layer = resume_layer(hook_name)
    with torch.inference_mode():
        steered, _ = _mean([_ce_sum(model(steer(r, None), start_at_layer=layer), b, first_pos)
                            for r, b in zip(clean["resid"], windows.split(BATCH_SEQS),
                                            strict=True)])
    return clean["ce"][0], steered, clean["ce"][1]


def prepare_background(model, windows: Int[Tensor, "seq ctx"], hook_name: str,
                       first_pos: int) -> bool:
    """Whether `heldout_ce` may run in another thread while this one runs the model with
    hooks; if so, its clean pass is done (and cached) here first.

    TransformerLens hooks live on the shared modules, so a forward through the steering hook's
    site from another thread would be steered by (and could reset) the generator's hooks. Only
    the resume path is safe: its steered pass starts after the hook (`start_at_layer`) and
    touches no hooked module, once the clean pass before it is cached.
    """
    if resume_layer(hook_name) is None:
        return False
    _clean(model, windows, hook_name, first_pos)
    return True

