"""Shuffled batches: seeded, resumable at any batch, and covering every token once per epoch."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch

from store.reader import open_store
from store.sources import InMemorySource


def _take(source, n, **kw):
    return list(itertools.islice(source.batches(64, **kw), n))


def _row_keys(x: torch.Tensor) -> list[bytes]:
    return [bytes(r.view(torch.int16).numpy().tobytes()) for r in x]


@pytest.mark.parametrize("mode", ["memory", "streaming", "tensor"])
def test_batches_are_seeded_and_resumable(tiny_store, mode):
    reader = open_store(tiny_store)
    if mode == "tensor":
        source = InMemorySource(torch.cat([reader.read_chunk(c) for c in reader.chunks[:4]]))
    else:
        source = reader.source("train", in_memory=mode == "memory", buffer_tokens=700)
    first = _take(source, 130, seed=3)  # crosses at least one epoch boundary
    again = _take(source, 130, seed=3)
    resumed = _take(source, 30, seed=3, start=100)
    other = _take(source, 2, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=False))
    assert all(torch.equal(a, b) for a, b in zip(first[100:], resumed, strict=False))
    assert not torch.equal(first[0], other[0])


@pytest.mark.parametrize("in_memory", [True, False])
def test_an_epoch_serves_each_token_at_most_once(tiny_store, in_memory):
    reader = open_store(tiny_store)
    source = reader.source("train", in_memory=in_memory, buffer_tokens=700)
    per_epoch = source.n_tokens // 64
    served = torch.cat(_take(source, per_epoch, seed=0))
    everything = torch.cat([reader.read_chunk(c) for c in reader.split_chunks("train")])
    assert len(served) == per_epoch * 64 > 0.95 * len(everything)
    # Multisets, since two tokens can share a vector (same token right after BOS):
    # nothing is served more often than it occurs in the split.
    assert not Counter(_row_keys(served)) - Counter(_row_keys(everything))


def test_batches_larger_than_a_shuffle_group(tiny_store):
    reader = open_store(tiny_store)
    source = reader.source("train", in_memory=False, buffer_tokens=400)  # groups of one chunk
    batches = list(itertools.islice(source.batches(1500, seed=2), source.n_tokens // 1500))
    assert all(len(b) == 1500 for b in batches)
    everything = torch.cat([reader.read_chunk(c) for c in reader.split_chunks("train")])
    assert not Counter(_row_keys(torch.cat(batches))) - Counter(_row_keys(everything))


def test_gradient_pairs_stay_aligned(tiny_store):
    reader = open_store(tiny_store)
    chunks = reader.split_chunks("train")
    x_all = torch.cat([reader.read_chunk(c) for c in chunks])
    g_all = torch.cat([reader.read_chunk(c, grads=True) for c in chunks])
    pairs = set(zip(_row_keys(x_all), _row_keys(g_all), strict=False))
    source = reader.source("train", in_memory=False, buffer_tokens=700)
    for x, g in _take(source, 5, seed=1, with_grads=True):
        assert set(zip(_row_keys(x), _row_keys(g), strict=False)) <= pairs


def test_stats_come_from_the_store(tiny_store):
    reader = open_store(tiny_store)
    stats = reader.source("train").stats()
    assert stats.mean_norm == reader.meta["norm"]["mean_norm"]
    assert len(stats.mean) == reader.d_in
