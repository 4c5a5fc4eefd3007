"""A second planted circuit, whose heads are gated by the task: duplicate token → previous token.

Task: at every position p the model answers YES or NO to "had token p-1 occurred before p-1?".
Two heads solve it. In layer 0 a duplicate-token head (Wang et al. 2022, "Interpretability in
the wild", §3.1) attends from a token to its earlier occurrence and writes a "seen before" flag;
in layer 1 a previous-token head moves that flag one position on, where the answer is read.
Both heads' outputs (`hook_z`) change with whether the prompt repeats, which is the premise of
discrete-SAE head identification (O'Neill & Bui 2024, arXiv 2405.12522, §3). The induction plant
(planted.py) breaks that premise: its previous-token head copies tokens whether or not they
repeat, so no head-output code is unique to repeating prompts.

Trained freely under the same constraints (below), the model stalled at the base rate in most
settings we tried; where it found the circuit, the moving head coded the flag as the length of
one direction (repeating prompts gave a shorter vector along the same line), and a k = 1 SAE's
argmax code does not see length, so that head scored 0.
So the mechanism is planted by construction and only the reading and writing is trained:
- the residual stream has disjoint blocks of dimensions with no normalisation to mix them:
  one-hot tokens (T), layer 0's flag (F) and one-hot positions (P, which shortformer embeddings
  add to queries and keys only);
- the attention patterns are set by hand and frozen (`_plant_attention`): the duplicate-token
  head scores the same token +s, itself -s and BOS +s/2; the previous-token head scores the
  key at p-1 +s; both patterns are verified, not assumed (`attention_roles`);
- BOS embeds to zero and the writers have no value bias, so a head that finds nothing writes
  nothing: the flag is present or absent, not signed;
- the other heads keep random weights but write nothing (W_O = 0, as in planted.py); those of
  layer 1 read T and P only, so that outside the circuit every head sees the same inputs on
  repeating and non-repeating prompts (the method's other premise). Letting them read F, we
  measured them scoring up to 1.0 like the circuit (mean AUC 0.77 to 0.93 over three trained
  models): a head downstream of a gated head responds whether or not it contributes, a limit
  of the method that this plant deliberately leaves out.
Training fits the writers' value and output weights and the unembedding (seconds).

API, the same shape as planted.py, so any head-scoring method runs on both plants:
- `DupConfig`, `train_dup(cfg) -> HookedTransformer`;
- `dup_batch(cfg, n, seed, length) -> PlantedBatch`: `.clean` `[BOS] A A` (the second copy
  repeats) and `.corrupt` `[BOS] B A` (nothing repeats), position-aligned token tensors;
- `dup_metric(logits, batch) -> [pairs]`: mean YES-minus-NO logit over the answers that are YES
  on clean prompts (higher = behaviour present);
- `patching_effects(model, batch)` and `circuit_heads(effects)`: the ground truth by exact
  patching of `hook_z`, as in planted.py; `attention_roles(model, batch)` checks the roles.
The model has no normalisation layers, and d_head (32) is not d_model / n_heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from saebench.circuits import planted
from saebench.circuits.planted import Head, PlantedBatch, circuit_heads

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "DupConfig", "PlantedBatch", "attention_roles", "circuit_heads", "dup_batch", "dup_metric",
    "patching_effects", "train_dup",
]


@dataclass(frozen=True)
class DupConfig:
    """Shape and training budget of the duplicate-token plant."""

    n_heads: int = 4
    """Heads per layer (two layers: the flag is computed, then moved)."""
    n_content: int = 16
    """Content tokens (ids 1..n_content); one-hot, so also the width of block T."""
    d_flag: int = 8
    """Residual dimensions only layer 0's writer writes to (block F)."""
    max_len: int = 6
    """Longest repeated segment in training."""
    max_start: int = 3
    """Largest number of noise tokens before the first copy."""
    sharpness: float = 16.0
    """Attention score s of a planted match; each pattern is one-hot to within n_ctx·e^(-s/2)."""
    steps: int = 200
    """Adam steps."""
    batch: int = 64
    """Sequences per step."""
    lr: float = 1e-2
    """Adam learning rate."""
    seed: int = 0
    """Seed for weights and data."""
    writers: tuple[int, int] = (1, 2)
    """The one head per layer allowed to write: duplicate-token head, previous-token head."""

    @property
    def n_ctx(self) -> int:
        return 1 + self.max_start + 2 * self.max_len

    @property
    def d_model(self) -> int:
        return self.n_content + self.d_flag + self.n_ctx

    @property
    def d_head(self) -> int:
        """Wide enough for the duplicate-token head's token match plus its self-penalty."""
        return self.n_content + self.n_ctx

    @property
    def d_vocab(self) -> int:
        return self.n_content + 3  # BOS, content, NO, YES

    @property
    def no(self) -> int:
        return self.n_content + 1

    @property
    def yes(self) -> int:
        return self.n_content + 2


def _content_cfg(cfg: DupConfig) -> planted.PlantedConfig:
    """The induction plant's sequence generator, drawing content tokens only."""
    return planted.PlantedConfig(
        d_vocab=cfg.n_content + 1, min_len=2, max_len=cfg.max_len, max_start=cfg.max_start,
        batch=cfg.batch,
    )


def seen_before(tokens: Int[Tensor, "batch pos"]) -> Tensor:
    """Per position j, whether tokens[j] already occurred at some i < j (BOS never counts)."""
    same = tokens[:, :, None] == tokens[:, None, :]  # [batch, j, i]
    earlier = torch.ones_like(same[0]).tril(-1)
    return (same & earlier).any(-1) & (tokens != 0)


def _blocks(cfg: DupConfig) -> tuple[slice, slice, slice]:
    t, f = cfg.n_content, cfg.n_content + cfg.d_flag
    return slice(0, t), slice(t, f), slice(f, cfg.d_model)


@torch.no_grad()
def _plant_attention(model: HookedTransformer, cfg: DupConfig) -> None:
    """Set embeddings and the writers' queries and keys by hand; silence the other heads."""
    T, F, P = _blocks(cfg)
    s = cfg.sharpness * cfg.d_head**0.5  # TransformerLens divides scores by sqrt(d_head)
    model.embed.W_E.zero_()
    model.embed.W_E[1 : cfg.n_content + 1, T] = torch.eye(cfg.n_content)  # BOS stays zero
    model.pos_embed.W_pos.zero_()
    model.pos_embed.W_pos[:, P] = torch.eye(cfg.n_ctx)
    h0, h1 = cfg.writers
    a0, a1 = model.blocks[0].attn, model.blocks[1].attn
    for attn, h in ((a0, h0), (a1, h1)):
        attn.W_Q[h] = attn.W_K[h] = 0.0
    n, c = cfg.n_content, torch.arange(cfg.n_ctx)
    # Duplicate-token head: q·k = s·[same token] - s·[same position] + (s/2)·[key is BOS].
    a0.W_Q[h0, T, :n] = a0.W_K[h0, T, :n] = s**0.5 * torch.eye(n)
    a0.W_Q[h0, P, n:] = -(s**0.5) * torch.eye(cfg.n_ctx)
    a0.W_K[h0, P, n:] = s**0.5 * torch.eye(cfg.n_ctx)
    a0.b_Q[h0] = 0.0
    a0.b_Q[h0, n] = 0.5 * s**0.5  # meets the key of position 0 only
    a0.b_K[h0] = 0.0
    # Previous-token head: q·k = s·[key position = query position - 1].
    a1.W_Q[h1, P.start + c[1:], c[1:] - 1] = s**0.5
    a1.W_K[h1, P.start + c, c] = s**0.5
    a1.b_Q[h1] = a1.b_K[h1] = 0.0
    # Outside block F nobody writes from layer 0, and layer 1's other heads never read F.
    keep = torch.zeros(cfg.n_heads, 1, 1)
    keep[h0] = 1
    a0.W_O.mul_(keep)
    a0.W_O[:, :, T] = 0
    a0.W_O[:, :, P] = 0
    a0.b_O.zero_()
    a0.b_V[h0] = a1.b_V[h1] = 0.0  # with BOS at zero, finding nothing writes nothing
    for W in (a1.W_Q, a1.W_K, a1.W_V):
        W[:, F] = 0
    a1.W_V[h1, T] = 0  # the mover reads only the flag
    a1.W_O[[h for h in range(cfg.n_heads) if h != h1]] = 0
    a1.W_O[h1, :, P] = 0


def _trainable(model: HookedTransformer, cfg: DupConfig) -> list[Tensor]:
    """The writers' value and output weights and the unembedding; masks keep the blocks."""
    T, _, P = _blocks(cfg)
    h0, h1 = cfg.writers
    a0, a1 = model.blocks[0].attn, model.blocks[1].attn
    masks = {
        a0.W_V: torch.zeros_like(a0.W_V).index_fill_(0, torch.tensor([h0]), 1),
        a0.W_O: torch.zeros_like(a0.W_O).index_fill_(0, torch.tensor([h0]), 1),
        a1.W_V: torch.zeros_like(a1.W_V).index_fill_(0, torch.tensor([h1]), 1),
        a1.W_O: torch.zeros_like(a1.W_O).index_fill_(0, torch.tensor([h1]), 1),
    }
    masks[a0.W_O][..., T] = masks[a0.W_O][..., P] = 0
    masks[a1.W_V][:, T] = 0
    masks[a1.W_O][..., P] = 0
    model.requires_grad_(False)
    params = [*masks, a1.b_O, model.unembed.W_U, model.unembed.b_U]
    for p in params:
        p.requires_grad_(True)
    for p, mask in masks.items():
        p.register_hook(lambda grad, mask=mask: grad * mask)
    return params


def _answers(tokens: Tensor) -> Tensor:
    """Target read at position p = 1..n-1: 1 (YES) when token p-1 had occurred before, else 0."""
    return seen_before(tokens)[:, :-1].long()


def train_dup(cfg: DupConfig = DupConfig()) -> HookedTransformer:
    """Plant the attention, then train the rest on the YES/NO task (seconds on one CPU core)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(cfg.seed)
    model = HookedTransformer(
        HookedTransformerConfig(
            n_layers=2, d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=cfg.d_head,
            n_ctx=cfg.n_ctx, d_vocab=cfg.d_vocab, attn_only=True, normalization_type=None,
            positional_embedding_type="shortformer", act_fn="relu", seed=cfg.seed,
        ),
        move_to_device=False,
    )
    _plant_attention(model, cfg)
    params = _trainable(model, cfg)
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    data_cfg = _content_cfg(cfg)
    for _ in range(cfg.steps):
        tokens, _ = planted.training_batch(data_cfg, g)
        logits = model(tokens)[:, 1:, [cfg.no, cfg.yes]]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), _answers(tokens).flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval().requires_grad_(False)


def dup_batch(cfg: DupConfig, n: int, seed: int, length: int = 5) -> PlantedBatch:
    """`n` clean `[BOS] A A` prompts and corrupt `[BOS] B A` twins with no repeated token."""
    return planted.planted_batch(_content_cfg(cfg), n, seed, length)


def dup_metric(
    logits: Float[Tensor, "pairs pos vocab"], batch: PlantedBatch
) -> Float[Tensor, " pairs"]:
    """Mean YES-minus-NO logit about tokens L+1 .. 2L-1, repeats on clean prompts only."""
    L, vocab = batch.length, logits.shape[-1]
    answer = logits[:, L + 2 : 2 * L + 1]  # read at p, about token p-1
    return (answer[..., vocab - 1] - answer[..., vocab - 2]).mean(1)


def patching_effects(model: HookedTransformer, batch: PlantedBatch) -> dict[Head, float]:
    """Per head, the share of the clean-minus-corrupt metric lost when its `hook_z` is patched
    in from the corrupt run (exact patching, as in planted.patching_effects)."""
    return planted.patching_effects(model, batch, metric=dup_metric)


@torch.no_grad()
def attention_roles(
    model: HookedTransformer, batch: PlantedBatch
) -> dict[Head, tuple[float, float]]:
    """Per head, (duplicate-token score, previous-token score) on the clean second copy.

    Duplicate-token: mean attention from a repeated token to its first occurrence (key q - L).
    Previous-token: mean attention from q to q - 1.
    """
    _, cache = model.run_with_cache(batch.clean, names_filter=lambda n: n.endswith("pattern"))
    L = batch.length
    q = torch.arange(L + 1, 2 * L + 1)
    roles = {}
    for layer in range(model.cfg.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]  # [pairs, head, q, k]
        dup, prev = pattern[:, :, q, q - L].mean((0, 2)), pattern[:, :, q, q - 1].mean((0, 2))
        for head in range(model.cfg.n_heads):
            roles[(layer, head)] = (float(dup[head]), float(prev[head]))
    return roles
