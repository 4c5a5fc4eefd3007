"""Autointerp explanations as the browser shows them, read through a page's open Catalog.

`saebench eval --evals autointerp` writes one explanation and detection score per sampled
latent to `saes/<name>/features/explanations.parquet` (catalog view `explanations`: sae,
latent, explanation, explainer 'token-pattern' or 'llm:<model>', score, fires; see
saebench/evals/autointerp.py). Each run rewrites that file, so a latent has at most one.
The feature page reads the few latents it shows here, from each SAE's file cached per version
(app/index_reader.py), as plain dicts its card exports; saebench/explanations.py reads many
at once through SQL, as `Explanation` records, for search, the map and the blind test.
"""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.compute as pc

from app import index_reader
from app.data import Catalog
from store.catalog import VIEWS

# Under saes/<name>/: the catalog view's own glob, so the two never disagree.
FILE = VIEWS["explanations"].removeprefix("saes/*/")


def read(db: Catalog, wanted: dict[str, list[int]]) -> dict[tuple, dict]:
    """{(sae, latent): {"explanation", "explainer", "score"}} for some latents of some SAEs,
    in one query; latents the autointerp eval did not explain are absent."""
    if not db.has("explanations") or not any(wanted.values()):
        return {}
    out = {}
    for r in _rows(db, wanted):
        if r["latent"] not in wanted.get(r["sae"], ()):
            continue
        score = r["score"]
        out[(r["sae"], int(r["latent"]))] = {
            "explanation": r["explanation"] or "", "explainer": r["explainer"] or "",
            "score": None if score is None or math.isnan(score) else float(score)}
    return out


def _rows(db: Catalog, wanted: dict[str, list[int]]) -> list[dict]:
    """The wanted rows of each SAE's file (the catalog view's only source), read once per
    file version (app/index_reader.py), so a feature page needs no SQL connection."""
    rows = []
    for sae, ids in wanted.items():
        table = index_reader.whole(db.workspace / "saes" / sae / FILE)
        if table is not None and ids:
            hit = table.filter(pc.is_in(table["latent"], pa.array(ids).cast(
                table["latent"].type)))
            rows += hit.select(["sae", "latent", "explanation", "explainer", "score"]
                               ).to_pylist()
    return rows


def describe(e: dict | None) -> str:
    """One line: the explanation and the detection score it earned, or '' if there is none."""
    if not e or not e["explanation"]:
        return ""
    score = "unscored" if e["score"] is None else f"detection {e['score']:.2f}"
    return f"{e['explanation']} ({score}, {e['explainer']})"
