"""A patching direction found by optimisation, the setting where the illusion appears.

Makelov, Lange & Nanda 2023 (arXiv 2311.17030) find their illusory MLP directions with
DAS-style optimisation (Geiger et al. 2023): gradient descent on a unit direction u so that
patching the corrupt projection along u into the clean run moves the task metric as far as
possible toward the corrupt run. Such a direction is free to combine a null-space direction
that varies with the feature and a dormant row-space one, which the check in
saebench.illusion_check then exposes. Our choices: Adam on an unnormalised vector, a fixed
step count, and a random Gaussian start from `seed`; the paper's exact schedule is not here.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from saebench.illusion import Prompts, _logits_at, subspace_patch
from store.errors import UserError


def optimise_direction(
    model, hook: str, prompts: Prompts, d: int, steps: int = 30, lr: float = 0.05,
    seed: int = 0, progress: bool = False,
) -> Float[Tensor, " d"]:
    """A unit direction at `hook` whose 1-d patch moves the metric most toward the source."""
    from tqdm.auto import trange

    if steps < 1 or lr <= 0:
        raise UserError(f"steps ({steps}) and lr ({lr}) must be positive")
    device = next(model.parameters()).device
    idx = torch.arange(len(prompts.pos))
    pos = prompts.pos.to(device)
    width = int(pos.max()) + 1
    clean = prompts.clean[:, :width].to(device)
    where = (torch.arange(width, device=device)[None] <= pos[:, None]).float()
    saved: dict[str, Tensor] = {}

    def keep(act, hook):
        saved["h"] = act.detach().clone()

    with torch.no_grad():
        src = prompts.metric(_logits_at(model, prompts.source[:, :width].to(device), pos,
                                        [(hook, keep)]), idx).mean()
        base = prompts.metric(_logits_at(model, clean, pos, []), idx).mean()
    # Descend on the metric when the source run has less of the behaviour, else ascend.
    sign = 1.0 if src < base else -1.0
    gen = torch.Generator().manual_seed(seed)
    p = torch.randn(d, generator=gen).to(device).requires_grad_(True)
    opt = torch.optim.Adam([p], lr=lr)
    for _ in trange(steps, desc="optimise direction", disable=not progress):

        def patch(act, hook):
            return subspace_patch(act, saved["h"], p / p.norm(), where.to(act.dtype))

        with torch.enable_grad():
            loss = sign * prompts.metric(_logits_at(model, clean, pos, [(hook, patch)]),
                                         idx).mean()
            opt.zero_grad()
            loss.backward()
        opt.step()
    return (p / p.norm()).detach().cpu()
