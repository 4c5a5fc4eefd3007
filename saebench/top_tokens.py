"""Each latent's top tokens: the tokens its strongest indexed activations sit on.

A one-glance summary for tables and hovers over thousands of latents (compare, feature map),
where a feature page's shaded contexts would not fit. Read from the index's `contexts` view:
the activating token of each 'top' context, most frequent first, ties by activation.
"""

from __future__ import annotations

from pathlib import Path

from store.catalog import VIEWS, query

SQL = """
WITH hits AS (
    SELECT latent, tokens[center + 1] AS token_id, count(*) AS n, max(act) AS act
    FROM contexts WHERE sae = ? AND kind = 'top' GROUP BY ALL),
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY latent ORDER BY n DESC, act DESC, token_id) AS r
    FROM hits)
SELECT latent, list(token_id ORDER BY r) AS ids FROM ranked WHERE r <= ? GROUP BY latent
"""


def _has(workspace: Path, view: str) -> bool:
    return any(Path(workspace).glob(VIEWS[view]))


def top_tokens(workspace: str | Path, sae: str, n: int = 3) -> dict[int, list[str]]:
    """{latent: up to n token strings} for every latent with top contexts in the index.

    Token ids missing from the `vocab` view come back as '<id>'. Empty without an index.
    """
    ws = Path(workspace)
    if not _has(ws, "contexts"):
        return {}
    rows = query(ws, SQL, [sae, int(n)]).to_pylist()
    vocab: dict[int, str] = {}
    ids = sorted({i for r in rows for i in r["ids"]})
    if ids and _has(ws, "vocab"):
        vocab = {r["token_id"]: r["token"] for r in query(
            ws, "SELECT token_id, token FROM vocab WHERE sae = ? "
                "AND token_id IN (SELECT unnest(?::INTEGER[]))", [sae, ids]).to_pylist()}
    return {int(r["latent"]): [vocab.get(i, f"<{i}>") for i in r["ids"]] for r in rows}
