"""The end-to-end SAE loss (Braun et al. 2024, "Identifying Functionally Important Features
with End-to-End Sparse Dictionary Learning", arXiv 2405.12241).

    e2e:     L = kl_coef · KL(p_clean ‖ p_spliced)
    e2e+ds:  L = kl_coef · KL(p_clean ‖ p_spliced) + ds_coef · mean_j FVU(a_j, â_j)

where p_spliced is the model's output distribution with the SAE's reconstruction written into
the hook, and a_j / â_j are the residual streams of the downstream blocks j (after the SAE's
layer) in the clean and the spliced run. The paper's sparsity penalty (L1) is replaced by the
architecture's own selection (TopK's k, BatchTopK's batch budget, ...): ours, so that e2e and
local SAEs of one architecture are compared at equal L0 by construction.

Coefficients: KL 0.5 and downstream 2.5, as in e2e_sae's `gpt2_e2e_recon.yaml` (the e2e+ds
GPT-2 run; recorded in research/evals.md §(e)). The KL direction, KL(clean ‖ spliced) summed
over the vocabulary and averaged over tokens, is e2e_sae's `logits_kl` loss. With Adam, the
e2e loss (a single term) is insensitive to its coefficient; it matters only beside the
downstream term.
Ours, since the paper's text was not at hand: the downstream term is each block's FVU
(squared error over the clean run's centred variance, DESIGN §5) averaged over blocks, not a
raw MSE, so blocks whose residual norm grows with depth weigh alike; and BOS (position 0) is
never spliced, as everywhere in saebench (the store drops it from SAE data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from store.errors import UserError

LOSSES = ("local", "e2e", "e2e+ds")
Loss = Literal["local", "e2e", "e2e+ds"]


@dataclass(frozen=True)
class E2ELossConfig:
    """Weights of the end-to-end loss's terms."""

    kl_coef: float = 0.5
    """Weight of KL(clean ‖ spliced) (e2e_sae gpt2_e2e_recon.yaml: 0.5)."""
    ds_coef: float = 2.5
    """Weight of the downstream residual FVU under e2e+ds (e2e_sae gpt2_e2e_recon.yaml: 2.5)."""

    def __post_init__(self) -> None:
        if self.kl_coef <= 0 or self.ds_coef < 0:
            raise UserError(f"e2e coefficients must be kl_coef > 0 and ds_coef >= 0 "
                            f"(got {self.kl_coef}, {self.ds_coef})")


DEFAULT_LOSS = E2ELossConfig()


def resid_layers(hook: str, n_layers: int) -> tuple[int, list[str]]:
    """(the layer the spliced run starts at, the downstream residual hooks) for a residual
    hook; a one-line error for any other hook.

    `blocks.L.hook_resid_pre` is the input of block L and `blocks.L.hook_resid_post` its
    output, i.e. the input of block L+1. The blocks before that point never see the SAE, so
    they run once, without gradients (TransformerLens `stop_at_layer` / `start_at_layer`).
    """
    parts = hook.split(".")
    if len(parts) != 3 or parts[0] != "blocks" or not parts[1].isdigit() or \
            parts[2] not in ("hook_resid_pre", "hook_resid_post"):
        raise UserError(f"e2e training needs a residual-stream hook "
                        f"(blocks.L.hook_resid_pre or _post), not {hook!r}")
    layer = int(parts[1])
    if layer >= n_layers:
        raise UserError(f"hook {hook!r}: the model has only {n_layers} blocks")
    start = layer + (parts[2] == "hook_resid_post")
    return start, [f"blocks.{j}.hook_resid_post" for j in range(start, n_layers)]


def kl_to_clean(
    clean_logits: Float[Tensor, "batch pos vocab"], logits: Float[Tensor, "batch pos vocab"]
) -> Float[Tensor, ""]:
    """KL(p_clean ‖ p) summed over the vocabulary, averaged over every position."""
    log_p = clean_logits.float().log_softmax(-1)
    log_q = logits.float().log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def downstream_fvu(
    clean: list[Float[Tensor, "batch pos d_model"]],
    spliced: list[Float[Tensor, "batch pos d_model"]],
) -> Float[Tensor, ""]:
    """Mean over downstream blocks of the spliced residual's FVU against the clean one."""
    if not clean:
        return torch.zeros(())
    fvus = []
    for a, a_hat in zip(clean, spliced, strict=True):
        a = a.float().flatten(0, 1)
        var = (a - a.mean(0)).pow(2).sum().clamp_min(1e-12)
        fvus.append((a_hat.float().flatten(0, 1) - a).pow(2).sum() / var)
    return torch.stack(fvus).mean()
