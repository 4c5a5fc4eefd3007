"""A planted ground-truth circuit: a tiny attention-only transformer trained on induction.

Random token segments repeated once (`[BOS] A A`) can only be continued by an induction
circuit (Olsson et al. 2022, "In-context learning and induction heads", §2): a previous-token
head in layer 0 writes "my predecessor was a_j" into each position, and an induction head in
layer 1 uses it as a key to attend to the token after the earlier occurrence of the current
token, then copies it. The segment length varies per sequence so that no fixed-offset
positional head can solve the task on its own.

The ground truth is established by exact activation patching (Wang et al. 2022, "Interpretability
in the wild", §3): each head's output (`hook_z`) is replaced by its value on a corrupted run whose
first copy is replaced by unrelated tokens; heads whose patching destroys a clear share of the
metric form the circuit. Attention patterns then confirm the roles by construction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

Head = tuple[int, int]


@dataclass(frozen=True)
class PlantedConfig:
    """Shape and training budget of the planted induction model."""

    n_layers: int = 2
    """Attention-only layers; two are the minimum an induction circuit needs."""
    n_heads: int = 4
    """Heads per layer."""
    d_model: int = 32
    """Residual width."""
    d_vocab: int = 24
    """Vocabulary size; token 0 is BOS, the rest are content tokens."""
    min_len: int = 3
    """Shortest repeated segment."""
    max_len: int = 6
    """Longest repeated segment; sequences are 1 + 2·max_len tokens."""
    steps: int = 400
    """Adam steps."""
    batch: int = 64
    """Sequences per step."""
    lr: float = 3e-3
    """Adam learning rate."""
    seed: int = 0
    """Seed for weights and data."""

    max_start: int = 3
    """Largest number of noise tokens before the first copy."""
    writers: tuple[int, ...] = (1, 2)
    """Per layer, the one head allowed to write to the residual stream (the planted circuit)."""

    @property
    def n_ctx(self) -> int:
        return 1 + self.max_start + 2 * self.max_len


def _segments(n: int, length: int, vocab: int, g: torch.Generator) -> Int[Tensor, "n length"]:
    """Rows of distinct content tokens: no repeats inside a segment keeps induction unambiguous."""
    noise = torch.rand(n, vocab - 1, generator=g)
    return noise.argsort(dim=1)[:, :length] + 1


def training_batch(cfg: PlantedConfig, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Sequences `[BOS] noise A A noise` and a mask of the positions whose next token is induced.

    Both the segment length and its start vary, so neither a fixed offset nor an absolute
    position predicts the answer: only matching the current token against earlier ones does.
    """
    n = cfg.batch
    lengths = torch.randint(cfg.min_len, cfg.max_len + 1, (n,), generator=g)
    starts = 1 + (torch.rand(n, generator=g) * (cfg.n_ctx - 2 * lengths)).long()
    tokens = torch.randint(1, cfg.d_vocab, (n, cfg.n_ctx), generator=g)
    tokens[:, 0] = 0
    seg = _segments(n, cfg.max_len, cfg.d_vocab, g)
    for row in range(n):
        L, s = int(lengths[row]), int(starts[row])
        tokens[row, s : s + L] = seg[row, :L]
        tokens[row, s + L : s + 2 * L] = seg[row, :L]
    # Predicting token p+1 from position p is induction for p in [s+L, s+2L-2].
    p = torch.arange(cfg.n_ctx - 1)[None, :]
    first, last = (starts + lengths)[:, None], (starts + 2 * lengths - 2)[:, None]
    return tokens, (p >= first) & (p <= last)


def _plant(model: HookedTransformer, writers: tuple[int, ...]) -> None:
    """Silence every head but one per layer: zero W_O and keep its gradient at zero.

    Trained freely, a tiny model spreads induction over all its heads (we measured every head
    of layer 1 attending to the induced token), leaving no head outside the circuit. Here the
    other heads keep their random query, key and value weights, so their outputs (`hook_z`)
    still vary with the input, as distractors, but nothing downstream reads them.
    """
    for layer, block in enumerate(model.blocks):
        keep = torch.zeros(model.cfg.n_heads, 1, 1)
        keep[writers[layer]] = 1.0
        with torch.no_grad():
            block.attn.W_O.mul_(keep)
        block.attn.W_O.register_hook(lambda grad, keep=keep: grad * keep)


def train_planted(cfg: PlantedConfig = PlantedConfig()) -> HookedTransformer:
    """Train the tiny attention-only model on induction (seconds on one CPU core)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(cfg.seed)
    model = HookedTransformer(
        HookedTransformerConfig(
            n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads,
            d_head=cfg.d_model // cfg.n_heads, n_ctx=cfg.n_ctx, d_vocab=cfg.d_vocab,
            attn_only=True, normalization_type="LN", positional_embedding_type="shortformer",
            act_fn="relu", seed=cfg.seed,
        ),
        move_to_device=False,
    )
    _plant(model, cfg.writers)
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    for _ in range(cfg.steps):
        tokens, mask = training_batch(cfg, g)
        logp = model(tokens)[:, :-1].log_softmax(-1)
        nll = -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
        loss = nll[mask].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval().requires_grad_(False)


@dataclass(frozen=True)
class PlantedBatch:
    """Clean `[BOS] A A` and corrupt `[BOS] B A` prompts, position-aligned."""

    clean: Int[Tensor, "pairs pos"]
    corrupt: Int[Tensor, "pairs pos"]
    length: int
    """Length L of the repeated segment; the second copy starts at position 1 + L."""


Metric = Callable[[Tensor, PlantedBatch], Tensor]
"""A per-pair metric `(logits [pairs, pos, vocab], batch) -> [pairs]`; higher = behaviour."""


def planted_batch(cfg: PlantedConfig, n: int, seed: int, length: int = 5) -> PlantedBatch:
    """`n` clean prompts and corrupt twins whose first copy is replaced by unrelated tokens."""
    g = torch.Generator().manual_seed(seed)
    seg = _segments(n, 2 * length, cfg.d_vocab, g)  # A and B disjoint: no accidental induction
    a, b = seg[:, :length], seg[:, length:]
    bos = torch.zeros(n, 1, dtype=torch.long)
    return PlantedBatch(torch.cat([bos, a, a], 1), torch.cat([bos, b, a], 1), length)


def induction_metric(
    logits: Float[Tensor, "pairs pos vocab"], batch: PlantedBatch
) -> Float[Tensor, " pairs"]:
    """Mean log-probability of the induced tokens over the second copy (higher = better)."""
    L = batch.length
    logp = logits[:, L + 1 : 2 * L].log_softmax(-1)  # predicts tokens L+2 .. 2L
    target = batch.clean[:, L + 2 : 2 * L + 1]
    return logp.gather(-1, target[..., None]).squeeze(-1).mean(1)


@torch.no_grad()
def patching_effects(
    model: HookedTransformer, batch: PlantedBatch, metric: Metric | None = None
) -> dict[Head, float]:
    """Per head, the share of the clean-minus-corrupt metric lost when its `hook_z` is patched
    in from the corrupt run (1 = the head carries the whole effect, 0 = none of it).

    `metric` defaults to `induction_metric`; other plants pass their own.
    """
    metric = metric or induction_metric
    clean = metric(model(batch.clean), batch).mean()
    _, cache = model.run_with_cache(batch.corrupt, names_filter=lambda n: n.endswith("hook_z"))
    corrupt = metric(model(batch.corrupt), batch).mean()
    effects = {}
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.attn.hook_z"
        for head in range(model.cfg.n_heads):
            def patch(z, hook, head=head, name=name):
                z[:, :, head] = cache[name][:, :, head]
                return z

            logits = model.run_with_hooks(batch.clean, fwd_hooks=[(name, patch)])
            patched = metric(logits, batch).mean()
            effects[(layer, head)] = float((clean - patched) / (clean - corrupt))
    return effects


@torch.no_grad()
def attention_roles(
    model: HookedTransformer, batch: PlantedBatch
) -> dict[Head, tuple[float, float]]:
    """Per head, (previous-token score, induction score) on the clean prompts' second copy.

    Previous-token: mean attention from position p to p-1. Induction: mean attention from a
    token in the second copy to the token after its first occurrence, p - L + 1 (Olsson et
    al. 2022, §2 "Induction heads").
    """
    _, cache = model.run_with_cache(batch.clean, names_filter=lambda n: n.endswith("pattern"))
    L = batch.length
    q = torch.arange(L + 1, 2 * L + 1)  # queries in the second copy
    roles = {}
    for layer in range(model.cfg.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]  # [pairs, head, q, k]
        prev = pattern[:, :, q, q - 1].mean((0, 2))
        ind = pattern[:, :, q, q - L + 1].mean((0, 2))
        for head in range(model.cfg.n_heads):
            roles[(layer, head)] = (float(prev[head]), float(ind[head]))
    return roles


def circuit_heads(effects: dict[Head, float], margin: float = 0.2) -> set[Head]:
    """The ground truth: heads whose patching loses more than `margin` of the effect."""
    return {head for head, effect in effects.items() if effect > margin}
