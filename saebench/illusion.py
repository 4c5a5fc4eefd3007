"""The subspace-patching illusion check (Makelov, Lange & Nanda 2023, arXiv 2311.17030).

Patching a 1-d subspace of an MLP's hidden activations (`blocks.L.mlp.hook_post`, d_mlp wide)
can change the output through a pathway the model never uses: the paper's mathematical
example (its "MLP-in-the-middle" illusion, realised on IOI in GPT-2 small) is a
direction v = v_null + v_row, where v_null lies in the kernel of v ↦ v·W_out (the MLP cannot
write it anywhere) but varies with the feature, and v_row is a *dormant* direction in W_out's
row space that barely varies on the data. Patching along v copies the variation of v_null
into v_row, and the output moves though neither part alone would move it. The paper's test
is to split v into these two components and patch each alone: an effect that
vanishes without v_null is the illusion's signature.

Our choices, where the paper leaves them open: the row space is the span of W_out's left
singular vectors whose singular value exceeds `rel_tol` times the largest (an SVD in float64);
the patch copies the projection onto the unit direction from the corrupt prompt into the clean
run (the paper's 1-d subspace patch) at every real position of the prompt;
an effect is the change of the mean task metric (e.g. the IOI logit difference) from the clean
run; and the share that needs v_null is 1 − effect(row part) / effect(full direction).
The paper's full text was not at hand when this was written (only its abstract and summary),
so no section is cited and the exact test above is ours, following its argument.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from jaxtyping import Float, Int
from torch import Tensor

from store.errors import UserError

MLP_POST = re.compile(r"^blocks\.(\d+)\.mlp\.hook_post$")


@dataclass(frozen=True)
class IllusionConfig:
    """How the illusion check splits and patches directions."""

    rel_tol: float = 1e-4
    """Singular values of W_out below rel_tol × the largest count as zero (our choice: the
    paper uses the exact kernel; a tolerance keeps near-null directions out of the row space,
    which writes them with a gain below 1e-4 of the strongest)."""
    positions: str = "all"
    """Patch at every real position ("all") or at the metric's position only ("last")."""
    batch_size: int = 32
    """Prompt pairs per forward pass."""
    min_effect: float = 0.05
    """The share needing the null space is left undefined (None) when |effect of the full
    direction| is below this fraction of |clean − corrupt| mean metric (our choice: a ratio of
    two near-zero effects is noise, and random directions' effects are near zero)."""

    def __post_init__(self) -> None:
        if not 0 < self.rel_tol < 1:
            raise UserError(f"rel_tol must lie in (0, 1), got {self.rel_tol}")
        if self.positions not in ("all", "last"):
            raise UserError(f"positions must be 'all' or 'last', got {self.positions!r}")
        if self.batch_size < 1:
            raise UserError(f"batch_size must be positive, got {self.batch_size}")
        if self.min_effect < 0:
            raise UserError(f"min_effect must be non-negative, got {self.min_effect}")


def mlp_layer(hook: str) -> int:
    """The layer of an MLP hidden hook `blocks.L.mlp.hook_post`; a UserError for any other."""
    match = MLP_POST.match(hook)
    if match is None:
        raise UserError(f"the illusion check needs an SAE at an MLP hidden hook "
                        f"(blocks.L.mlp.hook_post, d_mlp wide); this one is at {hook}")
    return int(match.group(1))


def w_out(model, hook: str) -> Float[Tensor, "d_mlp d_model"]:
    """The output weights of the MLP whose hidden activations `hook` carries."""
    layer = mlp_layer(hook)
    if not 0 <= layer < len(model.blocks):
        raise UserError(f"{hook}: the model has only {len(model.blocks)} layers")
    mlp = getattr(model.blocks[layer], "mlp", None)
    if mlp is None or not hasattr(mlp, "W_out"):
        raise UserError(f"{hook}: block {layer} has no MLP with output weights W_out")
    return mlp.W_out.detach()


def row_space(
    W_out: Float[Tensor, "d_mlp d_model"], rel_tol: float = 1e-4
) -> Float[Tensor, "d_mlp rank"]:
    """An orthonormal basis of the directions W_out writes (v·W_out ≠ 0), in float64."""
    U, S, _ = torch.linalg.svd(W_out.double(), full_matrices=False)
    rank = int((S > rel_tol * S[0]).sum()) if S.numel() and S[0] > 0 else 0
    return U[:, :rank]


@dataclass(frozen=True)
class Split:
    """Directions split into their row-space and null-space parts (v = row + null)."""

    row: Float[Tensor, "n d_mlp"]
    """The part W_out sees: the projection onto its row space."""
    null: Float[Tensor, "n d_mlp"]
    """The part in the kernel of v ↦ v·W_out, which cannot change the output directly."""
    null_share: Float[Tensor, " n"]
    """‖null‖² / ‖v‖²: the share of each direction's squared norm in the null space."""


def split(
    v: Float[Tensor, "n d_mlp"], basis: Float[Tensor, "d_mlp rank"]
) -> Split:
    """Split directions v into row-space and null-space parts (orthogonal projection)."""
    v64 = v.double()
    row = (v64 @ basis) @ basis.T
    null = v64 - row
    share = null.pow(2).sum(1) / v64.pow(2).sum(1).clamp_min(1e-300)
    return Split(row.to(v.dtype), null.to(v.dtype), share.to(v.dtype))


def unit(v: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
    """Rows scaled to unit norm; zero rows stay zero (their patch does nothing)."""
    norm = v.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, v / norm.clamp_min(1e-30), torch.zeros_like(v))


def subspace_patch(
    h: Float[Tensor, "batch pos d"], h_src: Float[Tensor, "batch pos d"],
    u: Float[Tensor, "*rows d"], where: Float[Tensor, "batch pos"],
) -> Float[Tensor, "batch pos d"]:
    """1-d subspace patch (Makelov et al. 2023): h + ((h_src − h)·u) u where `where` is 1.

    `u` is one direction [d] for every row, or one per row [batch, d].
    """
    u = u if u.dim() == 1 else u[:, None, :]
    coef = ((h_src - h) * u).sum(-1) * where
    return h + coef[..., None] * u


Metric = Callable[[Tensor, Tensor], Tensor]
"""(logits at the metric position [batch, 1, vocab], pair indices [batch]) -> metric [batch]."""


@dataclass(frozen=True)
class Prompts:
    """Position-aligned clean and source prompts, and the metric read at `pos`."""

    clean: Int[Tensor, "pairs seq"]
    """The run that is patched."""
    source: Int[Tensor, "pairs seq"]
    """The run whose projections are copied in (a task's corrupt prompts)."""
    pos: Int[Tensor, " pairs"]
    """The position whose logits the metric reads (the last real token)."""
    metric: Metric
    """Per-pair metric of the logits at `pos` (higher = more of the behaviour)."""


def _logits_at(model, tokens: Tensor, pos: Tensor, hooks: list) -> Tensor:
    with model.hooks(fwd_hooks=hooks):
        resid = model(tokens, stop_at_layer=model.cfg.n_layers)
    picked = resid[torch.arange(len(pos), device=resid.device), pos][:, None]
    # Unembedding only `pos` saves ~20% of a forward on a 49k vocabulary (tasks/run.py).
    ln_final = getattr(model, "ln_final", None)  # absent when normalization_type is None
    return model.unembed(picked if ln_final is None else ln_final(picked))


def _chunk_effects(
    model, hook: str, units: Tensor, prompts: Prompts, idx: Tensor, cfg: IllusionConfig,
    tick: Callable[[int], object],
) -> tuple[Tensor, float, float, float]:
    """(Σ over the chunk's pairs of metric change per direction, Σ clean metric, Σ source
    metric, Σ metric change when the whole hook is patched).

    Several directions share a forward (the pairs repeated once per direction) while the
    rows fit in cfg.batch_size: on short prompts a forward's fixed cost dominates.
    """
    device, b = units.device, len(idx)
    pos = prompts.pos[idx].to(device)
    width = int(pos.max()) + 1
    clean = prompts.clean[idx, :width].to(device)
    ar = torch.arange(width, device=device)[None]
    where = (ar <= pos[:, None]) if cfg.positions == "all" else (ar == pos[:, None])
    saved: dict[str, Tensor] = {}

    def keep(act, hook):
        saved["h"] = act.clone()

    src = prompts.metric(_logits_at(model, prompts.source[idx, :width].to(device), pos,
                                    [(hook, keep)]), idx)
    base = prompts.metric(_logits_at(model, clean, pos, []), idx).double().cpu()
    sums = torch.zeros(len(units), dtype=torch.float64)
    group = max(1, cfg.batch_size // b)
    for g in range(0, len(units), group):
        u = units[g : g + group].repeat_interleave(b, dim=0)  # [directions × pairs, d]
        reps = len(u) // b
        h_src, w = saved["h"].repeat(reps, 1, 1), where.repeat(reps, 1).to(saved["h"].dtype)

        def patch(act, hook, u=u, h_src=h_src, w=w):
            return subspace_patch(act, h_src, u, w)

        out = prompts.metric(_logits_at(model, clean.repeat(reps, 1), pos.repeat(reps),
                                        [(hook, patch)]), idx.repeat(reps))
        sums[g : g + reps] = (out.double().cpu().view(reps, b) - base).sum(1)
        tick(len(u))

    def patch_all(act, hook):
        return act + (saved["h"] - act) * where.to(act.dtype)[..., None]

    layer = prompts.metric(_logits_at(model, clean, pos, [(hook, patch_all)]), idx)
    return (sums, float(base.sum()), float(src.double().sum()),
            float((layer.double().cpu() - base).sum()))


@torch.inference_mode()
def patch_effects(
    model, hook: str, directions: Float[Tensor, "n d_mlp"], prompts: Prompts,
    cfg: IllusionConfig | None = None, progress: bool = False,
) -> tuple[Float[Tensor, " n"], float, float, float]:
    """(Δ mean metric when patching along each direction, mean clean metric, mean source
    metric, Δ mean metric when patching the whole hook: the paper's contrast, where a 1-d
    patch that beats the whole MLP layer is the "MLP-in-the-middle" illusion)."""
    from tqdm.auto import tqdm

    cfg = cfg or IllusionConfig()
    device = next(model.parameters()).device
    units = unit(directions.float()).to(device)
    total, sums = torch.zeros(len(units), dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    n = len(prompts.pos)
    with tqdm(total=n * len(units), desc="illusion patches", unit="patch",
              disable=not progress) as bar:
        for start in range(0, n, cfg.batch_size):
            idx = torch.arange(start, min(n, start + cfg.batch_size))
            per_dir, *rest = _chunk_effects(model, hook, units, prompts, idx, cfg, bar.update)
            total += per_dir
            sums += torch.tensor(rest, dtype=torch.float64)
    clean, source, layer = (sums / n).tolist()
    return (total / n).float(), clean, source, layer


def task_prompts(task, batch) -> Prompts:
    """A task's clean/corrupt pairs (saebench.tasks) as Prompts with the task's metric."""

    def metric(logits: Tensor, idx: Tensor) -> Tensor:
        sub = batch.select(idx.to(batch.pos.device)).to(logits.device)
        # The logits hold only position `pos`, so the metric reads position 0 of them.
        return task.metric(logits, replace(sub, pos=torch.zeros_like(sub.pos)))

    return Prompts(batch.clean, batch.corrupt, batch.pos, metric)
