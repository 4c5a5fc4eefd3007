"""Test doubles for the evals: SAEs built from explicit weights and an in-memory store."""

from __future__ import annotations

import torch
from torch import Tensor, nn

TINY_HOOK = "blocks.0.hook_resid_post"


class ReluCoder(nn.Module):
    """A plain ReLU SAE with given weights: codes = relu((x - b_dec) W_enc + b_enc)."""

    def __init__(self, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor):
        super().__init__()
        self.W_enc, self.b_enc = nn.Parameter(W_enc.float()), nn.Parameter(b_enc.float())
        self.W_dec, self.b_dec = nn.Parameter(W_dec.float()), nn.Parameter(b_dec.float())
        self.d_in, self.d_sae = W_enc.shape

    def encode(self, x: Tensor) -> Tensor:
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def decode(self, codes: Tensor) -> Tensor:
        return codes @ self.W_dec + self.b_dec

    def loss(self, x, ctx):
        raise NotImplementedError


def signed_basis_coder(U: Tensor, center: Tensor) -> ReluCoder:
    """x̂ = center + U Uᵀ (x - center) for orthonormal columns U [d_in, k], as a ReLU SAE.

    Each direction appears twice, as +u and -u, so ReLU codes carry the signed projection
    and exactly one of each pair is nonzero: L0 = k (for x off the hyperplanes).
    """
    W_enc = torch.cat([U, -U], dim=1)
    return ReluCoder(W_enc, torch.zeros(W_enc.shape[1]), W_enc.T.contiguous(), center)


def identity_coder(d_in: int) -> ReluCoder:
    """An SAE whose reconstruction is exactly x: relu(x) - relu(-x)."""
    return signed_basis_coder(torch.eye(d_in), torch.zeros(d_in))


class LensCoder:
    """A SAELens SAE seen through our SparseCoder protocol, so both evals use one object."""

    def __init__(self, sae):
        self.sae = sae
        self.d_in, self.d_sae = sae.cfg.d_in, sae.cfg.d_sae

    @property
    def W_dec(self) -> Tensor:
        return self.sae.W_dec

    @property
    def b_dec(self) -> Tensor:
        return self.sae.b_dec

    def encode(self, x: Tensor) -> Tensor:
        return self.sae.encode(x)

    def decode(self, codes: Tensor) -> Tensor:
        return self.sae.decode(codes)

    def loss(self, x, ctx):
        raise NotImplementedError


class MemoryStore:
    """The reading side of an activation store, held in memory (same order and BOS rule)."""

    def __init__(
        self, meta: dict, heldout: Tensor, windows: Tensor | None = None,
        grads: Tensor | None = None,
    ):
        self.meta = meta
        self.acts = heldout
        self.windows = windows
        self.grads = grads
        self.has_grads = grads is not None

    def n_tokens(self, split: str) -> int:
        return int(self.acts.shape[0]) if split == "heldout" else 0

    def iter_activations(
        self, split: str, batch_tokens: int, limit: int | None = None, grads: bool = False
    ):
        rows = self.grads if grads else self.acts
        assert rows is not None
        n = rows.shape[0] if limit is None else min(limit, rows.shape[0])
        for lo in range(0, n, batch_tokens):
            yield rows[lo : min(lo + batch_tokens, n)]

    def token_windows(self, split: str) -> Tensor:
        assert self.windows is not None
        return self.windows


def tensor_store(x: Tensor, hook: str = TINY_HOOK, ctx: int = 17) -> MemoryStore:
    """A store of given activations (no model behind it: downstream metrics need ce_tokens=0)."""
    meta = {"model": "none", "hook": hook, "d_in": x.shape[1], "ctx": ctx, "dtype": "float32"}
    return MemoryStore(meta, x)


def random_windows(n_seq: int, ctx: int, bos: int, vocab: int, seed: int) -> Tensor:
    """Token windows with BOS at position 0 and ordinary tokens elsewhere (no special ids)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1000, vocab, (n_seq, ctx), generator=g)
    tokens[:, 0] = bos
    return tokens


@torch.no_grad()
def model_store(model, n_seq: int = 12, ctx: int = 24, hook: str = TINY_HOOK) -> MemoryStore:
    """A store of the model's activations at `hook` for random windows (positions >= 1, as the
    real store keeps them), with a train-split mean from other windows for mean-ablation."""
    bos, vocab = model.tokenizer.bos_token_id, model.cfg.d_vocab

    def acts(tokens: Tensor) -> Tensor:
        _, cache = model.run_with_cache(tokens, names_filter=hook)
        return cache[hook][:, 1:].reshape(-1, model.cfg.d_model).float()

    heldout = random_windows(n_seq, ctx, bos, vocab, seed=1)
    train = random_windows(8, ctx, bos, vocab, seed=2)
    meta = {
        "model": "random:tiny", "hook": hook, "d_in": model.cfg.d_model, "ctx": ctx,
        "dtype": "float32", "bos_policy": "prepend",
        "norm": {"mean": acts(train).mean(0).tolist(), "mean_norm": 1.0},
    }
    return MemoryStore(meta, acts(heldout), heldout)
