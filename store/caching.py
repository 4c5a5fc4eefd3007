"""`saebench cache`: run a model over token windows and write its activations to a store.

The forward pass runs in the calling thread; each finished chunk goes to a small pool of
writer threads (Parquet encoding and file writes release the GIL), so writing overlaps the
next forward pass. At most `2 * writers` chunks are in flight, which bounds memory.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import duckdb
import numpy as np
import torch
from tqdm.auto import tqdm

from store.activation_store import (
    Chunk,
    StoreSpec,
    StoreWriter,
    connect_writer,
    read_meta,
    shard_dir,
)
from store.corpus import load_documents
from store.errors import UserError
from store.hooks import stop_layer, validate_hook
from store.models import load_model
from store.shards import STORED_DTYPES
from store.windows import BOS_POLICY, build_windows

CODE_VERSION = "saebench-0.1.0"


def plan_chunks(train: np.ndarray, heldout: np.ndarray, chunk_seqs: int) -> list[Chunk]:
    """Split both splits' windows into chunks; sequence ids run train first, then held-out."""
    chunks, seq = [], 0
    for split, windows in (("train", train), ("heldout", heldout)):
        for lo in range(0, len(windows), chunk_seqs):
            part = windows[lo : lo + chunk_seqs]
            chunks.append(Chunk(len(chunks), split, seq, part))
            seq += len(part)
    return chunks


def forward(model, hook: str, tokens: torch.Tensor, with_grads: bool):
    """Activations at `hook` for `tokens [b, ctx]`; optionally d(sum of next-token CE)/d(act)."""
    saved: dict[str, torch.Tensor] = {}
    if not with_grads:

        def keep(act, hook):
            saved["x"] = act.detach()

        with torch.inference_mode():
            model.run_with_hooks(tokens, fwd_hooks=[(hook, keep)], stop_at_layer=stop_layer(hook))
        return _flat(saved["x"]), None

    def leaf(act, hook):
        # Replace the activation by a leaf that requires grad: backward then computes only
        # what this gradient needs, never the parameters' gradients.
        saved["x"] = act.detach().requires_grad_(True)
        return saved["x"]

    with torch.enable_grad():
        loss = model.run_with_hooks(
            tokens, fwd_hooks=[(hook, leaf)], return_type="loss", loss_per_token=True
        )
        loss.sum().backward()
    return _flat(saved["x"].detach()), _flat(saved["x"].grad)


def _flat(t: torch.Tensor) -> torch.Tensor:
    """Per-head hooks give [batch, pos, head, d_head]; a store row is one vector per token."""
    return t.flatten(2) if t.ndim > 3 else t


def chunk_stats(acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Sums for normalisation statistics, over positions >= 1 (BOS excluded), on acts' device."""
    x = acts[:, 1:].reshape(-1, acts.shape[-1]).double()
    return x.norm(dim=-1).sum(), x.sum(0), int(x.shape[0])


def check_finite(x: torch.Tensor, chunk: Chunk, offset: int, tokenizer, what: str) -> None:
    """Raise a UserError naming the first non-finite position (cheap when all is finite)."""
    if bool(torch.isfinite(x).all()):
        return
    bad = (~torch.isfinite(x)).any(dim=-1).nonzero()
    s, p = (int(v) for v in bad[0])
    tok = tokenizer.decode([int(chunk.tokens[offset + s, p])])
    raise UserError(
        f"non-finite {what} at seq {chunk.first_seq + offset + s} pos {p} (token {tok!r}) "
        f"and {len(bad) - 1} other positions; this chunk was not written"
    )


def _compute(model, spec: StoreSpec, chunk: Chunk, batch_seqs: int, device: str):
    """Run the model over a chunk; checks, statistics and the cast to 2 bytes happen on the
    device, so only storage-sized tensors cross to the host (it matters on a GPU)."""
    acts, grads, sums = [], [], []
    store_dtype = STORED_DTYPES[spec.dtype]
    for lo in range(0, len(chunk.tokens), batch_seqs):
        toks = torch.from_numpy(chunk.tokens[lo : lo + batch_seqs]).long().to(device)
        a, g = forward(model, spec.hook, toks, spec.with_grads)
        check_finite(a, chunk, lo, model.tokenizer, "activations")
        sums.append(chunk_stats(a))
        acts.append(a.to(store_dtype).cpu())
        if g is not None:
            check_finite(g, chunk, lo, model.tokenizer, "gradients")
            grads.append(g.to(torch.bfloat16).cpu())
    chunk.acts = torch.cat(acts)
    chunk.grads = torch.cat(grads) if grads else None
    norm = float(sum(n for n, _, _ in sums))
    total = torch.stack([x for _, x, _ in sums]).sum(0).cpu().numpy()
    return norm, total, sum(c for _, _, c in sums)


def _remove_store(path: Path) -> None:
    for p in (path, Path(str(path) + ".wal")):
        p.unlink(missing_ok=True)
    shards = shard_dir(path)
    if shards.exists():
        for f in shards.iterdir():
            f.unlink()
        shards.rmdir()


def prepare(spec: StoreSpec, device: str):
    """Load and validate everything before the store file is created (bad input: no file)."""
    if spec.dtype not in ("float16", "bfloat16"):
        raise UserError(f"--dtype must be float16 or bfloat16, got {spec.dtype}")
    if spec.n_tokens <= 0 or spec.n_heldout_tokens <= 0:
        raise UserError("--tokens and --heldout-tokens must be positive")
    model = load_model(spec.model, device)
    validate_hook(model, spec.hook)
    if spec.ctx > model.cfg.n_ctx:
        raise UserError(f"--ctx {spec.ctx} exceeds the model's context of {model.cfg.n_ctx}")
    docs = load_documents(spec.dataset)
    windows = build_windows(
        docs, model.tokenizer, spec.ctx, spec.n_tokens, spec.n_heldout_tokens, spec.seed
    )
    corpus = sorted({d.doc_id.split("/")[0] for d in docs})
    # The hook decides the vector size (d_model, d_mlp, n_heads * d_head, ...): ask the model.
    probe = torch.from_numpy(windows.train[:1, :2]).long().to(device)
    d_in = int(forward(model, spec.hook, probe, with_grads=False)[0].shape[-1])
    return model, windows, corpus, d_in


def cache(
    spec: StoreSpec,
    path: Path,
    device: str = "cpu",
    batch_seqs: int = 32,
    writers: int = 2,
    progress: bool = True,
) -> dict:
    """Create or resume the store at `path`; returns its meta. See module docstring."""
    path = Path(path)
    if path.exists() and _is_complete(path, spec):
        return _meta(path)
    model, windows, corpus, d_in = prepare(spec, device)
    created = not path.exists()
    vocab = model.tokenizer.batch_decode([[i] for i in range(model.cfg.d_vocab)])
    extra = dict(
        d_vocab=model.cfg.d_vocab,
        n_layers=model.cfg.n_layers,
        bos_policy=BOS_POLICY,
        bos_token_id=windows.bos_id,
        eos_token_id=windows.eos_id,
        corpus_sources=corpus,
        grad_dtype="bfloat16" if spec.with_grads else None,
        grad_of="sum over the window of next-token cross-entropy" if spec.with_grads else None,
        code_version=CODE_VERSION,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = StoreWriter(path, spec, d_in, vocab, extra)
    try:
        _run(
            model,
            spec,
            writer,
            plan_chunks(windows.train, windows.heldout, spec.chunk_seqs),
            batch_seqs,
            writers,
            device,
            progress,
        )
        meta = writer.finish()
    except KeyboardInterrupt:
        writer.close()  # committed chunks stay; the rerun resumes after them
        raise
    except BaseException:
        writer.close()
        if created:
            _remove_store(path)  # no half-written artifact from a run that failed outright
        raise
    writer.close()
    return meta


def _run(model, spec, writer, chunks, batch_seqs, writers, device, progress) -> None:
    done = writer.done_chunks()
    todo = [c for c in chunks if c.index not in done]
    total = sum(c.tokens.size for c in chunks)
    bar = tqdm(
        total=total,
        initial=total - sum(c.tokens.size for c in todo),
        unit="tok",
        unit_scale=True,
        desc="cache",
        disable=not progress,
        smoothing=0.1,
    )
    in_flight: list[Future] = []
    with ThreadPoolExecutor(max_workers=writers) as pool:
        try:
            for chunk in todo:
                stats = _compute(model, spec, chunk, batch_seqs, device)
                while len(in_flight) >= 2 * writers:
                    in_flight.pop(0).result()
                in_flight.append(pool.submit(writer.commit, chunk, stats))
                in_flight[-1].add_done_callback(lambda f, n=chunk.tokens.size: bar.update(n))
        finally:
            # Drain: every chunk already computed is committed before we return or re-raise,
            # so an interrupt loses nothing that was finished.
            for f in in_flight:
                f.result()
            bar.close()


def _meta(path: Path) -> dict:
    with connect_writer(path) as con:
        try:
            return read_meta(con)
        except duckdb.Error:
            return {}  # not a store; StoreWriter reports that clearly


def _is_complete(path: Path, spec: StoreSpec) -> bool:
    meta = _meta(path)
    return meta.get("status") == "complete" and meta.get("spec") == asdict(spec)


def default_writers() -> int:
    return max(1, min(4, (os.cpu_count() or 2) // 2))
