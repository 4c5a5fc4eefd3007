"""Turn the finished pass state into the index's Parquet files and refresh the catalog."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import torch

from saebench.index import schema, tables
from saebench.index.coactivation import top_correlated
from saebench.index.head_table import add_head_attribution
from saebench.index.logit_lens import logit_effects, unembed_for
from saebench.index.loss_effects import estimated_flops, runs_on, top_loss_effects
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


def loss_effects_on(settings, t: dict, model, seen: int, d_in: int, ctx: int) -> tuple[bool, str]:
    """The setting, or by default: on when the estimated work is under SMALL_FLOPS or under a
    fifth of the index passes' (2 passes x tokens x d_in x d_sae multiply-adds)."""
    if settings.loss_effects is not None:
        return settings.loss_effects, ""
    top = t["top_act"] > 0
    pos = t["top_loc"][top] % ctx
    mean_len = float((pos + settings.context + 2).clamp(max=ctx).float().mean()) if len(pos) else 0
    cost = estimated_flops(model, len(pos), mean_len, 2 * settings.context + 1)
    passes = 2.0 * 2 * seen * d_in * top.shape[0]
    if cost <= max(schema.SMALL_FLOPS, 0.2 * passes):
        return True, ""
    return False, (f"loss effects off by default here: ~{cost:.1e} FLOP against ~{passes:.1e} "
                   "for the index itself; `saebench index --loss-effects` computes them")


def _model_for(store, model, device: str):
    """(model, None) or (None, why not): "auto" loads the store's model."""
    hook = str(store.meta.get("hook", ""))
    if not runs_on(hook):
        return None, f"loss effects skipped: hook {hook!r} is not inside the model's blocks"
    if isinstance(model, str):
        if not store.meta.get("model"):
            return None, "loss effects skipped: the store does not record its model"
        from store.models import load_model

        model = load_model(str(store.meta["model"]), device)
    return model, None if model is not None else "loss effects skipped: no model given"


def add_loss_effects(sae, store, settings, t: dict, model, device: str, seen: int) -> str:
    """Fill `t["top_loss"]` (see loss_effects.py) when on and a model is at hand; a note."""
    if settings.loss_effects is False:
        return ""
    model, why = _model_for(store, model, device)
    if model is None:
        return why
    on, why = loss_effects_on(settings, t, model, seen, int(sae.W_dec.shape[1]), store.ctx)
    if not on:
        return why
    hook = str(store.meta["hook"])
    train = store.split_chunks("train")
    t["top_loss"] = top_loss_effects(model, sae, hook, store.token_windows("train"),
                                     train[0].first_seq, t, settings.context, device)
    n = int((t["top_act"] > 0).sum())
    return f"loss effects: the latent ablated in each of its top contexts ({n} runs)"


def write_index(
    sae_dir: Path, sae, store, settings, t: dict, W_U, device: str, model="auto"
) -> list[str]:
    """Write every index file (each atomically); returns notes on what was skipped."""
    from saebench.index.build import tokens_seen

    sae_dir = Path(sae_dir)
    name, out = sae_dir.resolve().name, sae_dir / schema.INDEX_DIR
    W_dec = sae.W_dec.detach().float()
    d_sae, notes = int(W_dec.shape[0]), []
    seen = tokens_seen(store, settings)
    note = add_loss_effects(sae, store, settings, t, model, device, seen)
    notes += [note] if note else []
    train = store.split_chunks("train")
    windows = store.token_windows("train")
    tops = tables.top_token_ids(t, windows, train[0].first_seq, schema.N_TOP_TOKENS)
    schema.write_index_table(out / schema.FEATURES_FILE,
                             tables.features_table(name, t, t["hist"], seen, tops))
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
    note = add_head_attribution(sae_dir, sae, store, model, device)
    notes += [note] if note else []
    n_dead = int((t["fires"] == 0).sum())
    notes.append(f"{d_sae} latents indexed over {seen} tokens; {n_dead} dead")
    refresh(workspace_of(sae_dir))
    return notes
