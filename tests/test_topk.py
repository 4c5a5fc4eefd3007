"""TopK SAE: the sparse kernels give the dense math's loss and gradients; recipe invariants."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from store.errors import UserError
from trainers.topk import TopKConfig, TopKSAE

pytestmark = pytest.mark.usefixtures("one_thread")


def _sae(d_in=16, d_sae=48, k=4, seed=0) -> TopKSAE:
    sae = TopKSAE(d_in, TopKConfig(d_sae=d_sae, k=k), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():  # move away from the symmetric init so every gradient is nonzero
        g = torch.Generator().manual_seed(seed + 1)
        sae.W_enc.add_(0.1 * torch.randn(sae.W_enc.shape, generator=g))
        sae.b_enc.add_(0.1 * torch.randn(d_sae, generator=g))
        sae.b_dec.add_(0.1 * torch.randn(d_in, generator=g))
    return sae


def _dense_loss(sae: TopKSAE, x: torch.Tensor, dead: torch.Tensor | None) -> torch.Tensor:
    """The TopK loss written densely with plain autograd: the reference for the sparse kernels."""
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    top = pre.topk(sae.k, dim=-1)
    codes = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
    x_hat = codes @ sae.W_dec + sae.b_dec
    fvu = (x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    if dead is None or not dead.any():
        return fvu
    k_aux = min(sae.k_aux, int(dead.sum()))
    aux_top = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1)
    aux_codes = torch.zeros_like(pre).scatter(1, aux_top.indices, aux_top.values.relu())
    e = (x - x_hat).detach()
    auxk = (aux_codes @ sae.W_dec - e).pow(2).sum() / e.pow(2).sum()
    return fvu + sae.cfg.auxk_coef * auxk


def _grads(sae: TopKSAE, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    sae.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in sae.named_parameters()}


@pytest.mark.parametrize("n_dead", [0, 5, 40])
def test_sparse_loss_and_grads_match_dense_reference(n_dead):
    sae = _sae()
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(3))
    dead = torch.zeros(48, dtype=torch.bool)
    dead[torch.randperm(48, generator=torch.Generator().manual_seed(4))[:n_dead]] = True
    out = sae.loss(x, SimpleNamespace(dead_mask=dead))
    ours = _grads(sae, out.total)
    ref_loss = _dense_loss(sae, x, dead)
    ref = _grads(sae, ref_loss)
    assert torch.allclose(out.total, ref_loss, atol=1e-6)
    assert ("auxk" in out.parts) == (n_dead > 0)  # AuxK is skipped when nothing is dead
    for name in ref:
        assert torch.allclose(ours[name], ref[name], atol=1e-5, rtol=1e-4), name


def test_codes_are_the_k_largest_rectified_preactivations():
    sae = _sae()
    x = torch.randn(32, 16)
    codes = sae.encode(x)
    assert ((codes > 0).sum(1) <= sae.k).all()
    out = sae.loss(x)
    assert torch.allclose(out.codes.to_dense(), codes, atol=1e-6)
    assert torch.allclose(sae.decode(codes), sae(x), atol=1e-5)


def test_init_ties_encoder_to_decoder_with_unit_rows():
    sae = TopKSAE(16, TopKConfig(d_sae=48, k=4))
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(48), atol=1e-6)
    assert torch.equal(sae.W_enc, sae.W_dec.t())
    assert sae.W_enc.t().is_contiguous()  # column-major: rows of W_enc.t() are latents
    assert sae.k_aux == 8  # d_in / 2


def test_decoder_gradient_is_orthogonal_to_rows_and_rows_stay_unit_norm():
    sae = _sae()
    out = sae.loss(torch.randn(64, 16))
    out.total.backward()
    parallel = (sae.W_dec.grad * sae.W_dec).sum(1)
    assert parallel.abs().max() < 1e-6
    with torch.no_grad():
        sae.W_dec.mul_(1.5)
    sae.after_step()
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(48), atol=1e-6)


def test_export_folds_the_input_scale():
    sae, scale = _sae(), 3.7
    x = torch.randn(32, 16)
    arch, fields, w = sae.export_saelens(scale)
    assert arch == "topk" and fields == {"k": 4, "rescale_acts_by_decoder_norm": False}
    raw = TopKSAE(16, TopKConfig(d_sae=48, k=4))
    with torch.no_grad():
        for name, tensor in w.items():
            getattr(raw, name).copy_(tensor)
    assert torch.allclose(raw.encode(x), sae.encode(x * scale) / scale, atol=1e-5)
    assert torch.allclose(raw(x), sae(x * scale) / scale, atol=1e-5)
    assert torch.allclose(raw.W_dec.norm(dim=1), torch.ones(48), atol=1e-6)


@pytest.mark.parametrize(("k", "width"), [(8, 8), (9, 8), (0, 8)])
def test_bad_k_or_width_is_a_user_error(k, width):
    with pytest.raises(UserError, match="--k"):
        TopKConfig(d_sae=width, k=k)


def test_bf16_autocast_keeps_fp32_losses_and_master_gradients():
    # The GPU recipe (bf16 autocast, fp32 master weights), exercised through CPU autocast.
    sae = _sae()
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(5))
    dead = torch.zeros(48, dtype=torch.bool)
    dead[:10] = True
    ctx = SimpleNamespace(dead_mask=dead)
    ref = sae.loss(x, ctx).total.detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sae.loss(x, ctx)
    assert out.total.dtype == torch.float32
    assert abs(float(out.total.detach() - ref)) < 0.02 * float(ref)
    out.total.backward()
    for p in sae.parameters():
        assert p.grad.dtype == torch.float32 and p.grad.stride() == p.stride()
        assert torch.isfinite(p.grad).all()
