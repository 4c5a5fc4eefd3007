"""`saebench cache`: run a model over token windows and write its activations to a store.

The forward pass runs in the calling thread; each finished chunk goes to a small pool of
writer threads (Parquet encoding and file writes release the GIL), so writing overlaps the
next forward pass. At most `2 * writers` chunks are in flight, which bounds memory.
Under torchrun, ranks cache disjoint chunks into one store (store/parallel_cache.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from store.activation_store import Chunk, StoreSpec, StoreWriter
from store.cache_state import check_specs, is_complete, plan_chunks, remove_store, store_meta
from store.corpus import load_documents
from store.errors import UserError
from store.hooks import stop_layer, validate_hook
from store.models import load_model
from store.ranks import from_env
from store.shards import STORED_DTYPES
from store.windows import BOS_POLICY, build_windows

CODE_VERSION = "saebench-0.1.0"


def forward(model, hook: str, tokens: torch.Tensor, with_grads: bool):
    """Activations at `hook` for `tokens [b, ctx]`; optionally d(sum of next-token CE)/d(act)."""
    return forward_hooks(model, (hook,), tokens, with_grads)[0]


def forward_hooks(model, hooks: Sequence[str], tokens: torch.Tensor, with_grads: bool):
    """`forward` at several hooks in one pass: a list of (activations, gradients or None)."""
    saved: dict[str, torch.Tensor] = {}
    if not with_grads:

        def keep(act, hook):
            saved[hook.name] = act.detach()

        stops = [stop_layer(h) for h in hooks]
        stop = None if None in stops else max(stops)
        with torch.inference_mode():
            model.run_with_hooks(tokens, fwd_hooks=[(h, keep) for h in hooks],
                                 stop_at_layer=stop)
        return [(_flat(saved[h]), None) for h in hooks]

    def leaf(act, hook):
        # The first hook's activation becomes a leaf that requires grad, so backward computes
        # only what these gradients need, never the parameters' gradients. Later hooks stay in
        # the graph (a leaf there would cut the earlier hooks' gradients) and retain theirs.
        if not saved:
            act = act.detach().requires_grad_(True)
        else:
            act.retain_grad()
        saved[hook.name] = act
        return act

    with torch.enable_grad():
        loss = model.run_with_hooks(
            tokens, fwd_hooks=[(h, leaf) for h in hooks], return_type="loss",
            loss_per_token=True,
        )
        loss.sum().backward()
    return [(_flat(saved[h].detach()), _flat(saved[h].grad)) for h in hooks]


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


def _compute(model, specs: Sequence[StoreSpec], chunk: Chunk, batch_seqs: int, device: str):
    """Run the model over a chunk at every spec's hook: one (chunk, stats) per spec. Checks,
    statistics and the cast to 2 bytes happen on the device, so only storage-sized tensors
    cross to the host (it matters on a GPU)."""
    hooks, with_grads = [s.hook for s in specs], specs[0].with_grads
    acts, grads, sums = ([[] for _ in specs] for _ in range(3))
    for lo in range(0, len(chunk.tokens), batch_seqs):
        toks = torch.from_numpy(chunk.tokens[lo : lo + batch_seqs]).long().to(device)
        for i, (a, g) in enumerate(forward_hooks(model, hooks, toks, with_grads)):
            check_finite(a, chunk, lo, model.tokenizer, f"activations ({hooks[i]})")
            sums[i].append(chunk_stats(a))
            acts[i].append(a.to(STORED_DTYPES[specs[i].dtype]).cpu())
            if g is not None:
                check_finite(g, chunk, lo, model.tokenizer, f"gradients ({hooks[i]})")
                grads[i].append(g.to(torch.bfloat16).cpu())
    out = []
    for a, g, part in zip(acts, grads, sums, strict=True):
        norm = float(sum(n for n, _, _ in part))
        total = torch.stack([x for _, x, _ in part]).sum(0).cpu().numpy()
        done = replace(chunk, acts=torch.cat(a), grads=torch.cat(g) if g else None)
        out.append((done, (norm, total, sum(c for _, _, c in part))))
    return out


def prepare(specs: Sequence[StoreSpec], device: str):
    """Load and validate everything before any store file is created (bad input: no file)."""
    spec = specs[0]
    if spec.dtype not in ("float16", "bfloat16"):
        raise UserError(f"--dtype must be float16 or bfloat16, got {spec.dtype}")
    if spec.n_tokens <= 0 or spec.n_heldout_tokens <= 0:
        raise UserError("--tokens and --heldout-tokens must be positive")
    model = load_model(spec.model, device)
    hooks = [validate_hook(model, s.hook) for s in specs]
    if spec.ctx > model.cfg.n_ctx:
        raise UserError(f"--ctx {spec.ctx} exceeds the model's context of {model.cfg.n_ctx}")
    docs = load_documents(spec.dataset)
    windows = build_windows(
        docs, model.tokenizer, spec.ctx, spec.n_tokens, spec.n_heldout_tokens, spec.seed
    )
    corpus = sorted({d.doc_id.split("/")[0] for d in docs})
    # The hook decides the vector size (d_model, d_mlp, n_heads * d_head, ...): ask the model.
    probe = torch.from_numpy(windows.train[:1, :2]).long().to(device)
    d_ins = [int(x.shape[-1]) for x, _ in forward_hooks(model, hooks, probe, with_grads=False)]
    return model, windows, corpus, d_ins


def store_vocab_and_meta(model, spec: StoreSpec, windows, corpus: list[str]):
    """The vocab table and the meta a new store records beyond its spec (shared with the
    streaming source's --cache-to, so both write the same store)."""
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
    return vocab, extra


def cache(
    spec: StoreSpec,
    path: Path,
    device: str = "cpu",
    batch_seqs: int = 32,
    writers: int = 2,
    progress: bool = True,
) -> dict:
    """Create or resume the store at `path`; returns its meta. See module docstring."""
    return cache_hooks([spec], [path], device, batch_seqs, writers, progress)[0]


def cache_hooks(
    specs: Sequence[StoreSpec],
    paths: Sequence[Path],
    device: str = "cpu",
    batch_seqs: int = 32,
    writers: int = 2,
    progress: bool = True,
) -> list[dict]:
    """Create or resume one store per hook from ONE pass of the model (specs differ only in
    their hook); returns their metas. A resumed pass computes the chunks any store lacks."""
    all_paths = [Path(p) for p in paths]
    check_specs(specs, all_paths)
    ranks = from_env()
    if ranks.size > 1:  # launched by torchrun: ranks cache disjoint chunks into one store
        from store.parallel_cache import cache_ranks  # imports this module

        return cache_ranks(ranks, specs, all_paths, device, batch_seqs, writers, progress)
    complete = [is_complete(p, s) for s, p in zip(specs, all_paths, strict=True)]
    if all(complete):
        return [store_meta(p) for p in all_paths]
    # Finished stores are left alone; the pass computes only the hooks still missing.
    specs = [s for s, c in zip(specs, complete, strict=True) if not c]
    paths = [p for p, c in zip(all_paths, complete, strict=True) if not c]
    model, windows, corpus, d_ins = prepare(specs, device)
    spec = specs[0]
    vocab, extra = store_vocab_and_meta(model, spec, windows, corpus)
    created, opened = [not p.exists() for p in paths], []
    try:
        for s, p, d_in in zip(specs, paths, d_ins, strict=True):
            p.parent.mkdir(parents=True, exist_ok=True)
            opened.append(StoreWriter(p, s, d_in, vocab, extra))
        _run(model, specs, opened, plan_chunks(windows.train, windows.heldout, spec.chunk_seqs),
             batch_seqs, writers, device, progress)
        for w in opened:
            w.finish()
    except KeyboardInterrupt:
        for w in opened:
            w.close()  # committed chunks stay; the rerun resumes after them
        raise
    except BaseException:
        for w in opened:
            w.close()
        for p, new in zip(paths, created, strict=True):
            if new:
                remove_store(p)  # no half-written artifact from a run that failed outright
        raise
    for w in opened:
        w.close()
    return [store_meta(p) for p in all_paths]


def _run(model, specs, stores, chunks, batch_seqs, writers, device, progress) -> None:
    done = [w.done_chunks() for w in stores]
    todo = [c for c in chunks if any(c.index not in d for d in done)]
    total = sum(c.tokens.size for c in chunks)
    bar = tqdm(
        total=total,
        initial=total - sum(c.tokens.size for c in todo),
        unit="tok",
        unit_scale=True,
        desc="cache" if len(specs) == 1 else f"cache ({len(specs)} hooks)",
        disable=not progress,
        smoothing=0.1,
    )
    in_flight: list[Future] = []
    with ThreadPoolExecutor(max_workers=writers) as pool:
        try:
            for chunk in todo:
                computed = _compute(model, specs, chunk, batch_seqs, device)
                for w, d, (part, stats) in zip(stores, done, computed, strict=True):
                    if chunk.index in d:
                        continue
                    while len(in_flight) >= 2 * writers:
                        in_flight.pop(0).result()
                    in_flight.append(pool.submit(w.commit, part, stats))
                # The bar counts tokens once, when the chunk's last store has committed it.
                in_flight[-1].add_done_callback(lambda f, n=chunk.tokens.size: bar.update(n))
        finally:
            # Drain: every chunk already computed is committed before we return or re-raise,
            # so an interrupt loses nothing that was finished.
            for f in in_flight:
                f.result()
            bar.close()


def default_writers() -> int:
    return max(1, min(4, (os.cpu_count() or 2) // 2))
