"""IOI prompts with attribute labels and an IO-swapped counterfactual per prompt.

Makelov, Lange & Nanda 2024 (arXiv 2405.08366, §3) describe each IOI prompt by three
attributes: the IO name, the S name and the position pattern Pos (ABBA: IO introduced first;
BABA: S first). The counterfactual of a prompt changes one attribute, here the IO name, to a
third name at the same token positions, so the two prompts stay aligned token for token.
Templates and word lists are the IOI task's own (saebench/tasks/ioi.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from saebench.tasks.base import TaskBatch, encode_pairs, need, rng, single_tokens
from saebench.tasks.ioi import NAMES, OBJECTS, PLACES, TEMPLATES

ATTRIBUTES = ("io", "s", "pos")
SITES = ("end", "io", "s2")
"""Positions an edit can target: the last token, the IO name, the second S name."""
"""The attributes of an IOI prompt (Makelov et al. 2024, §3)."""
PATTERNS = ("ABBA", "BABA")


@dataclass(frozen=True)
class IOIPrompts:
    """Clean prompts (batch.clean), their counterfactuals (batch.corrupt), and labels."""

    batch: TaskBatch
    """clean: the prompts; corrupt: the same with the IO name swapped; answer: IO; wrong: S."""
    labels: dict[str, Int[Tensor, " prompts"]]
    """Attribute -> value index per prompt: io and s index `names`, pos indexes PATTERNS."""
    cf_io: Int[Tensor, " prompts"]
    """The counterfactual's IO name (an index into `names`)."""
    names: tuple[str, ...]
    """The name values."""
    name_ids: Int[Tensor, " names"]
    """Each name's token id (with its leading space)."""

    @property
    def n_values(self) -> dict[str, int]:
        return {"io": len(self.names), "s": len(self.names), "pos": len(PATTERNS)}

    def value_names(self, attribute: str) -> tuple[str, ...]:
        return PATTERNS if attribute == "pos" else self.names

    def token_triples(self) -> Int[Tensor, "prompts 3"]:
        """Token ids of (old IO, S, new IO) per prompt: the logits every metric reads."""
        return torch.stack(
            [self.name_ids[self.labels["io"]], self.name_ids[self.labels["s"]],
             self.name_ids[self.cf_io]], dim=1)


def name_pool(tokenizer, n_names: int) -> dict[str, int]:
    """The first `n_names` single-token IOI names (sorted), with their token ids."""
    ids = single_tokens(tokenizer, NAMES)
    chosen = need(ids, max(n_names, 3), "ioi_principled", "names")[:n_names]
    return {name: ids[name] for name in chosen}


def make_prompts(tokenizer, n: int, n_names: int, seed: int) -> IOIPrompts:
    """`n` seeded prompts, ABBA and BABA alternating, each with an IO-swapped counterfactual."""
    pool = name_pool(tokenizer, n_names)
    names = tuple(pool)
    index = {name: i for i, name in enumerate(names)}
    r = rng(seed, "ioi_principled")
    clean, counter, labels = [], [], {a: [] for a in (*ATTRIBUTES, "cf_io")}
    for i in range(n):
        io, s, new_io = r.sample(names, 3)  # the new IO is neither name of the prompt
        template = r.choice(TEMPLATES)
        place, obj = r.choice(PLACES), r.choice(OBJECTS)
        pattern = i % 2
        for io_name, out in ((io, clean), (new_io, counter)):
            a, b = (io_name, s) if pattern == 0 else (s, io_name)
            out.append(template.format(A=a, B=b, S=s, place=place, obj=obj))
        for key, value in (("io", index[io]), ("s", index[s]), ("pos", pattern),
                           ("cf_io", index[new_io])):
            labels[key].append(value)
    batch = encode_pairs(tokenizer, clean, counter, [pool[names[i]] for i in labels["io"]],
                         [pool[names[i]] for i in labels["s"]])
    as_tensor = {k: torch.tensor(v, dtype=torch.long) for k, v in labels.items()}
    cf_io = as_tensor.pop("cf_io")
    return IOIPrompts(batch, as_tensor, cf_io, names, torch.tensor([pool[m] for m in names]))


def site_positions(prompts: IOIPrompts, site: str) -> Int[Tensor, " prompts"]:
    """Per prompt, the position of `site`: END, the IO name (it occurs once), or S2 (the
    last occurrence of the S name)."""
    batch = prompts.batch
    if site == "end":
        return batch.pos
    ids = prompts.name_ids[prompts.labels["io" if site == "io" else "s"]]
    hit = (batch.clean == ids[:, None]) & batch.mask
    order = torch.arange(hit.shape[1]).expand_as(hit)
    if site == "io":
        return torch.where(hit, order, hit.shape[1]).amin(1)  # its only occurrence
    return torch.where(hit, order, -1).amax(1)  # the later of S's two occurrences
