"""Turn the finished pass state into the index's Parquet files and refresh the catalog."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import torch

from saebench.index import schema, tables
from saebench.index.coactivation import top_correlated
from saebench.index.logit_lens import logit_effects, unembed_for
from saebench.index.neighbours import decoder_neighbours
from store.catalog import refresh, workspace_of


def store_vocab(store) -> pa.Table | None:
    """The store's `vocab` table (token_id, token), or None for sources without one."""
    vocab = getattr(store, "vocab", None)
    return vocab() if callable(vocab) else None


def _logits(
    name: str, W_dec: torch.Tensor, W_U, store, device: str
) -> tuple[pa.Table, str | None]:
    note = None
    if isinstance(W_U, str):
        W_U, note = unembed_for(store.meta, int(W_dec.shape[1]), device)
    elif W_U is None:
        note = "logit lens skipped: no unembedding given"
    if W_U is None:
        return tables.ranked_table(name, {}, "token_id", schema.LOGITS), note
    top, top_id, bot, bot_id = logit_effects(W_dec, W_U, schema.N_LOGITS)
    parts = {"top": (top, top_id), "bottom": (bot, bot_id)}
    return tables.ranked_table(name, parts, "token_id", schema.LOGITS), note


def write_index(
    sae_dir: Path, sae, store, settings, t: dict, W_U, device: str
) -> list[str]:
    """Write every index file (each atomically); returns notes on what was skipped."""
    from saebench.index.build import tokens_seen

    sae_dir = Path(sae_dir)
    name, out = sae_dir.resolve().name, sae_dir / schema.INDEX_DIR
    W_dec = sae.W_dec.detach().float()
    d_sae, notes = int(W_dec.shape[0]), []
    seen = tokens_seen(store, settings)
    schema.write_index_table(out / schema.FEATURES_FILE,
                             tables.features_table(name, t, t["hist"], seen))
    train = store.split_chunks("train")
    windows = store.token_windows("train")
    ctx_table = tables.contexts_table(name, t, t, windows, train[0].first_seq, settings.context)
    schema.write_index_table(out / schema.CONTEXTS_FILE, ctx_table)
    logits, note = _logits(name, W_dec.to(device), W_U, store, device)
    notes += [note] if note else []
    schema.write_index_table(out / schema.LOGITS_FILE, logits)
    parts = {
        "decoder": decoder_neighbours(W_dec.to(device), schema.N_NEIGHBOURS),
        "coactivation": top_correlated(t, d_sae, schema.N_NEIGHBOURS),
    }
    schema.write_index_table(out / schema.NEIGHBOURS_FILE,
                             tables.ranked_table(name, parts, "other", schema.NEIGHBOURS))
    vocab = store_vocab(store)
    if vocab is not None:
        schema.write_index_table(out / schema.VOCAB_FILE, tables.vocab_table(name, vocab))
    else:
        notes.append("vocab not written: the store has no vocab table")
    n_dead = int((t["fires"] == 0).sum())
    notes.append(f"{d_sae} latents indexed over {seen} tokens; {n_dead} dead")
    refresh(workspace_of(sae_dir))
    return notes
