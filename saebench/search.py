"""Feature search: latents ranked by how well their words match a query (BM25).

A latent's document is its label (written in the browser), its autointerp explanation and
its top tokens (the tokens its top contexts activate on, from the feature index). One index
covers every SAE of a workspace, so idf is counted over all of them and a search can span
SAEs or keep to one. The index is cached per workspace and rebuilt when any file behind it
changes (a new label, a new eval, a new index).

    from saebench.search import search
    for hit in search("runs/demo", "plural nouns", sae="topk-k32-w4608"):
        print(hit.sae, hit.latent, round(hit.score, 2), hit.explanation, hit.top_tokens)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from saebench.bm25 import BM25, query_terms, token_terms, words
from saebench.explanations import read_explanations
from store.catalog import VIEWS, query

TOP_TOKENS = 5  # distinct top tokens kept per latent: the mode of its top contexts and a few more
SOURCES = ("explanations", "labels", "contexts", "vocab")  # catalog views the index reads


@dataclass(frozen=True)
class Hit:
    """One latent found by a search, with what it was matched on."""

    sae: str
    latent: int
    score: float
    """BM25 score: comparable within one search, not across searches."""
    explanation: str
    label: str
    top_tokens: tuple[str, ...]


@dataclass(frozen=True)
class Document:
    sae: str
    latent: int
    explanation: str = ""
    label: str = ""
    top_tokens: tuple[str, ...] = ()

    def terms(self) -> list[str]:
        return (words(self.label) + words(self.explanation)
                + [t for tok in self.top_tokens for t in token_terms(tok)])


class SearchIndex:
    """BM25 over the documents of a workspace's latents."""

    def __init__(self, documents: list[Document]):
        self.documents = documents
        self.bm25 = BM25([d.terms() for d in documents])
        self._sae = np.array([d.sae for d in documents], dtype=object)

    def __len__(self) -> int:
        return len(self.documents)

    def search(self, text: str, sae: str | None = None, limit: int = 50) -> list[Hit]:
        """Latents matching `text`, best first (ties: by SAE, then latent); only scores > 0."""
        scores = self.bm25.scores(query_terms(text))
        if sae is not None:
            scores = np.where(self._sae == sae, scores, 0.0)
        found = np.flatnonzero(scores > 0)
        # Documents are sorted by (sae, latent), so a stable sort on -score breaks ties by them.
        best = found[np.argsort(-scores[found], kind="stable")][:limit]
        return [Hit(d.sae, d.latent, float(scores[i]), d.explanation, d.label, d.top_tokens)
                for i, d in ((int(i), self.documents[int(i)]) for i in best)]


def _has(workspace: Path, view: str) -> bool:
    return any(workspace.glob(VIEWS[view]))


TOP_SQL = """
WITH hits AS (
    SELECT sae, latent, tokens[center + 1] AS token_id, count(*) AS n, max(act) AS act
    FROM contexts WHERE kind = 'top' GROUP BY ALL),
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY sae, latent
                                 ORDER BY n DESC, act DESC, token_id) AS r FROM hits)
SELECT h.sae, h.latent, list(v.token ORDER BY h.r) AS tokens
FROM ranked h JOIN vocab v ON v.sae = h.sae AND v.token_id = h.token_id
WHERE h.r <= ? GROUP BY h.sae, h.latent
"""


def _top_tokens(workspace: Path) -> dict[tuple[str, int], tuple[str, ...]]:
    """Each latent's most frequent activating tokens over its top contexts (strongest first
    among equally frequent ones)."""
    if not (_has(workspace, "contexts") and _has(workspace, "vocab")):
        return {}
    rows = query(workspace, TOP_SQL, [TOP_TOKENS]).to_pylist()
    return {(r["sae"], int(r["latent"])): tuple(r["tokens"]) for r in rows}


def _labels(workspace: Path) -> dict[tuple[str, int], str]:
    if not _has(workspace, "labels"):
        return {}
    rows = query(workspace, "SELECT sae, latent, label FROM labels").to_pylist()
    return {(r["sae"], int(r["latent"])): r["label"] for r in rows}


def fingerprint(workspace: Path, views: tuple[str, ...] = SOURCES) -> tuple:
    """Path, size and mtime of every file behind some catalog views."""
    files = sorted(p for v in views for p in Path(workspace).glob(VIEWS[v]))
    return tuple((str(p), s.st_size, s.st_mtime_ns) for p in files for s in [p.stat()])


# workspace -> (fingerprint, value), for the index and, apart, for the top tokens: those take
# most of the build (a scan of every top context) and change only with a new feature index,
# while a saved label must show at once.
_indexes: dict[Path, tuple[tuple, SearchIndex]] = {}
_tops: dict[Path, tuple[tuple, dict]] = {}
_lock = threading.Lock()  # the browser serves several sessions from threads


def _cached(cache: dict, workspace: Path, stamp: tuple, build):
    with _lock:
        hit = cache.get(workspace)
        if hit is not None and hit[0] == stamp:
            return hit[1]
    value = build(workspace)  # outside the lock: a slow build must not stall other searches
    with _lock:
        cache[workspace] = (stamp, value)
    return value


def build_index(workspace: Path) -> SearchIndex:
    """Read every latent's label, explanation and top tokens; index them."""
    workspace = Path(workspace).resolve()
    explained = {k: e.text for k, e in read_explanations(workspace).items()}
    labels = _labels(workspace)
    tops = _cached(_tops, workspace, fingerprint(workspace, ("contexts", "vocab")), _top_tokens)
    keys = sorted(set(explained) | set(labels) | set(tops))
    return SearchIndex([Document(s, i, explained.get((s, i), ""), labels.get((s, i), ""),
                                 tops.get((s, i), ())) for s, i in keys])


def index_for(workspace: Path) -> SearchIndex:
    """The workspace's index, rebuilt only when a file behind it has changed."""
    workspace = Path(workspace).resolve()
    return _cached(_indexes, workspace, fingerprint(workspace), build_index)


def search(workspace: Path | str, text: str, sae: str | None = None,
           limit: int = 50) -> list[Hit]:
    """Latents of the workspace (or of one SAE) ranked by BM25 against `text`."""
    return index_for(Path(workspace)).search(text, sae, limit)
