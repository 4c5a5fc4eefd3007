"""`build_index`: two resumable passes over the train split, then the index's files.

Pass 1 counts fires, sums, maxima, keeps a running top-k of contexts and a token subsample of
codes for correlations. Pass 2 needs the maxima: it fills histograms, interval samples and
the activation windows of every chosen context. The state is saved after each chunk.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from saebench.index import schema
from saebench.index.batches import chunk_codes, n_batches, plan_chunks
from saebench.index.coactivation import new_sample, stride_for, update_sample
from saebench.index.intervals import new_intervals, update_intervals
from saebench.index.state import load_state, save_state
from saebench.index.topk_contexts import fill_top_windows, new_stats, update_stats
from store.errors import UserError


@dataclass(frozen=True)
class IndexSettings:
    """What determines an index's contents (a resumed run must match them)."""

    tokens: int | None = None
    """Train tokens to index (rounded up to whole windows); None: the whole train split."""
    context: int = 16
    """Tokens kept on each side of an activating token."""
    top: int = 20
    """Top activating contexts kept per latent."""
    batch_tokens: int = 4096
    """Tokens per SAE forward (rounded down to whole windows); may change on resume."""
    loss_effects: bool | None = None
    """Per-token loss effect of ablating the latent in each top context (one model run per
    top context); None: on only when cheap (write.loss_effects_on)."""


def check_inputs(sae, sae_cfg: dict, store) -> None:
    """One-line errors for an SAE and store that do not belong together."""
    if int(sae.W_dec.shape[1]) != int(store.d_in):
        raise UserError(f"the SAE's d_in {sae.W_dec.shape[1]} != the store's d_in {store.d_in}")
    meta = sae_cfg.get("metadata") or {}
    hook = meta.get("hook_name") or sae_cfg.get("hook_name")
    if hook and store.meta.get("hook") and hook != store.meta["hook"]:
        raise UserError(f"the SAE was trained on {hook} but the store holds {store.meta['hook']}")


def fingerprint(sae_dir: Path, store, settings: IndexSettings) -> dict:
    weights = Path(sae_dir) / "sae_weights.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16] if weights.exists() else None
    meta = {k: store.meta.get(k) for k in ("model", "hook", "dataset", "created_at", "d_in")}
    semantic = {k: v for k, v in asdict(settings).items() if k != "batch_tokens"}
    return {"format": schema.FORMAT, "weights": digest, "store": meta, **semantic}


def _fresh(fp: dict, d_sae: int, settings: IndexSettings) -> dict:
    width = 2 * settings.context + 1
    tensors = new_stats(d_sae, settings.top, width)
    tensors.update(new_sample())
    tensors.update(new_intervals(
        d_sae, schema.HIST_BINS, schema.N_BUCKETS, schema.PER_BUCKET, width))
    return {"fingerprint": fp, "pass": 1, "next": 0, "tensors": tensors}


def run_passes(
    sae, store, settings: IndexSettings, state: dict, state_path: Path, *, device: str,
    progress: bool, on_chunk: Callable[[int, int], None] | None, desc: str,
) -> None:
    """Run (or finish) both passes, saving the state after each chunk."""
    from tqdm.auto import tqdm

    plans = plan_chunks(store, settings.tokens)
    per_pass = n_batches(plans, store.ctx, settings.batch_tokens)
    done = n_batches(plans[: state["next"]], store.ctx, settings.batch_tokens)
    t = state["tensors"]
    stride = stride_for(sum(p.n_seq for p in plans) * (store.ctx - 1), schema.COACT_TOKENS)
    bar = tqdm(total=2 * per_pass, initial=(state["pass"] - 1) * per_pass + done,
               disable=not progress, unit="batch", desc=desc)
    try:
        for pass_no in (1, 2):
            if state["pass"] > pass_no:
                continue
            for i, plan in enumerate(plans):
                if state["pass"] == pass_no and i < state["next"]:
                    continue
                for first_seq, codes in chunk_codes(store, sae, plan, settings.batch_tokens,
                                                    device):
                    if pass_no == 1:
                        update_stats(t, codes, first_seq)
                        update_sample(t, codes, first_seq, stride)
                    else:
                        fill_top_windows(t, codes, first_seq, settings.context)
                        update_intervals(t, codes, first_seq, t["max_act"], settings.context)
                    bar.update(1)
                state["pass"], state["next"] = pass_no, i + 1
                save_state(state_path, state)
                if on_chunk is not None:
                    on_chunk(pass_no, i)
            state["pass"], state["next"] = pass_no + 1, 0
    finally:
        bar.close()


def tokens_seen(store, settings: IndexSettings) -> int:
    return sum(p.n_seq for p in plan_chunks(store, settings.tokens)) * (store.ctx - 1)


def is_complete(index_dir: Path, fp: dict) -> bool:
    done = index_dir / schema.DONE_FILE
    if not done.exists():
        return False
    try:
        return json.loads(done.read_text()).get("fingerprint") == fp
    except ValueError:
        return False


def _done_payload(fp: dict, notes: list[str], d_sae: int) -> dict:
    return {"format": schema.FORMAT, "fingerprint": fp, "d_sae": d_sae, "notes": notes}


def build_index(
    sae_dir: Path, store, settings: IndexSettings = IndexSettings(), *, sae=None,
    device: str = "cpu", W_U: torch.Tensor | None | str = "auto", model: object = "auto",
    progress: bool = True, on_chunk: Callable[[int, int], None] | None = None,
    echo: Callable[[str], None] = print,
) -> Path:
    """Index an SAE over a store's train split into `<sae_dir>/index/`; resumable, idempotent.

    `W_U`: "auto" loads the store's model for the logit lens; a tensor is used as is; None
    skips it. `model`, for the loss effects, likewise ("auto", a HookedTransformer or None).
    `on_chunk(pass, chunk)` runs after each chunk's state is saved.
    """
    from saebench.index.write import write_index
    from trainers.saelens_format import load_sae

    sae_dir = Path(sae_dir)
    cfg_path = sae_dir / "cfg.json"
    sae_cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    sae = sae if sae is not None else load_sae(sae_dir, device)
    check_inputs(sae, sae_cfg, store)
    if not plan_chunks(store, settings.tokens):
        raise UserError("the store's train split is empty: nothing to index")
    fp = fingerprint(sae_dir, store, settings)
    index_dir = sae_dir / schema.INDEX_DIR
    if is_complete(index_dir, fp):
        from saebench.index.head_table import backfill_head_attribution

        note = backfill_head_attribution(sae_dir, sae, store, model, device)
        echo(note or f"{index_dir} is complete for these settings: nothing to do")
        return index_dir
    state_path = index_dir / schema.STATE_FILE
    index_dir.mkdir(parents=True, exist_ok=True)
    d_sae = int(sae.W_dec.shape[0])
    state = load_state(state_path, fp)
    if state is None:
        state = _fresh(fp, d_sae, settings)
    else:
        echo(f"resuming the index at pass {state['pass']}, chunk {state['next']}")
    with torch.no_grad():
        run_passes(sae, store, settings, state, state_path, device=device, progress=progress,
                   on_chunk=on_chunk, desc=f"index {sae_dir.name}")
        notes = write_index(sae_dir, sae, store, settings, state["tensors"], W_U, device,
                            model)
    done = _done_payload(fp, notes, d_sae)
    tmp = index_dir / f".{schema.DONE_FILE}.tmp"
    tmp.write_text(json.dumps(done, indent=2))
    tmp.replace(index_dir / schema.DONE_FILE)
    state_path.unlink(missing_ok=True)
    for note in notes:
        echo(note)
    return index_dir
