"""All of the browser's SQL, against the workspace catalog's views (store/catalog.py).

Every value a user can type reaches DuckDB as a bound parameter (`?`), never by string
formatting; the only interpolated fragments are column names picked from fixed dicts here.
A `Catalog` holds one read-only connection for one page render and is closed right after, so
the browser never holds the catalog file while a writer (index, train, eval) wants it.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from app import index_reader
from saebench.index import schema
from store.catalog import VIEWS, connect, write_parquet_atomic

LABELS_FILE = "labels.parquet"
# Metrics shown in the overview table and Pareto plots, in this order.
METRICS = (
    "l0", "fvu", "explained_variance", "ce_recovered_vs_zero_ablation",
    "ce_recovered_vs_mean_ablation", "pct_dead",
)
# Sort orders for the "features by" search: never user-typed SQL.
ORDERS = {"density": "density DESC", "max_act": "max_act DESC", "rarest": "density ASC"}


def sae_names(workspace: Path) -> list[str]:
    """SAE folders of the workspace that are complete (cfg.json is written last)."""
    return sorted(p.parent.name for p in Path(workspace).glob("saes/*/cfg.json"))


def sae_cfg(workspace: Path, sae: str) -> dict:
    """cfg.json and saebench_train.json (if any) of one SAE: {"cfg": ..., "run": ...}."""
    folder = Path(workspace) / "saes" / sae
    run = folder / "saebench_train.json"
    return {
        "cfg": json.loads((folder / "cfg.json").read_text()),
        "run": json.loads(run.read_text()) if run.is_file() else {},
    }


def available(workspace: Path) -> set[str]:
    """Catalog views that have at least one file behind them."""
    return {name for name, glob in VIEWS.items() if any(Path(workspace).glob(glob))}


def save_label(workspace: Path, sae: str, latent: int, label: str) -> None:
    """Set (or, with an empty label, remove) a latent's label: the browser's only write."""
    path = Path(workspace) / LABELS_FILE
    rows = pq.read_table(path).to_pylist() if path.exists() else []
    rows = [r for r in rows if (r["sae"], r["latent"]) != (sae, latent)]
    if label.strip():
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        rows.append({"sae": sae, "latent": int(latent), "label": label.strip(), "updated_at": now})
    if rows or path.exists():
        import pyarrow as pa

        schema = pa.schema([("sae", pa.string()), ("latent", pa.int32()),
                            ("label", pa.string()), ("updated_at", pa.string())])
        write_parquet_atomic(path, pa.Table.from_pylist(rows, schema=schema))


def pairs(wanted: dict[str, list[int]]) -> tuple[str, list]:
    """A WHERE condition for some latents of some SAEs, and its bound parameters, so that one
    query serves several SAEs. It also admits other pairs of the listed SAEs and latents:
    callers keep the ones they asked for."""
    saes = sorted(s for s, ids in wanted.items() if ids)
    latents = sorted({int(i) for s in saes for i in wanted[s]})
    return (f"sae IN ({', '.join('?' * len(saes))}) "
            f"AND latent IN ({', '.join('?' * len(latents))})", [*saes, *latents])


class Catalog:
    """One short-lived read-only connection; use as `with Catalog(ws) as db:`.

    The connection opens on the first SQL query. Lookups of a few latents of one SAE (the
    feature page's) read that SAE's own files through app/index_reader.py instead, which is
    ~10x faster than a fresh connection per render, and fall back to SQL without the file.
    """

    def __init__(self, workspace: Path) -> None:
        self.workspace = Path(workspace)
        self.views = available(self.workspace)
        self._cols: dict[str, list[str]] = {}
        self._con = None

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    @property
    def con(self):
        if self._con is None:
            self._con = connect(self.workspace)
        return self._con

    def _keyed(self, sae: str, file: str, latents: list[int], sort: list | None = None,
               columns: list[str] | None = None) -> list[dict]:
        """Rows of `saes/<sae>/index/<file>` for some latents, without `sae`. That file is
        the catalog view's only source of this SAE's rows, so without it there are none."""
        table = index_reader.rows(self.workspace / "saes" / sae / schema.INDEX_DIR / file,
                                  latents, columns)
        if table is None:
            return []
        if sort:
            table = table.sort_by(sort)
        return table.drop_columns([c for c in ("sae",) if c in table.column_names]).to_pylist()

    def has(self, *views: str) -> bool:
        return all(v in self.views for v in views)

    def rows(self, sql: str, params: list | None = None) -> list[dict]:
        return self.con.sql(sql, params=params or None).to_arrow_table().to_pylist()

    def frame(self, sql: str, params: list | None = None):
        return self.con.sql(sql, params=params or None).to_arrow_table().to_pandas()

    # --- overview -------------------------------------------------------------------------
    def metrics(self) -> dict[str, dict[str, float]]:
        """{sae: {metric: latest value}} over all evals."""
        if not self.has("eval_metrics"):
            return {}
        out: dict[str, dict[str, float]] = {}
        for r in self.rows("SELECT sae, metric, arg_max(value, created_at) AS value "
                           "FROM eval_metrics GROUP BY sae, metric"):
            out.setdefault(r["sae"], {})[r["metric"]] = r["value"]
        return out

    def eval_rows(self) -> list[dict]:
        """Every (sae, eval, metric) with its latest value: what the L0 plots can show."""
        if not self.has("eval_metrics"):
            return []
        return self.rows("SELECT sae, eval, metric, arg_max(value, created_at) AS value "
                         "FROM eval_metrics GROUP BY sae, eval, metric ORDER BY eval, metric")

    def curves(self):
        if not self.has("training_curves"):
            return None
        return self.frame("SELECT * FROM training_curves ORDER BY sae, step")

    # --- one feature ----------------------------------------------------------------------
    def feature(self, sae: str, latent: int) -> dict | None:
        if not self.has("features"):
            return None
        rows = self._keyed(sae, schema.FEATURES_FILE, [latent])
        return rows[0] if rows else None

    def n_latents(self, sae: str) -> int:
        if not self.has("features"):
            return 0
        n = index_reader.num_rows(
            self.workspace / "saes" / sae / schema.INDEX_DIR / schema.FEATURES_FILE)
        return n or 0  # one row per latent

    def contexts(self, sae: str, latent: int) -> list[dict]:
        """Top and interval contexts; `loss_effects` is present where the index has them."""
        if not self.has("contexts"):
            return []
        # Every column: indexes from before loss effects lack that one.
        found = self._keyed(sae, schema.CONTEXTS_FILE, [latent], sort=[
            ("kind", "descending"), ("bucket", "descending"), ("rank", "ascending")])
        return [{k: v for k, v in r.items() if k != "latent"} for r in found]

    def top_tokens(self, wanted: dict[str, list[int]], n: int = 3) -> dict[tuple, list[int]]:
        """{(sae, latent): ids of the tokens its top contexts fire on, most frequent first},
        for some latents of some SAEs, in one query."""
        if not self.has("features") or not any(wanted.values()):
            return {}
        out: dict[tuple, list[int]] = {}
        missing: dict[str, list[int]] = {}
        for name, ids in wanted.items():
            found = self._keyed(name, schema.FEATURES_FILE, ids, columns=["latent", "top_tokens"])
            if found and "top_tokens" not in found[0]:
                missing[name] = ids
            # A null list is a latent that never fired: it has no top tokens to look for.
            out |= {(name, r["latent"]): (r.get("top_tokens") or [])[:n] for r in found}
        if any(missing.values()) and self.has("contexts"):
            # Indexes from before features.top_tokens: the same summary from the contexts,
            # which decodes each latent's token lists (app_bench: about as slow as the
            # page's own contexts query, where features.top_tokens costs a fifth of it).
            cond, params = pairs(missing)
            out |= {(r["sae"], r["latent"]): r["ids"] for r in self.rows(
                "SELECT sae, latent, list(token_id ORDER BY n DESC, act DESC, token_id)[:?] "
                "AS ids FROM (SELECT sae, latent, tokens[center + 1] AS token_id, count(*) AS n,"
                f" max(act) AS act FROM contexts WHERE kind = 'top' AND {cond} GROUP BY ALL) "
                "GROUP BY sae, latent", [n, *params])}
        return {k: v for k, v in out.items() if k[1] in wanted.get(k[0], ())}

    def token_strings(self, sae: str, ids: list[int]) -> dict[int, str]:
        if not self.has("vocab") or not ids:
            return {}
        vocab = index_reader.whole(self.workspace / "saes" / sae / schema.INDEX_DIR
                                   / schema.VOCAB_FILE)
        if vocab is None:
            return {}
        hit = vocab.filter(pc.is_in(vocab["token_id"], pa.array(sorted(set(ids)),
                                                                type=pa.int32())))
        return dict(zip(hit["token_id"].to_pylist(), hit["token"].to_pylist(), strict=True))

    def logits(self, sae: str, latent: int) -> list[dict]:
        if not self.has("logit_effects"):
            return []
        found = self._keyed(sae, schema.LOGITS_FILE, [latent], sort=[
            ("kind", "descending"), ("rank", "ascending")])
        return [{k: r[k] for k in ("kind", "rank", "token_id", "value")} for r in found]

    def neighbours(self, sae: str, latent: int) -> list[dict]:
        if not self.has("neighbours"):
            return []
        found = self._keyed(sae, schema.NEIGHBOURS_FILE, [latent], sort=[
            ("kind", "ascending"), ("rank", "ascending")])
        return [{k: r[k] for k in ("kind", "rank", "other", "value")} for r in found]

    def random_alive(self, sae: str) -> int | None:
        if not self.has("features"):
            return None
        rows = self.rows("SELECT latent FROM features WHERE sae = ? AND NOT dead "
                         "ORDER BY random() LIMIT 1", [sae])
        return rows[0]["latent"] if rows else None

    # --- labels ---------------------------------------------------------------------------
    def labels_of(self, wanted: dict[str, list[int]]) -> dict[tuple, str]:
        """{(sae, latent): label} for some latents of some SAEs, in one query."""
        if not self.has("labels") or not any(wanted.values()):
            return {}
        table = index_reader.whole(self.workspace / LABELS_FILE)
        # The view's only file; small (typed by hand), so filtered in Python.
        return {(r["sae"], r["latent"]): r["label"]
                for r in table.select(["sae", "latent", "label"]).to_pylist()
                if r["latent"] in wanted.get(r["sae"], ())} if table is not None else {}

    def labels(self, sae: str, latents: list[int] | None = None) -> dict[int, str]:
        if not self.has("labels"):
            return {}
        sql = "SELECT latent, label FROM labels WHERE sae = ?"
        params: list = [sae]
        if latents is not None:
            sql += " AND latent IN (SELECT unnest(?::INTEGER[]))"
            params.append(list(latents))
        return {r["latent"]: r["label"] for r in self.rows(sql, params)}

    # --- search ---------------------------------------------------------------------------
    def search_labels(self, text: str) -> list[dict]:
        if not self.has("labels"):
            return []
        return self.rows("SELECT sae, latent, label FROM labels "
                         "WHERE contains(lower(label), lower(?)) ORDER BY sae, latent", [text])

    def features_on_token(self, sae: str, token: str, limit: int = 50) -> list[dict]:
        """Latents whose indexed contexts activate on `token` (exact text, or a token id)."""
        if not self.has("contexts", "vocab"):
            return []
        return self.rows(
            "WITH ids AS (SELECT token_id FROM vocab WHERE sae = ? AND (token = ? "
            "  OR trim(replace(token, 'Ġ', ' ')) = trim(?) OR CAST(token_id AS VARCHAR) = ?)) "
            "SELECT latent, count(*) AS contexts, max(act) AS max_act FROM contexts "
            "WHERE sae = ? AND tokens[center + 1] IN (SELECT token_id FROM ids) "
            "GROUP BY latent ORDER BY max_act DESC LIMIT ?",
            [sae, token, token, token.strip(), sae, limit])

    def features_by(self, sae: str, order: str, limit: int = 50) -> list[dict]:
        if not self.has("features"):
            return []
        return self.rows(
            f"SELECT latent, density, max_act, fires, dead, dense FROM features "
            f"WHERE sae = ? AND NOT dead ORDER BY {ORDERS[order]}, latent LIMIT ?", [sae, limit])

    # --- dead and dense -------------------------------------------------------------------
    def densities(self, sae: str):
        if not self.has("features"):
            return None
        return self.frame("SELECT latent, density, fires, tokens_seen, max_act, dead, dense "
                          "FROM features WHERE sae = ? ORDER BY latent", [sae])

    # --- circuits -------------------------------------------------------------------------
    def circuits(self) -> list[str]:
        """Names of the circuits that `saebench circuits` wrote into this workspace."""
        if not self.has("circuit_sweeps"):
            return []
        return [r["circuit"] for r in self.rows(
            "SELECT DISTINCT circuit FROM circuit_sweeps ORDER BY circuit")]

    def circuit_sweep(self, circuit: str) -> list[dict]:
        """The faithfulness sweep of one circuit (each row also carries its summary)."""
        return self.rows("SELECT * FROM circuit_sweeps WHERE circuit = ? ORDER BY n_nodes",
                         [circuit])

    def circuit_nodes(self, circuit: str) -> list[dict]:
        if not self.has("circuit_nodes"):
            return []
        return self.rows(
            "SELECT hook, sae, latent, is_error, pos, effect, label, top_tokens "
            "FROM circuit_nodes WHERE circuit = ? ORDER BY abs(effect) DESC", [circuit])

    def circuit_edges(self, circuit: str) -> list[dict]:
        if not self.has("circuit_edges"):
            return []
        return self.rows("SELECT * FROM circuit_edges WHERE circuit = ?", [circuit])
