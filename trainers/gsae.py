"""Gradient SAE, g-SAE (Olmo et al. 2024, "Features that Make a Difference: Leveraging Gradients
for Improved Dictionary Learning", arXiv 2411.10397, §3).

A TopK SAE whose *selection* of the k latents also weighs each latent's downstream effect:

    pre   = W_encᵀ(x − b_dec) + b_enc
    score = pre + β · pre ⊙ |W_dec ∇ₓL|          (W_dec [d_sae, d_in], so W_dec∇ₓL is [d_sae])
    idx   = TopK(score),   codes[idx] = ReLU(pre[idx]),   x̂ = codes·W_dec + b_dec

∇ₓL is the gradient of the model's next-token loss with respect to the hooked activation, so
|⟨d_i, ∇ₓL⟩| is the first-order size of the loss change per unit of latent i: a latent with a small
activation but a large effect on the loss can now win a slot. Only the selection changes; the
values are the plain pre-activations, so the weights, the loss (normalised MSE + AuxK), the
sparse kernels and the SAELens export are TopK's. Without a gradient (`ctx.grad` None, or
`encode`), selection is plain TopK, which is why the folder exports as SAELens `topk`.

Units: the loop trains on x·scale, and pre is positively homogeneous in that scale, so the
ranking of `score` does not depend on it. It does depend on the gradient's scale, and raw
gradients are tiny next to activations (on SmolLM2's layer 15, median ‖∇ₓL‖ ≈ 0.23 against
‖x‖ ≈ 167, so |W_dec∇ₓL| ≈ 0.008 and β = 1 would leave the selection plain TopK). The paper
does not say how it scales the gradient; we normalise it like the activations: the first
training batch fixes a constant s_g with mean ‖s_g·∇ₓL‖ = √d_in, so β is unit-free and β = 1
tilts the selection by a factor of about 1 + |⟨d_i, ĝ⟩| with |⟨d_i, ĝ⟩| ~ 1. The export folds
s_g into `gsae_beta_raw` = β·s_g, which multiplies the raw-unit gradient at inference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from store.errors import UserError
from trainers import distributed
from trainers.distributed import SINGLE, World
from trainers.precision import fast_bf16
from trainers.topk import TopKConfig, TopKSAE


@dataclass(frozen=True)
class GSAEConfig(TopKConfig):
    """Hyperparameters of one g-SAE: TopK's, plus the weight of the gradient term."""

    beta: float = 0.1
    """β, the weight of the gradient term in the selection score (Olmo et al. 2024, §3); 0 is
    plain TopK. With grad_norm="unit_mean" the gradient is normalised to mean norm √d_in
    first, so β is unit-free. 0.1 is the best gradient-aware point of BENCHMARKS.md's β sweep
    (SmolLM2, k 32): CE recovered and KL worsen monotonically from β 0.1 to 100."""

    grad_norm: Literal["unit_mean", "raw"] = "unit_mean"
    """How the gradient enters the score: "unit_mean" rescales it by one constant s_g (fixed
    on the first batch) to mean norm √d_in (ours); "raw" uses dL/dx as cached, in the model's
    units, where β = 1 is a ~1% tilt on SmolLM2 and β must be ~100× larger to matter."""

    effect_bf16: bool = True
    """Compute the selection's gradient term in bfloat16 where that is fast (CUDA, or a CPU
    with native bf16); it changes only the order of near-ties."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise UserError(f"--beta ({self.beta}) must be a finite number >= 0")
        if self.grad_norm not in ("unit_mean", "raw"):
            raise UserError(f"grad_norm ({self.grad_norm!r}) must be unit_mean or raw")


class GSAE(TopKSAE):
    """A g-SAE: TopK weights, gradient-aware top-k selection; satisfies SparseCoder."""

    needs_grads = True
    """Tells the training loop to ask its source for (x, grad) batches."""

    def __init__(
        self, d_in: int, cfg: GSAEConfig, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(d_in, cfg, generator=generator)
        self.beta = cfg.beta
        # s_g, the gradient normaliser; 0 until the first batch with gradients sets it.
        self.register_buffer("grad_scale", torch.zeros(()))

    @classmethod
    def from_topk(cls, sae: TopKSAE, beta_raw: float, effect_bf16: bool = True) -> GSAE:
        """A g-SAE with a loaded TopK SAE's weights (an exported g-SAE loads as TopK) and the
        exported β·s_g, which multiplies raw-unit gradients."""
        cfg = GSAEConfig(d_sae=sae.d_sae, k=sae.k, k_aux=sae.k_aux, beta=beta_raw,
                         effect_bf16=effect_bf16)
        out = cls(sae.d_in, cfg).to(sae.W_dec.device)
        out.load_state_dict({**sae.state_dict(), "grad_scale": torch.ones(())}, strict=True)
        return out.train(sae.training)

    @torch.no_grad()
    def _scaled(self, grad: Tensor, world: World = SINGLE) -> Tensor:
        if float(self.grad_scale) == 0.0 and self.cfg.grad_norm == "raw":
            self.grad_scale.fill_(1.0)
        if float(self.grad_scale) == 0.0:
            # The global batch's mean norm (ranks hold equal slices), so every rank agrees.
            mean_norm = world.mean(grad.float().norm(dim=-1).mean()).clamp_min(1e-12)
            self.grad_scale.fill_(math.sqrt(self.d_in) / float(mean_norm))
        return grad * self.grad_scale

    @torch.no_grad()
    def export_saelens(self, scale: float) -> tuple[str, dict, dict[str, Tensor]]:
        """TopK's export plus `gsae_beta_raw` (β·s_g), which SAELens ignores."""
        arch, fields, tensors = super().export_saelens(scale)
        s_g = float(self.grad_scale) or 1.0
        return arch, {**fields, "gsae_beta_raw": self.beta * s_g}, tensors

    def gradient_topk(
        self, pre: Float[Tensor, "tokens d_sae"], grad: Float[Tensor, "tokens d_in"],
        world: World = SINGLE,
    ) -> Int[Tensor, "tokens k"]:
        """Indices of the k largest `pre + β·pre⊙|W_dec grad|` per token (§3's selection)."""
        # The absolute value: a latent matters whichever way it moves the loss (§3).
        grad = self._scaled(grad, world)
        # The selection's only cost beyond TopK's is this second dense product. It only
        # weighs the choice, so it may run in bf16 (as autocast runs `pre` on a GPU): 4.7x
        # faster on a CPU with native bf16, where it moves only near-ties. The elementwise tail
        # is fused and in place (one [tokens, d_sae] temporary, not three).
        dtype = torch.bfloat16 if self.cfg.effect_bf16 and fast_bf16(pre.device) else pre.dtype
        effect = torch.mm(grad.to(dtype), self.W_dec.detach().to(dtype).t())
        score = torch.addcmul(pre, pre, effect.to(pre.dtype).abs_(), value=self.beta)
        return score.topk(self.k, dim=-1, sorted=False).indices

    def _select(self, pre: Tensor, ctx: Any) -> Tensor:
        grad = getattr(ctx, "grad", None)
        if grad is None:
            return super()._select(pre, ctx)  # no gradient: plain TopK
        return self.gradient_topk(pre, grad, distributed.of(ctx))

    def encode_sparse_with_grad(
        self, x: Float[Tensor, "tokens d_in"], grad: Float[Tensor, "tokens d_in"]
    ) -> tuple[Float[Tensor, "tokens k"], Int[Tensor, "tokens k"]]:
        """Gradient-aware codes, sparse: values ReLU(pre) at the gradient-aware top k."""
        pre = self._pre(x.float() - self.b_dec)
        idx = self.gradient_topk(pre, grad.float())
        return pre.gather(1, idx).float().relu(), idx

    def encode_with_grad(
        self, x: Float[Tensor, "tokens d_in"], grad: Float[Tensor, "tokens d_in"]
    ) -> Float[Tensor, "tokens d_sae"]:
        """Gradient-aware codes [tokens, d_sae]; `grad` is dL/dx at x, in x's units."""
        vals, idx = self.encode_sparse_with_grad(x, grad)
        return vals.new_zeros(x.shape[0], self.d_sae).scatter_(1, idx, vals)
