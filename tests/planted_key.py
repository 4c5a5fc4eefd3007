"""The planted key task for per-position circuit tests: two templates whose prompts differ only
in their last token, and the SAEs the tests splice into random:tiny."""

from __future__ import annotations

from pathlib import Path

import torch

from saebench.circuits import positional as P
from saebench.circuits.saes import load_set
from saebench.tasks.base import LogitDiffTask, TaskBatch, pad_pairs
from store.models import load_model
from trainers.saelens_format import save_sae
from trainers.topk import TopKConfig, TopKSAE

HOOK = "blocks.0.hook_resid_pre"  # the token embedding: rotary models add no position here
HOOKS = ("blocks.0.hook_resid_mid", "blocks.0.hook_resid_post")
PER_TEMPLATE = 6
KEYS, CORRUPT_KEY = (300, 301), 302


def write_sae(folder: Path, hook: str, seed: int) -> Path:
    """A random TopK SAE (d_in 32 of random:tiny, 64 latents, k 8) saved for `hook`."""
    sae = TopKSAE(32, TopKConfig(d_sae=64, k=8), generator=torch.Generator().manual_seed(seed))
    meta = {"model_name": "random:tiny", "hook_name": hook}
    save_sae(folder, sae.export_saelens(1.0), d_in=32, d_sae=64, meta=meta, run={})
    return folder


class PlantedKey(LogitDiffTask):
    """Two templates of fixed fillers (12 and 20 tokens) ending in a key token, 300 or 301;
    corrupt prompts end in 302. Within a template only the last position varies."""

    name = "planted_key"
    summary = "two templates whose prompts differ only in the last token"
    fillers = (tuple(range(11, 23)), tuple(range(31, 51)))

    def _pairs(self, t: int) -> tuple[list, list]:
        keys = [KEYS[i % 2] for i in range(PER_TEMPLATE)]
        clean = [[0, *self.fillers[t], k] for k in keys]
        return clean, [[*c[:-1], CORRUPT_KEY] for c in clean]

    def _batch(self, clean: list, corrupt: list) -> TaskBatch:
        n = len(clean)
        return pad_pairs(clean, corrupt, [100] * n, [200] * n, ("",) * n, pad=1)

    def batch(self, tokenizer, n: int, seed: int) -> TaskBatch:
        (c0, k0), (c1, k1) = self._pairs(0), self._pairs(1)
        return self._batch(c0 + c1, k0 + k1)

    def template_batches(self, tokenizer, n: int, seed: int) -> list:
        return [(self._batch(*self._pairs(t)),
                 ("BOS", *(f"t{t}w{i}" for i in range(len(f))), "end"))
                for t, f in enumerate(self.fillers)]


def token_sae(folder: Path, model, vocab: list[int]) -> Path:
    """An exact SAE at the embedding: one latent per token of `vocab` (decoder row = its
    unit embedding), k = 1, so every node is a token identity and the error is ~0."""
    w = model.W_E[vocab].detach()
    w = w / w.norm(dim=1, keepdim=True)
    tensors = {"W_enc": w.t().contiguous(), "b_enc": torch.zeros(len(vocab)),
               "W_dec": w.contiguous(), "b_dec": torch.zeros(w.shape[1])}
    save_sae(folder, ("topk", {"k": 1, "rescale_acts_by_decoder_norm": False}, tensors),
             d_in=w.shape[1], d_sae=len(vocab), run={},
             meta={"model_name": "random:tiny", "hook_name": HOOK})
    return folder


def planted_case(folder: Path):
    """(model, SAE set, task, grouped effects, vocab) of the plant: random:tiny with an exact
    token SAE at the embedding, pairs grouped by template."""
    torch.manual_seed(0)
    model = load_model("random:tiny")
    task = PlantedKey()
    vocab = [0, *task.fillers[0], *task.fillers[1], *KEYS, CORRUPT_KEY, *range(400, 420)]
    sae = token_sae(folder / "sae", model, vocab)
    sset, model = load_set([sae], model)
    groups = P.template_groups(task, model.tokenizer, 2 * PER_TEMPLATE, 0)
    g = P.role_effects(model, sset, task, groups, progress=False)
    return model, sset, task, g, vocab
