"""Steering: generate with chosen SAE latents pushed, and see what it does to the text and loss.

Two interventions at the SAE's hook, in the units Neuronpedia's steer page uses (a multiple of
each latent's max activation m_i, so one strength means the same thing for every latent):
- add: x' = x + Σ s_i·m_i·W_dec[i] at every position (activation addition along the latent's
  decoder row; Turner et al. 2023, "Steering Language Models With Activation Engineering", §2);
- clamp: latent i is set to s_i·m_i through the SAE with its error term kept,
  x' = x̂(f with f_i := s_i·m_i) + (x − x̂(f)) = x + Σ (s_i·m_i − f_i(x))·W_dec[i]
  (Templeton et al. 2024, "Scaling Monosemanticity", "Feature steering"): every other latent and
  the reconstruction error stay as they were, so clamping a latent to its own value is exact.

Codes come from each SAE's batch-independent inference rule (`encode`, per token: calibrated
thresholds for BatchTopK / mutual / feature choice; plain top-k selection for g-SAE, whose
gradient-aware rule would need a backward pass per generated token).

Position 0 is left alone when the SAE's inputs begin with BOS: the store never holds it (its
activation is an attention-sink outlier no SAE was trained on) and the downstream eval leaves it
clean too (saebench.evals.downstream); every later position is steered.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor

from saebench.steer_loss import heldout_ce, prepare_background
from saebench.steer_sampling import paired_generate
from store.errors import UserError

METHODS = ("add", "clamp")
MAX_NEW_TOKENS = 512
OVERLAP_LOSS = True
"""Compute the held-out loss in a worker thread while the continuations decode."""
_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="steer-loss")


@dataclass(frozen=True)
class SteerConfig:
    """What to steer and how to generate (SAEHandle.steer's keyword arguments)."""

    latents: tuple[int, ...]
    """The latents to steer."""
    strengths: tuple[float, ...]
    """One per latent, in units of that latent's max activation (add: a multiple of its
    decoder row; clamp: the value it is held at)."""
    method: str = "add"
    """"add" (decoder row added at every position) or "clamp" (latent held at the value)."""
    prompt: str = "I think that"
    """The text both generations continue."""
    n_tokens: int = 30
    """New tokens to generate."""
    temperature: float = 1.0
    """Sampling temperature; 0 is greedy decoding."""
    seed: int = 0
    """Seed of the sampling noise, shared by the default and the steered generation."""

    def __post_init__(self) -> None:
        if len(self.latents) != len(self.strengths) or not self.latents:
            raise UserError(f"give one strength per latent: {len(self.latents)} latents, "
                            f"{len(self.strengths)} strengths")
        if len(set(self.latents)) != len(self.latents):
            raise UserError(f"latents {list(self.latents)} repeat one; give each once")
        for s in self.strengths:
            if isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s):
                raise UserError(f"strength {s!r} is not a finite number")
        if self.method not in METHODS:
            raise UserError(f"unknown steering method {self.method!r}; choose add or clamp")
        if self.method == "clamp" and min(self.strengths) < 0:
            raise UserError("clamp holds a latent at strength × max activation, and latents "
                            "are never negative: give strengths >= 0 (or use add)")
        if not 1 <= self.n_tokens <= MAX_NEW_TOKENS:
            raise UserError(f"n_tokens must be between 1 and {MAX_NEW_TOKENS}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise UserError(f"temperature must be >= 0, not {self.temperature}")

    def check_latents(self, d_sae: int) -> None:
        for latent in self.latents:
            if isinstance(latent, bool) or not isinstance(latent, int) or not 0 <= latent < d_sae:
                raise UserError(f"latent {latent!r} is out of range for d_sae {d_sae}")


class SteeringHook:
    """A TransformerLens forward hook applying one steering to batch rows `rows`, at absolute
    positions >= `first_pos`. `offset` is the absolute position of the hook's first column: the
    KV-cached generator advances it, since a cached step sees only the new token."""

    def __init__(self, sae, latents: list[int], values: Float[Tensor, " n"], method: str,
                 first_pos: int, rows: slice | None = None) -> None:
        self.sae, self.method, self.first_pos = sae, method, first_pos
        self.rows = rows if rows is not None else slice(None)
        self.offset = 0
        self.idx = torch.tensor(latents, device=sae.W_dec.device)
        self.values = values.to(sae.W_dec)
        self.W = sae.W_dec[self.idx].detach()  # [n, d_in]
        self.direction = self.values @ self.W  # add's constant push, summed over latents

    def steer(self, x: Float[Tensor, "tokens d_in"]) -> Float[Tensor, "tokens d_in"]:
        """x' for a block of tokens (see the module docstring)."""
        if self.method == "add":
            return x + self.direction.to(x.dtype)
        f = self.sae.encode(x.to(self.W.dtype))[:, self.idx]
        return x + ((self.values - f) @ self.W).to(x.dtype)

    def __call__(self, act: Tensor, hook) -> Tensor:
        lo = max(self.first_pos - self.offset, 0)
        if lo >= act.shape[1]:
            return act
        part = act[self.rows, lo:]
        flat = part.reshape(-1, self.W.shape[1])  # hook_z [b, pos, head, d_head] flattens too
        out = act.clone()
        out[self.rows, lo:] = self.steer(flat).reshape(part.shape)
        return out


@dataclass
class Generation:
    """One continuation of the prompt."""

    ids: list[int]
    """New token ids (cut before the first EOS)."""
    tokens: list[str]
    """Each new token decoded on its own (for highlighting)."""
    text: str
    """The new tokens decoded together."""
    acts: dict[int, list[float]]
    """Per target latent, its activation on each new token, read on the unsteered model."""


@dataclass
class LossChange:
    """Mean next-token CE on held-out text with and without the steering hook."""

    ce_default: float
    ce_steered: float
    n_tokens: int
    """Predictions averaged (positions after BOS)."""
    source: str
    """Where the held-out text came from."""

    @property
    def delta(self) -> float:
        return self.ce_steered - self.ce_default


@dataclass
class SteerResult:
    """Default and steered generations from one prompt and seed, and the loss change."""

    config: SteerConfig
    max_acts: list[float]
    """The max activation of each latent, the unit of its strength."""
    max_act_source: str
    prompt_tokens: list[str]
    """The prompt's tokens after BOS, each decoded on its own."""
    default: Generation
    steered: Generation
    loss: LossChange | None
    """None when there was no held-out text (no store recorded and none given)."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time of generation, activation read-back and loss."""


def latent_acts(model, sae, hook_name: str, seqs: Int[Tensor, "rows pos"],
                latents: list[int]) -> Float[Tensor, "rows pos n"]:
    """The latents' activations at every position of each sequence, on the unsteered model."""
    from store.hooks import stop_layer

    saved: dict[str, Tensor] = {}

    def keep(act: Tensor, hook) -> None:
        saved["x"] = act.detach()

    with torch.inference_mode():
        model.run_with_hooks(seqs, fwd_hooks=[(hook_name, keep)],
                             stop_at_layer=stop_layer(hook_name))
        x = saved["x"].reshape(seqs.shape[0] * seqs.shape[1], -1).to(sae.W_dec.dtype)
        codes = sae.encode(x)[:, torch.tensor(latents, device=x.device)]
    return codes.reshape(seqs.shape[0], seqs.shape[1], len(latents)).float()


def steer(model, sae, hook_name: str, prompt_ids: Int[Tensor, " pos"], cfg: SteerConfig,
          max_acts: list[float], *, first_pos: int, windows: Tensor | None = None,
          windows_source: str = "", max_act_source: str = "given") -> SteerResult:
    """Default and steered generations (one batch, shared sampling noise), the latents'
    activations on both, and the held-out CE change; `max_acts` are the strength units."""
    cfg.check_latents(sae.d_sae)
    for latent, m in zip(cfg.latents, max_acts, strict=True):
        if not (math.isfinite(m) and m > 0):
            raise UserError(f"latent {latent} never fired where its max activation was read "
                            f"({max_act_source}): max activation {m}; pick a live latent")
    if prompt_ids.numel() == 0:
        raise UserError("the prompt is empty and this SAE's inputs start with no BOS: type one")
    if prompt_ids.numel() + cfg.n_tokens > model.cfg.n_ctx:
        raise UserError(f"prompt plus new tokens exceed the model's context of {model.cfg.n_ctx}")
    latents = list(cfg.latents)
    values = torch.tensor(cfg.strengths) * torch.tensor(max_acts, dtype=torch.float32)
    hook = SteeringHook(sae, latents, values, cfg.method, first_pos, rows=slice(1, 2))
    eos = model.tokenizer.eos_token_id if model.tokenizer is not None else None
    seconds: dict[str, float] = {}

    pending = None
    if windows is not None:
        windows = windows.to(prompt_ids.device)
    if (windows is not None and OVERLAP_LOSS
            and prepare_background(model, windows, hook_name, first_pos)):
        # The held-out pass is a few large matmuls that release the GIL, while decoding is
        # bound by Python overhead per step: run side by side, they share the cores instead
        # of queueing (benchmarks/steer_bench.py). Neither reads what the other writes.
        pending = _POOL.submit(_loss, model, sae, hook_name, latents, values, cfg.method,
                               first_pos, windows, windows_source)
    t0 = time.perf_counter()
    new = paired_generate(model, prompt_ids, hook_name, hook, cfg.n_tokens, cfg.temperature,
                          cfg.seed, eos)
    seconds["generate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    seqs = torch.cat([prompt_ids[None].expand(2, -1), new], dim=1)
    acts = latent_acts(model, sae, hook_name, seqs, latents)[:, prompt_ids.numel():]
    gens = [_generation(model.tokenizer, new[r], acts[r], latents, eos) for r in (0, 1)]
    seconds["read_back"] = time.perf_counter() - t0

    loss = None
    if pending is not None:
        t0 = time.perf_counter()
        loss = pending.result()
        seconds["loss_wait"] = time.perf_counter() - t0  # what the overlap did not hide
    elif windows is not None:
        t0 = time.perf_counter()
        loss = _loss(model, sae, hook_name, latents, values, cfg.method, first_pos, windows,
                     windows_source)
        seconds["loss"] = time.perf_counter() - t0
    prompt_tokens = [model.tokenizer.decode([i]) for i in prompt_ids[first_pos:].tolist()]
    return SteerResult(cfg, [float(m) for m in max_acts], max_act_source, prompt_tokens,
                       gens[0], gens[1], loss, seconds)


def _loss(model, sae, hook_name: str, latents: list[int], values: Tensor, method: str,
          first_pos: int, windows: Tensor, source: str) -> LossChange:
    full = SteeringHook(sae, latents, values, method, first_pos)
    ce_default, ce_steered, n = heldout_ce(model, windows, hook_name, full, first_pos)
    return LossChange(ce_default, ce_steered, n, source)


def _generation(tokenizer, ids: Tensor, acts: Tensor, latents: list[int],
                eos: int | None) -> Generation:
    keep = ids.tolist()
    if eos is not None and eos in keep:
        keep = keep[: keep.index(eos)]
    per_latent = {lat: acts[: len(keep), j].tolist() for j, lat in enumerate(latents)}
    return Generation(keep, [tokenizer.decode([i]) for i in keep], tokenizer.decode(keep),
                      per_latent)
