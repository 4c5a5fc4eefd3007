"""Okapi BM25 over short documents, in numpy: the ranking behind feature search.

BM25 as in Robertson & Zaragoza 2009 ("The Probabilistic Relevance Framework: BM25 and
Beyond", §3.4), with the non-negative idf that Lucene uses, log(1 + (N - n + 0.5)/(n + 0.5)),
so that a term found in most documents still counts a little instead of subtracting. DuckDB's
fts extension would do the same, but it is downloaded on first use and we run offline.

Each term's postings (documents, precomputed BM25 weights) are built at once with numpy and
stored contiguously, so a query costs one vectorised add per query term.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

K1 = 1.2  # term-frequency saturation; Robertson & Zaragoza's usual 1.2
B = 0.75  # document-length normalisation
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Case-folded word terms. Byte-level BPE markers (Ġ space, Ċ newline) are spaces, so the
    vocab token 'Ġapple' and the word 'apple' are the same term."""
    text = text.replace("Ġ", " ").replace("Ċ", " ")
    return _WORD.findall(text.casefold())


def token_terms(token: str) -> list[str]:
    """Terms of one vocab token: its words, or, for punctuation such as ',' or '.', the token
    itself, so that a search for ',' finds the latents that fire on commas."""
    found = words(token)
    if found:
        return found
    bare = token.replace("Ġ", " ").replace("Ċ", "\n").strip()
    return [bare] if bare else []


def query_terms(text: str) -> list[str]:
    """The terms of a typed query: its words, else the whole query as one punctuation term."""
    return list(dict.fromkeys(token_terms(text)))  # unique, in order


class BM25:
    """A BM25 index over documents given as term lists; scores are per document, in order."""

    def __init__(self, documents: Sequence[Sequence[str]], k1: float = K1, b: float = B):
        self.n_docs = n = len(documents)
        self.terms: dict[str, int] = {}
        term_ids = [self.terms.setdefault(t, len(self.terms)) for d in documents for t in d]
        lengths = np.array([len(d) for d in documents], dtype=np.float64)
        doc_ids = np.repeat(np.arange(n, dtype=np.int64), lengths.astype(np.int64))
        # One key per (term, document) pair; np.unique sorts them by term, then document, and
        # counts repeats: the term frequencies.
        keys, tf = np.unique(np.array(term_ids, dtype=np.int64) * max(n, 1) + doc_ids,
                             return_counts=True)
        term, self.docs = np.divmod(keys, max(n, 1))
        df = np.bincount(term, minlength=len(self.terms))
        mean = float(lengths.mean()) if n and lengths.sum() > 0 else 1.0
        norm = k1 * (1.0 - b + b * lengths[self.docs] / mean)
        self.weights = self.idf(df)[term] * tf * (k1 + 1.0) / (tf + norm)
        # Term j's postings are docs[starts[j]:starts[j + 1]], weights alike.
        self.starts = np.searchsorted(term, np.arange(len(self.terms) + 1))

    def idf(self, term_docs):
        """Inverse document frequency of a term found in `term_docs` documents."""
        return np.log1p((self.n_docs - np.asarray(term_docs) + 0.5)
                        / (np.asarray(term_docs) + 0.5))

    def scores(self, terms: Sequence[str]) -> np.ndarray:
        """BM25 score of every document for a query given as terms (each counted once)."""
        out = np.zeros(self.n_docs)
        for term in dict.fromkeys(terms):
            j = self.terms.get(term)
            if j is not None:
                lo, hi = self.starts[j], self.starts[j + 1]
                out[self.docs[lo:hi]] += self.weights[lo:hi]  # each document once per term
        return out
