"""TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

    codes = ReLU(TopK(W_encᵀ(x − b_dec) + b_enc)),   x̂ = codes·W_dec + b_dec

Loss: normalised MSE plus AuxK on dead latents (§2.4, App. A.2). Decoder rows stay unit-norm:
rows are renormalised after every step (App. A.1), and the component of W_dec's gradient
parallel to each row is removed during backward (Bricken et al. 2023).

Speed: of the TopK path only the encoder's forward is a dense matmul; the decode and all its
gradients touch the k selected latents per token (trainers/sparse.py). AuxK runs dense, but
over the dead columns only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from store.errors import UserError
from trainers import distributed
from trainers.distributed import SINGLE, World, centred_sq_sum, ratio
from trainers.protocol import LossOut
from trainers.sparse import decode_rows, selected_pre


@dataclass(frozen=True)
class TopKConfig:
    """Hyperparameters of one TopK SAE."""

    d_sae: int = 4608
    """Number of latents (the SAE's width)."""
    k: int = 32
    """Active latents per token (Gao et al. 2024, §2.3)."""
    auxk_coef: float = 1 / 32
    """Weight of the AuxK loss (Gao et al. 2024, App. A.2)."""
    k_aux: int | None = None
    """Dead latents that AuxK uses per token; None means d_in // 2 (Gao et al. 2024, App. A.2)."""

    def __post_init__(self) -> None:
        if self.d_sae < 1 or self.k < 1:
            raise UserError(f"--k ({self.k}) and --width ({self.d_sae}) must be positive")
        if self.k >= self.d_sae:
            raise UserError(f"--k ({self.k}) must be smaller than --width ({self.d_sae})")


def _fvu(x: Tensor, x_hat: Tensor, world: World = SINGLE) -> Tensor:
    # Normalised MSE as a fraction of the batch's variance (DESIGN §5's FVU), so the loss has
    # the same scale whatever the activations' norm (Gao et al. 2024, §2.1). Under several
    # ranks the variance is the global batch's, so the ranks' mean is the 1-rank loss.
    return ratio((x_hat - x).pow(2).sum(), centred_sq_sum(x, world), world)


def auxk_reconstruction(
    x_c: Float[Tensor, "tokens d_in"], W_enc: Float[Tensor, "d_in d_sae"],
    b_enc: Float[Tensor, " d_sae"], W_dec: Float[Tensor, "d_sae d_in"],
    dead_idx: Int[Tensor, " n_dead"], k_aux: int,
) -> Float[Tensor, "tokens d_in"]:
    """AuxK's prediction of the residual: each token's top k_aux dead latents, decoded.

    Computed densely over the dead columns only. Usually few latents are dead, and then the aux
    codes are dense within them (k_aux = d_in/2 = 288 of a few hundred), where GEMMs beat row
    gathers (on a GPU by far). Shared with aux_zipf_loss, which must contain AuxK exactly.
    """
    enc = W_enc.t().index_select(0, dead_idx)  # [n_dead, d_in]
    pre = torch.addmm(b_enc.index_select(0, dead_idx), x_c, enc.t())
    with torch.no_grad():
        top = pre.topk(min(k_aux, dead_idx.numel()), dim=-1, sorted=False).indices
        keep = torch.zeros_like(pre, dtype=torch.bool).scatter_(1, top, True)
    codes = torch.where(keep, pre.float().relu(), 0.0)
    return codes @ W_dec.index_select(0, dead_idx)  # no b_dec: it is in x_hat


class TopKSAE(nn.Module):
    """A TopK sparse autoencoder; satisfies trainers.protocol.SparseCoder."""

    def __init__(
        self, d_in: int, cfg: TopKConfig, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.cfg, self.d_in, self.d_sae, self.k = cfg, d_in, cfg.d_sae, cfg.k
        self.k_aux = cfg.k_aux if cfg.k_aux is not None else d_in // 2
        W_dec = torch.randn(cfg.d_sae, d_in, generator=generator)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        # W_enc = W_decᵀ at init (Gao et al. 2024, App. A.1). Stored column-major: W_enc.t() is a
        # contiguous [d_sae, d_in] view, so the sparse backward reads and writes whole rows.
        self.W_enc = nn.Parameter(W_dec.clone().t())
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.W_dec.register_hook(self._remove_parallel_grad)

    def _remove_parallel_grad(self, grad: Tensor) -> Tensor:
        # With unit-norm rows, the gradient along a row only changes its norm, which the
        # renormalisation in after_step undoes; Adam would still spend its step size on it.
        # Training only: an eval-mode SAE (load_sae) reports true gradients.
        if not self.training:
            return grad
        W = self.W_dec.detach()
        along = torch.linalg.vecdot(grad, W)  # two fused passes instead of four
        return torch.addcmul(grad, along[:, None], W, value=-1)

    @torch.no_grad()
    def after_step(self) -> None:
        """Renormalise the decoder rows to unit norm."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    def _pre(self, x_c: Tensor) -> Tensor:
        # The one dense product; under bf16 autocast (GPU) it and the topk run in bf16.
        return torch.addmm(self.b_enc, x_c, self.W_enc)

    def encode_sparse(
        self, x: Float[Tensor, "tokens d_in"]
    ) -> tuple[Float[Tensor, "tokens k"], Int[Tensor, "tokens k"]]:
        """The nonzero part of the codes: values (≥ 0) and latent indices, k per token."""
        vals, idx = self._pre(x.float() - self.b_dec).topk(self.k, dim=-1, sorted=False)
        return vals.float().relu(), idx

    def decode_sparse(
        self, vals: Float[Tensor, "tokens k"], idx: Int[Tensor, "tokens k"]
    ) -> Float[Tensor, "tokens d_in"]:
        """Reconstruct from `encode_sparse`'s output without forming dense codes."""
        return decode_rows(idx, vals, self.W_dec) + self.b_dec

    def encode(self, x: Float[Tensor, "tokens d_in"]) -> Float[Tensor, "tokens d_sae"]:
        vals, idx = self.encode_sparse(x)
        return vals.new_zeros(x.shape[0], self.d_sae).scatter_(1, idx, vals)

    def decode(self, codes: Float[Tensor, "tokens d_sae"]) -> Float[Tensor, "tokens d_in"]:
        return codes @ self.W_dec + self.b_dec

    def forward(self, x: Float[Tensor, "tokens d_in"]) -> Float[Tensor, "tokens d_in"]:
        return self.decode_sparse(*self.encode_sparse(x))

    def _auxk(self, x_c: Tensor, e: Tensor, dead: Tensor | None,
              world: World = SINGLE) -> Tensor | None:
        """AuxK (Gao et al. 2024, App. A.2): the top k_aux dead latents predict the residual e.

        None, i.e. skipped, when nothing is dead."""
        dead_idx = None if dead is None else dead.nonzero().squeeze(1)
        if dead_idx is None or dead_idx.numel() == 0:
            return None
        e_hat = auxk_reconstruction(x_c, self.W_enc, self.b_enc, self.W_dec, dead_idx,
                                    self.k_aux)
        return ratio((e_hat.float() - e).pow(2).sum(), e.pow(2).sum(), world)

    def _select(self, pre: Tensor, ctx: Any) -> Tensor:
        """The k latents per token that a training step uses: the largest pre-activations."""
        return pre.topk(self.k, dim=-1, sorted=False).indices

    def loss(self, x: Float[Tensor, "tokens d_in"], ctx: Any = None) -> LossOut:
        """Normalised MSE + auxk_coef · AuxK; `ctx.dead_mask` ([d_sae] bool) enables AuxK."""
        x = x.float()
        x_c = x - self.b_dec
        with torch.no_grad():
            pre = self._pre(x_c)
            idx = self._select(pre, ctx)
            picked = pre.gather(1, idx)
            del pre
        vals = selected_pre(x_c, self.W_enc, self.b_enc, idx, picked).relu()
        x_hat = decode_rows(idx, vals, self.W_dec) + self.b_dec
        world = distributed.of(ctx)
        fvu = _fvu(x, x_hat, world)
        total, parts = fvu, {"fvu": fvu.detach()}
        auxk = self._auxk(x_c, (x - x_hat).detach(), getattr(ctx, "dead_mask", None), world)
        if auxk is not None:
            total = fvu + self.cfg.auxk_coef * auxk
            parts["auxk"] = auxk.detach()
        rows = torch.arange(x.shape[0], device=x.device).repeat_interleave(self.k)
        codes = torch.sparse_coo_tensor(
            torch.stack([rows, idx.reshape(-1)]), vals.detach().reshape(-1),
            (x.shape[0], self.d_sae), check_invariants=False,
        )
        return LossOut(total=total, parts=parts, codes=codes)

    @torch.no_grad()
    def export_saelens(self, scale: float) -> tuple[str, dict, dict[str, Tensor]]:
        """(architecture, cfg fields, tensors) for SAELens, in raw (unnormalised) units.

        Trained on x·scale: ReLU∘TopK is positively homogeneous, so dividing b_enc and b_dec by
        `scale` gives codes/scale and x̂/scale on raw x, with W_dec rows still unit-norm.
        """
        tensors = {
            "W_enc": self.W_enc.detach().float().contiguous().clone(),
            "b_enc": self.b_enc.detach().float() / scale,
            "W_dec": self.W_dec.detach().float().contiguous().clone(),
            "b_dec": self.b_dec.detach().float() / scale,
        }
        return "topk", {"k": self.k, "rescale_acts_by_decoder_norm": False}, tensors
