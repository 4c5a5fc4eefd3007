"""How much of a learned IOI circuit is the name lexicon? (issue #15 item 6)

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/circuit_name_latents.py \\
        --circuits runs/c4s/mask_bench_pool320.mean.circuits.pt

The names check (benchmarks/mask_names_check.py) showed that small mask circuits keep the
fitted prompts' name latents. This script measures that directly and splits every circuit of
a λ path into two parts:
- **lexicon**: latents that stand for one name. A latent is a name latent when one name owns
  at least half of its mean activation and it fires on at least half of that name's
  occurrences, either where that name is the token (A, B, S2) or, at the final position,
  where it is the indirect object (a "say this name" latent). Means and firing rates are per
  name over the fit pairs' clean prompts, each hook's SAE encoding the clean residual stream
  (no other SAE spliced);
- **mechanism**: every other kept node, error nodes included.

Then it scores each circuit with the whole lexicon of every SAE opened on top (the lexicon is
not counted), on the fit pairs with every name redrawn. If that reaches 80% with few
mechanism nodes, the circuit is small and the rest of its size is one set of latents per
name, which no circuit that must hold for every name can drop.
"""

from __future__ import annotations

import json

import torch
from mask_circuits_bench import scorer
from mask_names_check import groups, saved_path

from saebench.circuits import positional as P
from saebench.circuits.gated_run import Runner
from saebench.tasks import get_task
from saebench.tasks.base import single_tokens
from saebench.tasks.ioi import NAMES

SHARE = 0.5
"""A latent is a name latent when one name owns at least this share of its per-name means…"""
FIRES = 0.5
"""…and it fires on at least this share of that name's occurrences (so that a rare latent that
happens to fire once, on one name, is not one)."""


@torch.no_grad()
def name_latents(model, sset, grs, name_ids: list[int]) -> dict[str, torch.Tensor]:
    """{hook: [d_sae] bool}: is the latent a name latent (SHARE, FIRES), at name tokens or by
    IO name at the final position?"""
    index = torch.full((model.cfg.d_vocab,), -1, dtype=torch.long)
    index[torch.tensor(name_ids)] = torch.arange(len(name_ids))
    k = len(name_ids)
    out = {}
    for hook, sae in sset.items():
        at_tok, on_tok, n_tok = torch.zeros(k, sae.d_sae), torch.zeros(k, sae.d_sae), torch.zeros(k)
        at_end, on_end, n_end = torch.zeros(k, sae.d_sae), torch.zeros(k, sae.d_sae), torch.zeros(k)
        for batch, _ in grs:
            _, cache = model.run_with_cache(batch.clean, names_filter=[hook])
            acts = cache[hook]
            codes = sae.encode(acts.reshape(-1, acts.shape[-1]).float())
            codes = codes.reshape(*acts.shape[:2], -1)
            who = index[batch.clean]  # name index per (pair, position), -1 elsewhere
            hit = who >= 0
            at_tok.index_add_(0, who[hit], codes[hit])
            on_tok.index_add_(0, who[hit], (codes[hit] > 0).float())
            n_tok.index_add_(0, who[hit], torch.ones(int(hit.sum())))
            io = index[batch.answer]
            last = codes[torch.arange(len(io)), batch.pos]
            at_end.index_add_(0, io, last)
            on_end.index_add_(0, io, (last > 0).float())
            n_end.index_add_(0, io, torch.ones(len(io)))
        named = []
        for total, fired, count in ((at_tok, on_tok, n_tok), (at_end, on_end, n_end)):
            seen = count > 0
            mean = total[seen] / count[seen, None]
            top, who = mean.max(0)
            rate = (fired[seen] / count[seen, None]).gather(0, who[None])[0]
            named.append((top >= SHARE * mean.sum(0).clamp_min(1e-9)) & (rate >= FIRES))
        out[hook] = named[0] | named[1]
    return out


def main() -> None:
    a, saved, sset, model = saved_path(__doc__)
    task = get_task("ioi")
    tok, n, seed = model.tokenizer, saved["n"], saved["seed"]
    name_ids = sorted(set(single_tokens(tok, NAMES).values()))
    fit = groups(tok, n, seed, None)
    lexicon = {h: torch.nonzero(m)[:, 0]
               for h, m in name_latents(model, sset, fit, name_ids).items()}
    print(f"{len(name_ids)} names; name latents per SAE: "
          + ", ".join(f"{h.split('.')[1]}: {len(v)}" for h, v in lexicon.items()))

    new_names = groups(tok, n, seed, "names")
    faith, _, _ = scorer(Runner(model, sset, task,
                                P.role_effects(model, sset, task, new_names, progress=False)))

    def every(nodes):
        return torch.stack([torch.full_like(nodes, -1), nodes], 1)

    lex_only = faith({h: every(v) for h, v in lexicon.items()})
    print(f"lexicon alone (no error nodes): {lex_only:.2f} on new names")
    rows = []
    print("| λ | nodes | of which name latents | mechanism | new names | new names, lexicon open |")
    print("|---|---|---|---|---|---|")
    for lam, kept in saved["path"].circuits:
        nodes = sum(len(v) for v in kept.values())
        named = sum(int(torch.isin(v[:, 1], lexicon[h]).sum()) for h, v in kept.items())
        opened = {h: every(torch.unique(torch.cat([v[:, 1], lexicon[h]])))
                  for h, v in kept.items()}
        row = {"lambda": lam, "nodes": nodes, "name_latents": named,
               "mechanism": nodes - named, "new_names": faith(kept),
               "new_names_lexicon_open": faith(opened)}
        rows.append(row)
        print(f"| {lam:.2g} | {nodes:,} | {named:,} | {nodes - named:,} | "
              f"{row['new_names']:.2f} | {row['new_names_lexicon_open']:.2f} |")
    if a.out:
        summary = {"names": len(name_ids), "share": SHARE, "fires": FIRES,
                   "lexicon_alone": lex_only,
                   "lexicon": {h: len(v) for h, v in lexicon.items()}}
        a.out.write_text("\n".join(json.dumps(r) for r in [summary, *rows]) + "\n")


if __name__ == "__main__":
    main()
