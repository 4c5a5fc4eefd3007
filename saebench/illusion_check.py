"""The illusion check for SAE latents: split each decoder direction, patch each part, report.

The patching and the maths live in saebench.illusion; this module picks latents, runs the three
patches per latent (the full direction, its row-space part, its null-space part) in one pass
and turns them into JSON-ready rows. Makelov, Lange & Nanda 2023 (arXiv 2311.17030) call a
large effect that vanishes once the null-space part is removed the interpretability illusion.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from saebench.illusion import (
    IllusionConfig,
    Prompts,
    patch_effects,
    row_space,
    split,
    w_out,
)
from store.errors import UserError

ILLUSION_SHARE = 0.5
"""A latent counts as an illusion when more than this share of its effect needs the null-space
part (our threshold: the paper shows the split, it sets no cut-off)."""


def share_needing_null(full: float, row: float, floor: float) -> float | None:
    """1 − effect(row part) / effect(full): how much of the effect needs the null-space part.

    Our definition (the paper compares the two effects side by side): 0 when the row-space
    part alone does everything, 1 when it does nothing; it can leave [0, 1] when the row part
    overshoots (> 1 when it acts against the full direction; < 0 when it does more than the
    full direction, as an inert null part dilutes a unit direction's row part by √(1 − null
    share) on reading and on writing). None when |full| is below `floor`.
    """
    if abs(full) < floor or full == 0:
        return None
    return 1.0 - row / full


def check_directions(
    model, hook: str, directions: Float[Tensor, "n d_mlp"], prompts: Prompts,
    cfg: IllusionConfig | None = None, progress: bool = False,
) -> dict:
    """Split `directions` at W_out of `hook`'s MLP, patch along each part; a JSON-ready dict."""
    cfg = cfg or IllusionConfig()
    W = w_out(model, hook).cpu()
    if directions.shape[1] != W.shape[0]:
        raise UserError(f"directions are {directions.shape[1]} wide but {hook} is "
                        f"{W.shape[0]} wide (d_mlp)")
    basis = row_space(W, cfg.rel_tol)
    parts = split(directions.detach().cpu().float(), basis)
    stacked = torch.cat([directions.detach().cpu().float(), parts.row, parts.null])
    effects, clean, source, layer = patch_effects(model, hook, stacked, prompts, cfg,
                                                  progress=progress)
    full, row, null = effects.view(3, -1).tolist()
    gap = source - clean  # what patching the whole activation would do, at most (roughly)
    floor = cfg.min_effect * abs(gap)
    rows = [
        {"null_share": float(s), "effect_full": f, "effect_row": r, "effect_null": z,
         "full_of_gap": f / gap if gap else None,
         "share_needing_null": share_needing_null(f, r, floor)}
        for s, f, r, z in zip(parts.null_share.tolist(), full, row, null, strict=True)
    ]
    return {"hook": hook, "d_mlp": int(W.shape[0]), "d_model": int(W.shape[1]),
            "row_rank": int(basis.shape[1]), "clean_metric": clean, "source_metric": source,
            "effect_layer": layer, "rows": rows}


@torch.inference_mode()
def top_latents(
    model, sae, hook: str, tokens: Int[Tensor, "pairs seq"], pos: Int[Tensor, " pairs"],
    k: int, skip_first: bool = True,
) -> list[int]:
    """The k latents with the largest summed activation over the prompts' real positions.

    Position 0 is skipped under the BOS policy: it is an attention sink the SAE never saw.
    """
    device = next(model.parameters()).device
    saved: dict[str, Tensor] = {}

    def keep(act, hook):
        saved["h"] = act

    layer = int(hook.split(".")[1])
    model.run_with_hooks(tokens.to(device), fwd_hooks=[(hook, keep)], stop_at_layer=layer + 1)
    ar = torch.arange(tokens.shape[1], device=device)[None]
    real = (ar <= pos.to(device)[:, None]) & (ar >= int(skip_first))
    codes = sae.encode(saved["h"][real].float())
    total = codes.clamp_min(0).sum(0)
    top = total.topk(min(k, len(total)))
    return [int(i) for i, v in zip(top.indices.tolist(), top.values.tolist(), strict=True)
            if v > 0]


def check_latents(
    model, sae, hook: str, latents: list[int], prompts: Prompts,
    cfg: IllusionConfig | None = None, progress: bool = False,
) -> dict:
    """The illusion check on SAE latents' decoder directions (rows of W_dec)."""
    cfg = cfg or IllusionConfig()
    bad = [i for i in latents if not 0 <= i < sae.d_sae]
    if bad:
        raise UserError(f"latent {bad[0]} is out of range for d_sae {sae.d_sae}")
    if not latents:
        raise UserError("no latents to check (none given, and none fires on the prompts)")
    rec = check_directions(model, hook, sae.W_dec.detach()[latents], prompts, cfg, progress)
    for latent, row in zip(latents, rec["rows"], strict=True):
        row["latent"] = latent
    return rec


def summary(rows: list[dict]) -> dict:
    """Quartiles of the null-space share and of the share needing it; the illusion count."""

    def quartiles(values: list[float]) -> dict | None:
        if not values:
            return None
        q = torch.tensor(values, dtype=torch.float64).quantile(torch.tensor([0.25, 0.5, 0.75],
                                                                            dtype=torch.float64))
        return {"q25": float(q[0]), "median": float(q[1]), "q75": float(q[2])}

    needs = [r["share_needing_null"] for r in rows if r["share_needing_null"] is not None]
    return {"n": len(rows), "null_share": quartiles([r["null_share"] for r in rows]),
            "share_needing_null": quartiles(needs),
            "illusions": sum(1 for v in needs if v > ILLUSION_SHARE)}


def mlp_hooks(hooks: list[str], top: int = 1) -> list[str]:
    """The hooks of a circuit that carry MLP hidden activations; a UserError when none does."""
    from saebench.illusion import MLP_POST

    if top < 1:
        raise UserError(f"--illusion must be a positive number of nodes, got {top}")
    found = [h for h in hooks if MLP_POST.match(h)]
    if not found:
        raise UserError("--illusion needs at least one SAE at an MLP hidden hook "
                        f"(blocks.L.mlp.hook_post); the circuit's hooks are {', '.join(hooks)}")
    return found


def check_circuit(model, sset, task, batch, effects: dict[str, Tensor], top: int,
                  cfg: IllusionConfig | None = None) -> dict:
    """{hook: check} for the `top` latents by |node effect| at each MLP hidden hook.

    `effects` are a circuit's node effects (saebench.circuits.attribution.Attribution.effects:
    [d_sae + 1] or, per position, [pos, d_sae + 1], the last column the error node, which has
    no direction). Per-position effects are summed in absolute value per latent. The ranking
    ignores the node threshold, so the check runs even when no MLP node made the circuit.
    """
    from saebench.illusion import task_prompts

    prompts = task_prompts(task, batch)
    out = {}
    for hook in mlp_hooks(sset.hooks, top):
        sae = sset.saes[sset.hooks.index(hook)]
        eff = effects[hook].abs()
        eff = (eff if eff.dim() == 1 else eff.sum(0))[: sae.d_sae]
        ranked = eff.topk(min(top, sae.d_sae))
        latents = [int(i) for i, v in zip(ranked.indices, ranked.values, strict=True) if v > 0]
        if latents:
            out[hook] = check_latents(model, sae, hook, latents, prompts, cfg, progress=True)
            out[hook]["summary"] = summary(out[hook]["rows"])
    return out
