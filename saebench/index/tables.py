"""The index's Arrow tables, built column-wise from the final pass state (no per-row Python)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from saebench.index import schema


def _const(value: str, n: int) -> pa.Array:
    return pa.array([value], pa.string()).take(pa.array(np.zeros(n, dtype=np.int32)))


def top_token_ids(stats: dict, tokens: Tensor, first_seq: int, n: int,
                  block: int = 4096) -> Tensor:
    """[d_sae, n] ids of the tokens each latent's top contexts sit on, most frequent first
    (ties: the earlier rank, i.e. the higher activation); -1 pads. Vectorised over blocks of
    latents (each compares its top x top slots)."""
    ctx, top = tokens.shape[1], stats["top_loc"].shape[1]
    earlier = torch.ones(top, top, dtype=torch.bool).tril(-1)  # [j, i]: slot i before slot j
    out = []
    for lo in range(0, stats["top_loc"].shape[0], block):
        loc, ok = stats["top_loc"][lo : lo + block], stats["top_act"][lo : lo + block] > 0
        seq = (torch.div(loc, ctx, rounding_mode="floor") - first_seq).clamp(0, len(tokens) - 1)
        tok = torch.where(ok, tokens[seq, loc.clamp_min(0) % ctx], -1)  # [b, top]
        same = tok[:, :, None] == tok[:, None, :]
        first = ok & ~(same & earlier).any(-1)  # the best-ranked slot of each distinct token
        score = torch.where(first, same.sum(-1) * (top + 1) - torch.arange(top), -1)
        best, slot = score.topk(min(n, top), dim=1)
        out.append(torch.where(best >= 0, tok.gather(1, slot), -1))
    return torch.cat(out)


def _id_lists(ids: Tensor) -> pa.Array:
    keep = ids >= 0
    offsets = np.concatenate([[0], np.cumsum(keep.sum(1).numpy())]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids[keep].numpy().astype(
        np.int32)))


def features_table(name: str, stats: dict, hist: Tensor, tokens_seen: int,
                   top_tokens: Tensor | None = None) -> pa.Table:
    fires = stats["fires"].numpy()
    d_sae = len(fires)
    dead = fires == 0
    density = fires / max(tokens_seen, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (stats["act_sum"].numpy() / fires).astype(np.float32)
    counts = hist.numpy().copy()
    lengths = np.where(dead, 0, counts.shape[1])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    hist_col = pa.ListArray.from_arrays(pa.array(offsets), pa.array(counts[~dead].reshape(-1)))
    return pa.table({
        "sae": _const(name, d_sae),
        "latent": pa.array(np.arange(d_sae, dtype=np.int32)),
        "tokens_seen": pa.array(np.full(d_sae, tokens_seen, dtype=np.int64)),
        "fires": pa.array(fires.astype(np.int64)),
        "density": pa.array(density.astype(np.float64)),
        "max_act": pa.array(stats["max_act"].numpy().astype(np.float32)),
        "mean_act": pa.array(mean, mask=dead),
        "hist_counts": hist_col,
        "dead": pa.array(dead),
        "dense": pa.array(density > schema.DENSE_DENSITY),
        "top_tokens": pa.nulls(d_sae, pa.list_(pa.int32())) if top_tokens is None
        else _id_lists(top_tokens),
    }, schema=schema.FEATURES)


def _entries(stats: dict, iv: dict) -> dict[str, Tensor]:
    """Every context to write: latent, kind (0 top, 1 interval), bucket, rank, loc, act, win."""
    top = stats["top_act"] > 0
    lat_t, rank_t = top.nonzero(as_tuple=True)
    have = iv["iv_loc"] >= 0
    lat_i, bucket_i, rank_i = have.nonzero(as_tuple=True)
    cat = torch.cat
    return {
        "latent": cat([lat_t, lat_i]),
        "kind": cat([torch.zeros_like(lat_t), torch.ones_like(lat_i)]),
        "bucket": cat([torch.full_like(lat_t, -1), bucket_i]),
        "rank": cat([rank_t, rank_i]),
        "loc": cat([stats["top_loc"][top], iv["iv_loc"][have]]),
        "act": cat([stats["top_act"][top], iv["iv_act"][have]]),
        "win": cat([stats["top_win"][top], iv["iv_win"][have]]),
    }


def contexts_table(
    name: str, stats: dict, iv: dict, tokens: Tensor, first_seq: int, n: int
) -> pa.Table:
    """One row per top or interval context; `tokens [n_seq, ctx]` are the split's windows."""
    e = _entries(stats, iv)
    ctx = tokens.shape[1]
    seq, pos = torch.div(e["loc"], ctx, rounding_mode="floor"), e["loc"] % ctx
    idx = pos[:, None] + torch.arange(-n, n + 1)
    valid = (idx >= 0) & (idx < ctx)
    grid = tokens[(seq - first_seq)[:, None], idx.clamp(0, ctx - 1)]
    offsets = np.concatenate([[0], np.cumsum(valid.sum(1).numpy())]).astype(np.int32)
    lo = (pos - n).clamp_min(0)
    kinds = np.array(["top", "interval"])[e["kind"].numpy()]
    return pa.table({
        "sae": _const(name, len(seq)),
        "latent": pa.array(e["latent"].numpy().astype(np.int32)),
        "kind": pa.array(kinds, pa.string()),
        "bucket": pa.array(e["bucket"].numpy().astype(np.int16)),
        "rank": pa.array(e["rank"].numpy().astype(np.int16)),
        "seq": pa.array(seq.numpy().astype(np.int32)),
        "pos": pa.array(pos.numpy().astype(np.int16)),
        "act": pa.array(e["act"].numpy().astype(np.float32)),
        "center": pa.array((pos - lo).numpy().astype(np.int16)),
        "tokens": pa.ListArray.from_arrays(
            pa.array(offsets), pa.array(grid[valid].numpy().astype(np.int32))
        ),
        "acts": pa.ListArray.from_arrays(
            pa.array(offsets), pa.array(e["win"][valid].numpy().astype(np.float16))
        ),
        "loss_effects": _loss_column(stats, e, valid, offsets),
    }, schema=schema.CONTEXTS)


def _loss_column(stats: dict, e: dict, valid: Tensor, offsets: np.ndarray) -> pa.Array:
    """Top contexts' loss effects aligned with their tokens; null for interval samples (and
    for every row when the index computed none)."""
    n_top = int((e["kind"] == 0).sum())
    if "top_loss" not in stats:
        return pa.nulls(len(valid), pa.list_(pa.float16()))
    top = stats["top_act"] > 0
    grid = torch.full(valid.shape, float("nan"), dtype=torch.float16)
    grid[:n_top] = stats["top_loss"][top]  # _entries lists the top contexts first
    is_null = np.arange(len(valid)) >= n_top
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(
        grid[valid].numpy().astype(np.float16)), mask=pa.array(is_null))


def ranked_table(
    name: str, parts: dict[str, tuple[Tensor, Tensor]], other: str, table_schema: pa.Schema
) -> pa.Table:
    """Rows (latent, kind, rank, other, value) from `{kind: (values, ids) [d_sae, n]}`."""
    cols: dict[str, list] = {"latent": [], "kind": [], "rank": [], other: [], "value": []}
    for kind, (values, ids) in parts.items():
        ok = (ids >= 0) & torch.isfinite(values)
        latent, rank = ok.nonzero(as_tuple=True)
        cols["latent"].append(latent.numpy().astype(np.int32))
        cols["kind"].append(np.full(len(latent), kind, dtype=object))
        cols["rank"].append(rank.numpy().astype(np.int16))
        cols[other].append(ids[ok].numpy().astype(np.int32))
        cols["value"].append(values[ok].numpy().astype(np.float32))
    n_rows = sum(len(c) for c in cols["latent"])
    data = {"sae": _const(name, n_rows)}
    data.update({k: pa.array(np.concatenate(v) if v else []) for k, v in cols.items()})
    return pa.table(data).cast(table_schema)


def vocab_table(name: str, vocab: pa.Table) -> pa.Table:
    return pa.table({
        "sae": _const(name, vocab.num_rows),
        "token_id": vocab["token_id"].cast(pa.int32()),
        "token": vocab["token"].cast(pa.string()),
    }, schema=schema.VOCAB)
