"""A circuit as JSON (nodes, weighted edges, the faithfulness sweep, the summary), written
atomically, and as three Parquet files of flat rows for the workspace catalog."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from saebench.circuits.attribution import Attribution
from saebench.circuits.saes import SAESet

FORMAT = "saebench.circuit/1"
CIRCUITS_DIR = "circuits"  # <workspace>/circuits/<name>.{json,sweep,nodes,edges}.parquet
TOP_TOKENS = 5
_S, _I, _F = pa.string(), pa.int32(), pa.float64()
SWEEP = pa.schema([
    ("circuit", _S), ("task", _S), ("model", _S), ("method", _S), ("hooks", pa.list_(_S)),
    ("saes", pa.list_(_S)), ("patch", _S), ("node_threshold", _F), ("nodes_for_80", _F),
    ("completeness_at_80", _F), ("circuit_completeness", _F), ("circuit_n_nodes", pa.int64()),
    ("circuit_faithfulness", _F), ("n_edges", pa.int64()), ("threshold", _F),
    ("n_nodes", pa.int64()), ("faithfulness", _F), ("random_faithfulness", _F),
    ("completeness", _F), ("metric", _F), ("random_metric", _F), ("completeness_metric", _F),
])
NODES = pa.schema([
    ("circuit", _S), ("task", _S), ("model", _S), ("method", _S), ("hook", _S), ("sae", _S),
    ("latent", _I), ("is_error", pa.bool_()), ("pos", _I), ("effect", _F), ("label", _S),
    ("top_tokens", pa.list_(_S)),
])
EDGES = pa.schema([
    ("circuit", _S), ("up_hook", _S), ("up_sae", _S), ("up_latent", _I), ("up_pos", _I),
    ("down_hook", _S), ("down_sae", _S), ("down_latent", _I), ("down_pos", _I), ("weight", _F),
])


def _node(hook: str, d_sae: int, pos: int, j: int, effect: float) -> dict:
    return {"hook": hook, "latent": "error" if j == d_sae else j,
            "pos": None if pos < 0 else pos, "effect": effect}


def nodes(sset: SAESet, attr: Attribution) -> list[dict]:
    """Kept nodes, largest |effect| first within each hook."""
    out = []
    for hook, sae in sset.items():
        eff = attr.effects[hook]
        rows = [_node(hook, sae.d_sae, p, j, float(eff[j] if p < 0 else eff[p, j]))
                for p, j in attr.kept[hook].tolist()]
        out += sorted(rows, key=lambda r: -abs(r["effect"]))
    return out


def _top_tokens(folder: Path, latents: list[int]) -> dict[int, list[str]]:
    """Each latent's top logit-lens tokens (the index's logits.parquet, kind 'top').

    The logit lens rather than top activating tokens: it says what a latent writes towards
    the output, which is what a circuit ending in a logit difference is about, and it is
    20 rows per latent where contexts are windows."""
    from saebench.index.schema import INDEX_DIR, LOGITS_FILE, VOCAB_FILE

    index = Path(folder) / INDEX_DIR
    if not latents or not (index / LOGITS_FILE).is_file() or not (index / VOCAB_FILE).is_file():
        return {}
    rows = pq.read_table(index / LOGITS_FILE, columns=["latent", "rank", "token_id"], filters=[
        ("latent", "in", latents), ("kind", "==", "top"), ("rank", "<", TOP_TOKENS)],
    ).sort_by([("latent", "ascending"), ("rank", "ascending")]).to_pylist()
    ids = sorted({r["token_id"] for r in rows})
    vocab = pq.read_table(index / VOCAB_FILE, columns=["token_id", "token"],
                          filters=[("token_id", "in", ids)]).to_pydict() if ids else {}
    text = dict(zip(vocab.get("token_id", []), vocab.get("token", []), strict=True))
    out: dict[int, list[str]] = defaultdict(list)
    for r in rows:
        out[r["latent"]].append(text.get(r["token_id"], str(r["token_id"])))
    return out


def _labels(folder: Path, latents: list[int]) -> dict[int, str]:
    """Labels saved in the browser (the workspace's labels.parquet) for these latents."""
    from store.catalog import workspace_of

    path = workspace_of(folder) / "labels.parquet"  # app/data.py LABELS_FILE
    if not latents or not path.is_file():
        return {}
    rows = pq.read_table(path, columns=["latent", "label"], filters=[
        ("sae", "==", Path(folder).name), ("latent", "in", latents)]).to_pylist()
    return {r["latent"]: r["label"] for r in rows}


def annotate(nodes: list[dict], folder_of: dict[str, Path]) -> list[dict]:
    """Give each node its SAE's folder name and, where the workspace has them, its label
    and top tokens; reads only the circuit's latents."""
    for hook, folder in folder_of.items():
        mine = [n for n in nodes if n["hook"] == hook]
        latents = sorted({n["latent"] for n in mine if n["latent"] != "error"})
        tokens, labels = _top_tokens(folder, latents), _labels(folder, latents)
        for n in mine:
            n["sae"] = Path(folder).name
            n["label"] = labels.get(n["latent"])
            n["top_tokens"] = tokens.get(n["latent"])
    return nodes


def edges(sset: SAESet, attr: Attribution, threshold: float) -> list[dict]:
    """Edges with |weight| > threshold between kept nodes at consecutive hooks."""
    d_sae = dict(zip(sset.hooks, (s.d_sae for s in sset.saes), strict=True))
    out = []
    for (up, down), w in attr.edges.items():
        for a, b in (w.abs() > threshold).nonzero().tolist():
            (pd, jd), (pu, ju) = attr.kept[down][a].tolist(), attr.kept[up][b].tolist()
            out.append({"up": _node(up, d_sae[up], pu, ju, 0.0),
                        "down": _node(down, d_sae[down], pd, jd, 0.0),
                        "weight": float(w[a, b])})
    for e in out:  # node effects are listed once, under "nodes"
        del e["up"]["effect"], e["down"]["effect"]
    return out


def record(task: str, sset: SAESet, attr: Attribution, faith: dict, settings: dict) -> dict:
    """The whole circuit as one JSON-ready dict."""
    folder_of = dict(zip(sset.hooks, sset.folders, strict=True))
    return {
        "format": FORMAT,
        "task": task,
        "model": sset.model_name,
        "hooks": sset.hooks,
        "saes": [str(f) for f in sset.folders],
        "settings": settings,
        "clean_metric": float(attr.clean_metric.mean()),
        "corrupt_metric": float(attr.corrupt_metric.mean()),
        "accuracy": attr.accuracy,
        "nodes": annotate(nodes(sset, attr), folder_of),
        "edges": edges(sset, attr, settings["edge_threshold"]),
        "faithfulness": faith,
        "summary": {"nodes_for_80": faith["nodes_for_80"],
                    "completeness_at_80": (faith["at_80"] or {}).get("completeness"),
                    **faith["circuit"]},
    }


def write(path: Path, rec: dict) -> None:
    """Write the record atomically: a tmp file beside it, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(rec, indent=1))
    os.replace(tmp, path)


def catalog_rows(rec: dict) -> list[dict]:
    """Flat rows (one per sweep point, with the chosen circuit's summary) for the catalog."""
    s = rec["summary"]
    # SAE folder names, not paths: the catalog is read from wherever the workspace now is.
    base = {"task": rec["task"], "model": rec["model"], "method": rec["settings"]["method"],
            "hooks": rec["hooks"], "saes": [Path(f).name for f in rec["saes"]],
            "patch": rec["settings"].get("patch"),
            "node_threshold": rec["settings"].get("node_threshold"),
            "nodes_for_80": s["nodes_for_80"], "completeness_at_80": s["completeness_at_80"],
            "circuit_completeness": s["completeness"],
            "circuit_n_nodes": s["n_nodes"], "circuit_faithfulness": s["faithfulness"],
            "n_edges": len(rec["edges"])}
    return [{**base, **row} for row in rec["faithfulness"]["sweep"]]


def _end(e: dict, sae_of: dict[str, str]) -> dict:
    return {"hook": e["hook"], "sae": sae_of[e["hook"]],
            "latent": -1 if e["latent"] == "error" else e["latent"], "pos": e["pos"]}


def write_catalog(rec: dict, workspace: Path, name: str) -> list[Path]:
    """Write `<workspace>/circuits/<name>.{sweep,nodes,edges}.parquet` (the catalog views
    circuit_sweeps, circuit_nodes and circuit_edges), each atomically; return their paths."""
    from store.catalog import write_parquet_atomic

    sae_of = {h: Path(f).name for h, f in zip(rec["hooks"], rec["saes"], strict=True)}
    keys = {"circuit": name, "task": rec["task"], "model": rec["model"],
            "method": rec["settings"]["method"]}
    node_rows = [{**keys, **n, **_end(n, sae_of), "is_error": n["latent"] == "error"}
                 for n in rec["nodes"]]
    edge_rows = []
    for e in rec["edges"]:
        ends = {f"{side}_{k}": v for side in ("up", "down")
                for k, v in _end(e[side], sae_of).items()}
        edge_rows.append({"circuit": name, **ends, "weight": e["weight"]})
    tables = {"sweep": (SWEEP, [{"circuit": name, **r} for r in catalog_rows(rec)]),
              "nodes": (NODES, node_rows), "edges": (EDGES, edge_rows)}
    paths = []
    for kind, (schema, rows) in tables.items():
        paths.append(Path(workspace) / CIRCUITS_DIR / f"{name}.{kind}.parquet")
        write_parquet_atomic(paths[-1], pa.Table.from_pylist(rows, schema=schema))
    return paths


def from_catalog(sweep: list[dict], node_rows: list[dict], edge_rows: list[dict]) -> dict:
    """The part of a record that circuit_figure draws, rebuilt from one circuit's catalog rows
    (the JSON may live outside the workspace, under --out)."""
    def end(r: dict, side: str) -> dict:
        j = r[f"{side}_latent"]
        return {"hook": r[f"{side}_hook"], "latent": "error" if j < 0 else j,
                "pos": r[f"{side}_pos"]}

    head = sweep[0]
    return {
        "task": head["task"], "model": head["model"], "hooks": head["hooks"],
        "saes": head["saes"],
        "nodes": [{"hook": r["hook"], "sae": r["sae"],
                   "latent": "error" if r["is_error"] else r["latent"], "pos": r["pos"],
                   "effect": r["effect"], "label": r["label"], "top_tokens": r["top_tokens"]}
                  for r in node_rows],
        "edges": [{"up": end(r, "up"), "down": end(r, "down"), "weight": r["weight"]}
                  for r in edge_rows],
    }
