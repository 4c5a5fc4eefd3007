"""Per-latent explanations, as the autointerp eval writes them and the browser reads them.

`saebench eval --evals autointerp` writes `saes/<name>/features/explanations.parquet` (catalog
view `explanations`): sae, latent, explanation, explainer ('token-pattern' or 'llm:<model>'),
score (the judge's detection accuracy on that explanation) and fires. Each run rewrites the
file, so there is one explanation per latent: the latest explainer's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from store.catalog import VIEWS, query

VIEW = "explanations"


@dataclass(frozen=True)
class Explanation:
    """One latent's explanation and the automated detection score it earned."""

    sae: str
    latent: int
    text: str
    explainer: str
    """'token-pattern' (offline, lexical) or 'llm:<model>'."""
    score: float | None
    """The judge's detection accuracy; None where the judge's reply could not be parsed."""


def has_explanations(workspace: Path) -> bool:
    return any(Path(workspace).glob(VIEWS[VIEW]))


def read_explanations(
    workspace: Path, sae: str | None = None, latents: list[int] | None = None
) -> dict[tuple[str, int], Explanation]:
    """{(sae, latent): Explanation} for the workspace, one SAE, or some of its latents."""
    if not has_explanations(workspace):
        return {}
    sql = "SELECT sae, latent, explanation, explainer, score FROM explanations WHERE true"
    params: list = []
    if sae is not None:
        sql += " AND sae = ?"
        params.append(sae)
    if latents is not None:
        sql += " AND latent IN (SELECT unnest(?::BIGINT[]))"
        params.append([int(i) for i in latents])
    out = {}
    for r in query(Path(workspace), sql, params).to_pylist():
        score = r["score"]
        out[(r["sae"], int(r["latent"]))] = Explanation(
            r["sae"], int(r["latent"]), r["explanation"] or "", r["explainer"] or "",
            None if score is None or math.isnan(score) else float(score))
    return out


def explanation(workspace: Path, sae: str, latent: int) -> Explanation | None:
    """One latent's explanation, or None if the autointerp eval did not explain it."""
    return read_explanations(workspace, sae, [latent]).get((sae, int(latent)))
