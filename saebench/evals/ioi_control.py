"""Sparse control: move an activation towards its counterfactual by changing few SAE latents.

Makelov, Lange & Nanda 2024 (arXiv 2405.08366, §4.2) edit an attribute with an SAE by
changing a small set of latents from their value on the prompt to their value on the
counterfactual prompt, chosen greedily so that the change of the reconstruction best matches
the counterfactual's change of the activation. Ours: the target is Δ = a(p') − a(p) (the error
term of p is kept), and a latent j, switched from c_j to c'_j, adds δ_j = (c'_j − c_j) d_j;
each step adds the unchosen latent that most reduces ‖Δ − Σ δ‖², and stops early when none
reduces it. The outcome metrics (edit score, success) are in ioi_principled.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor


def greedy_latents(
    target: Float[Tensor, " d_in"], deltas: Float[Tensor, "cand d_in"], n_max: int
) -> list[int]:
    """Indices into `deltas`, in the order chosen, of at most `n_max` greedy steps."""
    chosen: list[int] = []
    residual = target.clone()
    free = torch.ones(len(deltas), dtype=torch.bool)
    sq = (deltas * deltas).sum(1)
    for _ in range(min(n_max, len(deltas))):
        # ‖r‖² − ‖r − δ_j‖² = 2⟨r, δ_j⟩ − ‖δ_j‖²: the drop in squared error if j is added.
        gain = torch.where(free, 2 * deltas @ residual - sq, torch.full_like(sq, -torch.inf))
        j = int(gain.argmax())
        if not gain[j] > 0:
            break
        chosen.append(j)
        free[j] = False
        residual -= deltas[j]
    return chosen


def sparse_edits(
    x: Float[Tensor, "n d_in"],
    x_cf: Float[Tensor, "n d_in"],
    codes: Float[Tensor, "n d_sae"],
    codes_cf: Float[Tensor, "n d_sae"],
    W_dec: Float[Tensor, "d_sae d_in"],
    budgets: Sequence[int],
) -> tuple[Float[Tensor, "budgets n d_in"], Int[Tensor, "budgets n"]]:
    """Edited activations for each budget, and how many latents each edit changed."""
    budgets = sorted(budgets)
    out = x.float().unsqueeze(0).repeat(len(budgets), 1, 1)
    used = torch.zeros(len(budgets), len(x), dtype=torch.long)
    W = W_dec.float()
    for i in range(len(x)):
        change = codes_cf[i].float() - codes[i].float()
        cand = change.nonzero()[:, 0]  # only latents whose code differs can move anything
        deltas = change[cand, None] * W[cand]
        order = greedy_latents(x_cf[i].float() - x[i].float(), deltas, budgets[-1])
        for b, n in enumerate(budgets):
            picked = order[:n]
            if picked:
                out[b, i] += deltas[picked].sum(0)
            used[b, i] = len(picked)
    return out, used


def edit_score(
    m_edit: Float[Tensor, " n"], m_clean: Float[Tensor, " n"], m_cf: Float[Tensor, " n"]
) -> float:
    """(E m_edit − E m_clean) / (E m_cf − E m_clean): 0 = no effect, 1 = the counterfactual's.

    A ratio of means, not a mean of ratios, so prompts where the counterfactual barely moves
    the metric cannot blow it up (ours)."""
    span = float(m_cf.mean() - m_clean.mean())
    return float(m_edit.mean() - m_clean.mean()) / span if span != 0 else float("nan")
