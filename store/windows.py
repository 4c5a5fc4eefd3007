"""Tokenize documents and pack them into fixed-length windows, with one BOS policy everywhere.

BOS policy (recorded in every store's meta, and used by caching, training and evaluation):
every window starts with the tokenizer's BOS token (SmolLM2: `<|im_start|>`, which is also
what TransformerLens prepends by default), then `ctx - 1` corpus tokens. Documents are
concatenated with the EOS token between them and packed densely, so no padding is stored.
Position 0 is kept in the store but excluded from SAE training and reconstruction metrics,
because the first position of every sequence is an attention sink with an outlier norm.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from store.corpus import Document, heldout
from store.errors import UserError

BOS_POLICY = "bos_per_window"


@dataclass(frozen=True)
class Windows:
    """Packed token windows for both splits."""

    train: np.ndarray
    """[n_train_windows, ctx] int32 token ids; column 0 is BOS."""
    heldout: np.ndarray
    """[n_heldout_windows, ctx] int32 token ids from held-out documents only."""
    bos_id: int
    eos_id: int | None


def special_ids(tokenizer) -> tuple[int, int | None]:
    """The BOS id (falling back to EOS, as GPT-2 style tokenizers have no separate BOS)."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if bos is None:
        raise UserError("the model's tokenizer has neither a BOS nor an EOS token")
    return int(bos), tokenizer.eos_token_id


def _token_stream(docs: Sequence[Document], tokenizer, eos_id: int | None) -> Iterator[int]:
    # Tokenize in small batches: fast tokenizers parallelise a batch, and we stop as soon as
    # enough tokens are packed instead of tokenizing the whole corpus.
    for start in range(0, len(docs), 32):
        batch = [d.text for d in docs[start : start + 32]]
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            yield from ids
            if eos_id is not None:
                yield eos_id


def pack(
    docs: Sequence[Document], tokenizer, ctx: int, n_windows: int, bos_id: int, eos_id: int | None
) -> np.ndarray:
    """Pack documents into up to `n_windows` windows of `[BOS] + ctx-1 tokens`."""
    body = ctx - 1
    out = np.empty((n_windows, ctx), dtype=np.int32)
    out[:, 0] = bos_id
    buf: list[int] = []
    filled = 0
    for tok in _token_stream(docs, tokenizer, eos_id):
        buf.append(tok)
        if len(buf) == body:
            out[filled, 1:] = buf
            buf, filled = [], filled + 1
            if filled == n_windows:
                break
    return out[:filled]


def count_tokens(docs: Sequence[Document], tokenizer) -> int:
    """Total tokens in documents (used to explain a too-large --tokens)."""
    return sum(
        len(ids) for ids in tokenizer([d.text for d in docs], add_special_tokens=False)["input_ids"]
    )


def build_windows(
    docs: Sequence[Document],
    tokenizer,
    ctx: int,
    n_tokens: int,
    n_heldout_tokens: int,
    seed: int = 0,
) -> Windows:
    """Windows for `n_tokens` training and `n_heldout_tokens` held-out tokens (BOS included)."""
    if ctx < 2:
        raise UserError(f"--ctx must be at least 2 (BOS plus one token), got {ctx}")
    bos_id, eos_id = special_ids(tokenizer)
    train_docs = [d for d in docs if not heldout(d)]
    held_docs = [d for d in docs if heldout(d)]
    # Shuffle documents (seeded) so a small cache samples the whole corpus, not its first book.
    random.Random(seed).shuffle(train_docs)
    random.Random(seed).shuffle(held_docs)
    want_train, want_held = -(-n_tokens // ctx), -(-n_heldout_tokens // ctx)
    train = pack(train_docs, tokenizer, ctx, want_train, bos_id, eos_id)
    held = pack(held_docs, tokenizer, ctx, want_held, bos_id, eos_id)
    for name, got, want, split_docs in (
        ("--tokens", train, want_train, train_docs),
        ("--heldout-tokens", held, want_held, held_docs),
    ):
        if len(got) < want:
            have = count_tokens(split_docs, tokenizer)
            raise UserError(
                f"{name} asks for {want * ctx:,} tokens but this corpus split has only "
                f"{have:,} tokens ({len(got) * ctx:,} in whole windows of {ctx})"
            )
    return Windows(train=train, heldout=held, bos_id=bos_id, eos_id=eos_id)
