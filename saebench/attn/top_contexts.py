"""DFA of a latent's indexed top contexts, on demand: the full windows come from the SAE's
store, the attention from one forward of its model up to the SAE's layer (saebench/attn/dfa.py).
The feature page calls this only when asked, since it runs the model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from saebench.attn.dfa import direct_feature_attribution
from saebench.index import schema
from store.errors import UserError


def _top_rows(sae_dir: Path, latent: int, n: int) -> list[dict]:
    import pyarrow.parquet as pq

    path = sae_dir / schema.INDEX_DIR / schema.CONTEXTS_FILE
    if not path.is_file():
        raise UserError(f"{sae_dir} has no index: run `saebench index --sae {sae_dir}`")
    table = pq.read_table(path, columns=["latent", "kind", "rank", "seq", "pos", "act",
                                         "center", "tokens"],
                          filters=[("latent", "=", latent), ("kind", "=", "top")])
    return sorted(table.to_pylist(), key=lambda r: r["rank"])[:n]


def _windows(sae_dir: Path, cfg: dict, rows: list[dict]) -> torch.Tensor:
    """The store's full token windows of the contexts' sequences, `[len(rows), ctx]`."""
    from saebench.evals.runner import recorded_store
    from store.reader import open_store

    store = open_store(recorded_store(sae_dir, cfg))
    first = store.split_chunks("train")[0].first_seq  # contexts index the train split
    windows = store.token_windows("train")
    return windows[torch.tensor([r["seq"] - first for r in rows])]


def _aligned(row: dict, dfa: list[float]) -> tuple[list[float | None], float]:
    """The DFA of the window's tokens (None after the destination: it cannot attend there)
    and the summed DFA of the sources before the window."""
    start = row["pos"] - row["center"]
    window = [dfa[start + i] if start + i <= row["pos"] else None
              for i in range(len(row["tokens"]))]
    return window, float(sum(dfa[:start]))


def top_context_dfa(sae_dir: Path, latent: int, n: int = 5, device: str = "cpu",
                    model=None, sae=None) -> list[dict]:
    """Per top context (best first): rank, act, center, token ids, `dfa` per window token,
    `before` (the sources left of the window, summed), and the pre-activation and bias."""
    from trainers.saelens_format import load_sae

    sae_dir = Path(sae_dir)
    cfg = json.loads((sae_dir / "cfg.json").read_text())
    meta = cfg.get("metadata") or {}
    hook = meta.get("hook_name") or cfg.get("hook_name", "")
    rows = _top_rows(sae_dir, latent, n)
    if not rows:
        return []
    if model is None:
        from store.models import load_model

        model = load_model(meta.get("model_name") or cfg["model_name"], device)
    sae = sae if sae is not None else load_sae(sae_dir, device)
    tokens = _windows(sae_dir, cfg, rows).to(device)
    dest = torch.tensor([r["pos"] for r in rows], device=device)
    out = direct_feature_attribution(model, sae, hook, tokens, dest, latent)
    result = []
    for i, row in enumerate(rows):
        window, before = _aligned(row, out.dfa[i].tolist())
        result.append({"rank": row["rank"], "act": row["act"], "center": row["center"],
                       "token_ids": list(row["tokens"]), "dfa": window, "before": before,
                       "pre": float(out.pre[i]), "bias": out.bias})
    return result
