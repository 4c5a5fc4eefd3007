"""Eval stores: a labelled text dataset's activations at one hook, built once and reused.

Probing-style evals (sparse probing, SCR/TPP, ...) read one text per row, not packed windows.
Each (model, hook, dataset) gets one small DuckDB file, e.g.
`<workspace>/eval_stores/austen_book.smollm2-135m.blocks.7.hook_resid_post.duckdb`:
- `meta(key, value)`: JSON values; `complete` is set once every row is in;
- `labels(row, split, label, text)`: the label table, plain SQL;
- `acts(row, n_tokens, acts, mean)`: per text, the kept positions' vectors (float16 bytes,
  shaped [n_tokens, d_in]) and their float32 mean (the residual-stream probe's input).

Why per-token vectors and not only the mean: SAEBench mean-pools the SAE's *codes* over
tokens, and encode() is nonlinear, so encode(mean x) is not mean(encode x). With the tokens
stored, each SAE then costs one encode pass over this file and no model forward.

Positions kept follow SAEBench's mask (`mask_bos_pad_eos_tokens`): BOS, EOS and PAD ids are
dropped wherever they occur. Texts are tokenized without special tokens, truncated to
`max_tokens - 1`, and BOS is prepended (the stores' `bos_per_window` policy).

Resumable: rows are committed in chunks, each in one transaction with its `acts` rows, so a
killed build loses at most one chunk and a rerun computes only the missing rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import torch

from store.errors import UserError
from store.windows import special_ids

FORMAT = "saebench-eval-store/1"


def fingerprint(texts: Sequence[str], labels: Sequence[str], splits: Sequence[str]) -> str:
    """A hash of the dataset's content: a changed dataset gets a fresh store, never a stale one."""
    h = hashlib.sha1()
    for t, lab, s in zip(texts, labels, splits, strict=True):
        h.update(f"{s}\x00{lab}\x00{t}\x01".encode())
    return h.hexdigest()


def store_path(root: Path, dataset: str, model: str, hook: str, content: str = "") -> Path:
    """The file for one (dataset, model, hook), and with `content` (a `fingerprint`) for one
    sample of it: runs at different sizes then keep their own stores instead of rebuilding
    each other's (the build replaces a file whose fingerprint differs)."""
    slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in model.split("/")[-1])
    variant = f".{content[:8]}" if content else ""
    return Path(root) / f"{dataset}{variant}.{slug}.{hook}.duckdb"


def _read_meta(con: duckdb.DuckDBPyConnection) -> dict:
    try:
        rows = con.execute("SELECT key, value FROM meta").fetchall()
    except duckdb.CatalogException:
        return {}
    return {k: json.loads(v) for k, v in rows}


def _tokenize(texts: Sequence[str], tokenizer, max_tokens: int) -> list[list[int]]:
    bos, _ = special_ids(tokenizer)
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [[bos, *t[: max_tokens - 1]] for t in ids]


def _masked_ids(tokenizer) -> set[int]:
    bos, eos = special_ids(tokenizer)
    ids = {bos, eos, tokenizer.pad_token_id}
    return {int(i) for i in ids if i is not None}


def _encode_rows(model, hook: str, tokens: list[list[int]], masked: set[int]):
    """Run one batch (right-padded: causal attention leaves the real positions unchanged)."""
    from store.caching import forward

    length = max(len(t) for t in tokens)
    pad = next(iter(masked))
    batch = torch.full((len(tokens), length), pad, dtype=torch.long)
    for i, t in enumerate(tokens):
        batch[i, : len(t)] = torch.tensor(t)
    device = next(model.parameters()).device
    acts, _ = forward(model, hook, batch.to(device), False)
    out = []
    for i, t in enumerate(tokens):
        keep = torch.tensor([tok not in masked for tok in t])
        x = acts[i, : len(t)][keep.to(acts.device)].float().cpu()
        mean = x.mean(0) if len(x) else torch.zeros(acts.shape[-1])
        out.append((x.to(torch.float16).numpy().tobytes(), mean.numpy().tobytes(), len(x)))
    return out


def build(
    path: Path,
    texts: Sequence[str],
    labels: Sequence[str],
    splits: Sequence[str],
    load_model: Callable[[], Any],
    model_name: str,
    hook: str,
    max_tokens: int = 128,
    batch_texts: int = 32,
) -> bool:
    """Create or resume the eval store at `path`; False when a complete one was reused.
    `load_model` is called only if there is something to compute."""
    want = dict(format=FORMAT, model=model_name, hook=hook, max_tokens=max_tokens,
                fingerprint=fingerprint(texts, labels, splits), n_texts=len(texts))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    try:
        meta = _read_meta(con)
        if meta and any(meta.get(k) != v for k, v in want.items()):
            con.close()
            path.unlink()  # another dataset, model or length: rebuild rather than mix
            con, meta = duckdb.connect(str(path)), {}
        if meta.get("complete"):
            return False
        model = load_model()
        if not 2 <= max_tokens <= model.cfg.n_ctx:
            raise UserError(f"max_tokens must be in 2..{model.cfg.n_ctx}, got {max_tokens}")
        if not meta:
            _create(con, want, texts, labels, splits)
        _fill(con, texts, model, hook, max_tokens, batch_texts)
        con.execute("INSERT INTO meta VALUES ('complete', 'true')")
    finally:
        con.close()
    return True


def _create(con, want: dict, texts, labels, splits) -> None:
    con.execute("BEGIN")
    con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in want.items()])
    con.execute("CREATE TABLE labels (row INTEGER PRIMARY KEY, split VARCHAR, label VARCHAR, "
                "text VARCHAR)")
    rows = zip(texts, labels, splits, strict=True)
    con.executemany("INSERT INTO labels VALUES (?, ?, ?, ?)",
                    [(i, s, lab, t) for i, (t, lab, s) in enumerate(rows)])
    con.execute("CREATE TABLE acts (row INTEGER PRIMARY KEY, n_tokens INTEGER, acts BLOB, "
                "mean BLOB)")
    con.execute("COMMIT")


def _fill(con, texts, model, hook: str, max_tokens: int, batch_texts: int) -> None:
    done = {r for (r,) in con.execute("SELECT row FROM acts").fetchall()}
    tokens = _tokenize(texts, model.tokenizer, max_tokens)
    masked = _masked_ids(model.tokenizer)
    # Similar lengths batched together waste less compute on padding.
    todo = sorted((i for i in range(len(texts)) if i not in done), key=lambda i: len(tokens[i]))
    for lo in range(0, len(todo), batch_texts):
        rows = todo[lo : lo + batch_texts]
        encoded = _encode_rows(model, hook, [tokens[i] for i in rows], masked)
        con.execute("BEGIN")
        con.executemany("INSERT INTO acts VALUES (?, ?, ?, ?)",
                        [(r, n, a, m) for r, (a, m, n) in zip(rows, encoded, strict=True)])
        con.execute("COMMIT")
    (d_in,) = con.execute("SELECT octet_length(mean) // 4 FROM acts LIMIT 1").fetchone()
    con.execute("INSERT OR REPLACE INTO meta VALUES ('d_in', ?)", [json.dumps(int(d_in))])


class EvalStoreReader:
    """Read a complete eval store: the label table, mean vectors, per-text token vectors."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.con = duckdb.connect(str(self.path), read_only=True)
        self.meta = _read_meta(self.con)
        if not self.meta.get("complete"):
            raise UserError(f"{self.path} is not a complete eval store; rebuild it")
        self.d_in = int(self.meta["d_in"])

    def labels(self) -> dict[str, np.ndarray]:
        """Columns row, split, label, n_tokens in row order."""
        t = self.con.sql("SELECT row, split, label, n_tokens FROM labels JOIN acts USING (row) "
                         "ORDER BY row")
        return {k: np.asarray(v.to_numpy(zero_copy_only=False))
                for k, v in zip(t.columns, t.to_arrow_table().columns, strict=True)}

    def mean_acts(self) -> np.ndarray:
        """[n_texts, d_in] float32: each text's mean activation over its kept positions."""
        rows = self.con.execute("SELECT mean FROM acts ORDER BY row").fetchall()
        return np.stack([np.frombuffer(m, dtype=np.float32) for (m,) in rows])

    def iter_token_acts(self, batch_texts: int = 64) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        """Batches in row order: (vectors [sum of n_tokens, d_in] float16, n_tokens per text)."""
        cur = self.con.execute("SELECT acts FROM acts ORDER BY row")
        while batch := cur.fetchmany(batch_texts):
            arrays = [np.frombuffer(a, dtype=np.float16).reshape(-1, self.d_in) for (a,) in batch]
            lengths = np.array([len(a) for a in arrays])
            yield torch.from_numpy(np.concatenate(arrays)), lengths

    def close(self) -> None:
        self.con.close()
