"""An attribution graph for one prompt: which SAE latents, at which positions, drive the
model's logit for one target token (the single-prompt view Neuronpedia draws), computed with
the feature-circuit machinery of Marks et al. 2024 ("Sparse Feature Circuits", §2, App. A.1).

Nodes are every SAE latent and SAE error at every position of the prompt, at each SAE's hook;
the metric m is the target token's logit (or log-prob) at the last position, minus a contrast
token's when one is given. A node's effect is attribution patching against a zero baseline,

    effect(a) = ∇ₐm · (a − 0),

i.e. zero-ablating a latent (its code to 0, so x loses code·W_dec[j]) with every other node,
the error term included, held at its clean value; an error node's effect is that of replacing
x by x̂ at its position. Zero rather than a mean: one prompt has no counterfactual prompt, and
"this latent is off" is what 0 means to a sparse code, while a mean would need a dataset pass
and, for a latent that fires on a few per cent of tokens, is almost 0 anyway.

The top `nodes` nodes by |effect| are kept (a node budget, over all hooks and positions); edges
join kept nodes at consecutive hooks, ∇_d m · ∂d/∂u · u (attribution.edge_effects), and each
kept node at the last hook has an edge to the output whose weight is its effect, since nothing
after that hook is decomposed. A hook left without kept nodes is not spliced in when edges are
computed, so the edges across it carry every path through it, as output edges carry the layers
after the last hook.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from saebench.circuits.attribution import Attribution, edge_effects, leaf_grads
from saebench.circuits.output import annotate
from saebench.circuits.prompt_graph_config import GraphSettings
from saebench.circuits.saes import SAESet, load_set
from saebench.circuits.splice import last_logits, leaf_hook
from saebench.tasks.base import TaskBatch, at_pos, top1
from store.errors import UserError
from store.windows import special_ids

FORMAT = "saebench.prompt_graph/1"
OUTPUT = "output"
"""The id of the output node (the metric)."""


@dataclass(frozen=True)
class PromptMetric:
    """The task protocol (saebench.tasks.base.Task) for one prompt and one target token, so the
    task code of saebench.circuits.attribution runs on it unchanged."""

    kind: str = "logit"
    name: str = "prompt"
    summary: str = "one prompt's target-token logit"

    def metric(self, logits: Float[Tensor, "pairs seq vocab"], batch: TaskBatch
               ) -> Float[Tensor, " pairs"]:
        last = at_pos(logits, batch)
        if self.kind == "logprob":
            last = last.log_softmax(-1)
        m = last.gather(1, batch.answer[:, None])[:, 0]
        other = last.gather(1, batch.wrong.clamp_min(0)[:, None])[:, 0]
        return m - torch.where(batch.wrong >= 0, other, torch.zeros_like(other))

    def correct(self, logits, batch: TaskBatch):
        return top1(logits, batch)


def one_token(tokenizer, text: str, what: str) -> int:
    """The id of `text` if it is exactly one token; a one-line UserError otherwise."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) == 1:
        return int(ids[0])
    pieces = [tokenizer.decode([i]) for i in ids]
    hint = ""
    if len(ids) > 1:
        hint = f" ({' + '.join(map(repr, pieces))}); give one token, e.g. {pieces[0]!r}"
    spaced = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
    if text and not text.startswith(" ") and len(spaced) == 1:
        hint = f"; did you mean {' ' + text!r} (with its leading space, one token)?"
    raise UserError(f"the {what} {text!r} is {len(ids)} tokens{hint}")


def encode_prompt(tokenizer, prompt: str, target: str, contrast: str | None,
                  prepend_bos: bool, n_ctx: int) -> TaskBatch:
    """The prompt as a one-pair TaskBatch (corrupt = clean: there is no counterfactual)."""
    if not prompt.strip():
        raise UserError("the prompt is empty")
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = [special_ids(tokenizer)[0], *ids] if prepend_bos else ids
    if len(ids) > n_ctx:
        raise UserError(f"the prompt is {len(ids)} tokens; the model reads at most {n_ctx}")
    answer = one_token(tokenizer, target, "target")
    wrong = -1 if not contrast else one_token(tokenizer, contrast, "contrast")
    tokens = torch.tensor([ids])
    return TaskBatch(clean=tokens, corrupt=tokens, pos=torch.tensor([len(ids) - 1]),
                     answer=torch.tensor([answer]), wrong=torch.tensor([wrong]),
                     prompts=(prompt,))


def budget(effects: dict[str, Tensor], n: int, first: int) -> dict[str, Tensor]:
    """hook -> Bool [pos, node]: the `n` nonzero nodes with the largest |effect| over every hook,
    positions before `first` (BOS) excluded."""
    parts = [e[first:].abs().flatten() for e in effects.values()]
    flat = torch.cat(parts)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.topk(min(n, len(flat))).indices] = True
    keep &= flat > 0
    out = {}
    for (h, e), part in zip(effects.items(), keep.split([len(p) for p in parts]), strict=True):
        mask = torch.zeros(e.shape, dtype=torch.bool)
        mask[first:] = part.view(e[first:].shape)
        out[h] = mask
    return out


def zero_effects(model, sset: SAESet, task: PromptMetric, batch: TaskBatch) -> Attribution:
    """Every node's effect ∇m·(a − 0) at every position of one prompt: what
    attribution.node_effects(patch="zero", per_position=True) computes, in one forward and
    backward where node_effects adds a clean-mean and a corrupt forward that one prompt against
    zero does not need (half the time on SmolLM2). Attribution patching only: integrated
    gradients along clean → 0 shrink a whole residual towards 0, where a final RMSNorm makes
    the metric scale-invariant and its gradient blow up."""
    batch, clean = batch.to(model.cfg.device), {}
    hooks = [(h, leaf_hook(sae, clean, attached=False)) for h, sae in sset.items()]
    with torch.enable_grad():
        logits, at0 = last_logits(model, batch, batch.clean, hooks)
        m = task.metric(logits, at0)
        grads = leaf_grads(m.sum(), clean, sset.hooks)
    effects, values = {}, {}
    for h in sset.hooks:
        c, e = clean[h]["c"].detach(), clean[h]["e"].detach()
        effects[h] = torch.cat([grads[h]["c"] * c, (grads[h]["e"] * e).sum(-1, keepdim=True)],
                               1).cpu()
        values[h] = {"c": c.cpu(), "e": e.cpu()}  # the "mean" over one prompt: its own values
    m = m.detach().cpu()
    return Attribution(hooks=list(sset.hooks), per_position=True, effects=effects,
                       means=values, clean_metric=m, corrupt_metric=m, patch="zero",
                       accuracy=float(task.correct(logits.detach(), at0).float().mean()))


def node_id(hook: str, pos: int, latent: int | str) -> str:
    return f"{hook}@{pos}:{latent}"


def _nodes(sset: SAESet, attr, effects: dict, tokens: list[str]) -> list[dict]:
    """The kept nodes with their token, activation (code, or the error's norm) and effect."""
    out = []
    for hook, sae in sset.items():
        clean = attr.means[hook]  # the mean over one prompt: its own codes and errors
        for pos, j in attr.kept.get(hook, torch.zeros(0, 2, dtype=torch.long)).tolist():
            error = j == sae.d_sae
            act = clean["e"][pos].norm() if error else clean["c"][pos, j]
            latent: int | str = "error" if error else j
            out.append({"id": node_id(hook, pos, latent), "hook": hook, "pos": pos,
                        "token": tokens[pos], "latent": latent, "activation": float(act),
                        "effect": float(effects[hook][pos, j])})
    return sorted(out, key=lambda n: -abs(n["effect"]))


def _edges(sset: SAESet, attr, nodes: list[dict], n_edges: int) -> list[dict]:
    """Edges between kept nodes at consecutive hooks (the strongest `n_edges`), then one edge
    to the output from each kept node at the last hook that has any."""
    d_sae = {h: s.d_sae for h, s in sset.items()}

    def ident(hook: str, pos: int, j: int) -> str:
        return node_id(hook, pos, "error" if j == d_sae[hook] else j)

    out = []
    for (up, down), w in attr.edges.items():
        for a, b in w.nonzero().tolist():
            out.append({"source": ident(up, *attr.kept[up][b].tolist()),
                        "target": ident(down, *attr.kept[down][a].tolist()),
                        "weight": float(w[a, b])})
    out = sorted(out, key=lambda e: -abs(e["weight"]))[:n_edges]
    last = next((h for h in reversed(sset.hooks) if any(n["hook"] == h for n in nodes)), None)
    return out + [{"source": n["id"], "target": OUTPUT, "weight": n["effect"]}
                  for n in nodes if n["hook"] == last]


def prompt_graph(model, saes: SAESet | Sequence[str | Path], prompt: str, target: str,
                 contrast: str | None = None, *, settings: GraphSettings | None = None,
                 prepend_bos: bool | None = None) -> dict:
    """The attribution graph of `prompt` for `target` through `saes` as a JSON-ready dict.

    saes: an SAESet or SAE folders (one per hook, all of this model). prepend_bos: the BOS
    policy; default: the first SAE folder's (cfg.json metadata prepend_bos), else True.
    """
    settings = settings or GraphSettings()
    start = time.perf_counter()
    sset = saes if isinstance(saes, SAESet) else load_set(saes, model)[0]
    if prepend_bos is None:
        prepend_bos = _bos_policy(sset)
    task = PromptMetric(settings.metric)
    tok = model.tokenizer
    batch = encode_prompt(tok, prompt, target, contrast, prepend_bos, model.cfg.n_ctx)
    attr = zero_effects(model, sset, task, batch)
    effects = attr.effects
    keep = budget(effects, settings.nodes, int(prepend_bos))
    # edge_effects keeps the nodes above a threshold: give it only the budget's nodes.
    attr.effects = {h: torch.where(keep[h], e, 0.0) for h, e in effects.items()}
    live = [i for i, h in enumerate(sset.hooks) if keep[h].any()]
    spliced = SAESet(sset.model_name, *([getattr(sset, f)[i] for i in live]
                                        for f in ("hooks", "folders", "saes")))
    edge_effects(model, spliced, task, batch, attr, 0.0, batch_size=1, progress=False)
    tokens = [tok.decode([i]) for i in batch.clean[0].tolist()]
    nodes = annotate(_nodes(sset, attr, effects, tokens), dict(zip(sset.hooks, sset.folders,
                                                                    strict=True)))
    total = sum(e[int(prepend_bos):].abs().sum().item() for e in effects.values())
    return {
        "format": FORMAT, "model": sset.model_name, "prompt": prompt, "target": target,
        "contrast": contrast or None, "metric": settings.metric, "baseline": "zero",
        "settings": asdict(settings), "hooks": list(sset.hooks),
        "saes": [str(f) for f in sset.folders], "tokens": tokens, "bos": bool(prepend_bos),
        "value": float(attr.clean_metric[0]), "target_is_top": bool(attr.accuracy == 1.0),
        "kept_share": sum(abs(n["effect"]) for n in nodes) / total if total else 0.0,
        "nodes": nodes, "edges": _edges(sset, attr, nodes, settings.edges),
        "output": {"id": OUTPUT, "pos": len(tokens) - 1, "token": target,
                   "contrast": contrast or None},
        "seconds": time.perf_counter() - start,
    }


def _bos_policy(sset: SAESet) -> bool:
    from trainers.saelens_format import read_meta

    try:
        meta = read_meta(sset.folders[0])["cfg"].get("metadata") or {}
    except (OSError, UserError):  # an SAESet built in memory (tests, notebooks)
        return True
    return bool(meta.get("prepend_bos", True))


def graph_for_folders(folders: Sequence[str | Path], prompt: str, target: str,
                      contrast: str | None = None, *,
                      settings: GraphSettings | None = None, device: str = "cpu") -> dict:
    """prompt_graph with the SAEs' model loaded by name (store.models caches it)."""
    sset, model = load_set(folders, device=device)
    return prompt_graph(model, sset, prompt, target, contrast, settings=settings)
