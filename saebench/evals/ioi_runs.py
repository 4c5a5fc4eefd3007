"""Model runs for the IOI dictionary eval: the residual stream at the SAE's hook, and the rest
of the model with one position's activation replaced.

One position per prompt (the site) is edited: END, the last prompt token, as Makelov et al.
2024 (arXiv 2405.08366, §3) edit circuit nodes at END, or another named position
(ioi_prompts.site_positions). Because the hook is on the residual stream, a run is split
there: the part before the hook is computed once per prompt set, and each intervention reruns
only the blocks after it (TransformerLens `start_at_layer`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from store.errors import UserError

_RESID = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")


def start_layer(hook: str, n_layers: int) -> int:
    """The block whose input is the hook's activation, or a UserError for other hooks."""
    match = _RESID.match(hook)
    if match is None:
        raise UserError(
            f"ioi_principled edits the residual stream: it needs an SAE at "
            f"blocks.L.hook_resid_pre or blocks.L.hook_resid_post, not {hook}"
        )
    layer = int(match.group(1)) + (match.group(2) == "post")
    if layer > n_layers or (match.group(2) == "pre" and layer >= n_layers):
        raise UserError(f"hook {hook} is past the model's {n_layers} blocks")
    return layer


def _chunks(n: int, size: int) -> Iterator[slice]:
    for lo in range(0, n, size):
        yield slice(lo, min(lo + size, n))


@torch.inference_mode()
def residual(
    model, tokens: Int[Tensor, "n seq"], start: int, batch: int
) -> Float[Tensor, "n seq d_in"]:
    """The residual stream entering block `start` (= the hook's activation), every position."""
    device = next(model.parameters()).device
    parts = [model(tokens[s].to(device), stop_at_layer=start).float().cpu()
             for s in _chunks(len(tokens), batch)]
    return torch.cat(parts)


def at_site(
    resid: Float[Tensor, "n seq d_in"], site: Int[Tensor, " n"]
) -> Float[Tensor, "n d_in"]:
    """Each prompt's activation at its site."""
    return resid[torch.arange(len(site)), site]


@torch.inference_mode()
def end_logits(
    model,
    resid: Float[Tensor, "n seq d_in"],
    start: int,
    pos: Int[Tensor, " n"],
    site: Int[Tensor, " n"],
    new: Float[Tensor, "n d_in"] | None,
    token_ids: Int[Tensor, "n t"],
    batch: int,
) -> Float[Tensor, "n t"]:
    """Logits of `token_ids` at END (`pos`) after replacing the site's activation by `new`
    (None: the clean run)."""
    device = next(model.parameters()).device
    out = []
    for s in _chunks(len(pos), batch):
        r = resid[s].clone()
        rows = torch.arange(r.shape[0])
        if new is not None:
            r[rows, site[s]] = new[s].to(r.dtype)
        final = model(r.to(device), start_at_layer=start, stop_at_layer=model.cfg.n_layers)
        picked = final[rows.to(device), pos[s].to(device)]
        norm = getattr(model, "ln_final", None) or (lambda v: v)  # no ln_final: no norm
        logits = model.unembed(norm(picked[:, None]))[:, 0]
        out.append(logits.gather(1, token_ids[s].to(device)).float().cpu())
    return torch.cat(out)


def run_all(
    model,
    resid: Float[Tensor, "n seq d_in"],
    start: int,
    pos: Int[Tensor, " n"],
    site: Int[Tensor, " n"],
    news: dict[str, Tensor | None],
    token_ids: Int[Tensor, "n t"],
    batch: int,
) -> dict[str, Float[Tensor, "n t"]]:
    """`end_logits` for each named replacement of the site, with a progress bar."""
    return {name: end_logits(model, resid, start, pos, site, new, token_ids, batch)
            for name, new in tqdm(news.items(), desc="ioi_principled runs", leave=False)}
