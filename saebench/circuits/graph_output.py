"""Prompt graphs in a workspace: `<workspace>/graphs/<name>.json` (the whole record, written
atomically) and `<name>.{nodes,edges}.parquet` (flat rows behind the catalog views graph_nodes
and graph_edges), so SQL can ask which latents show up in which prompts' graphs."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pyarrow as pa

from saebench.circuits.prompt_graph_config import GRAPHS_DIR
from store.errors import UserError

_S, _I, _F = pa.string(), pa.int32(), pa.float64()
NODES = pa.schema([
    ("graph", _S), ("model", _S), ("prompt", _S), ("target", _S), ("contrast", _S),
    ("metric", _S), ("id", _S), ("hook", _S), ("sae", _S), ("latent", _I),
    ("is_error", pa.bool_()), ("pos", _I), ("token", _S), ("activation", _F), ("effect", _F),
    ("label", _S),
])
EDGES = pa.schema([("graph", _S), ("source", _S), ("target", _S), ("weight", _F)])


def slug(rec: dict) -> str:
    """A file name from the prompt's first words and the target, plus a hash of everything
    that changes the graph, so two different graphs never overwrite each other."""
    words = re.sub(r"[^a-z0-9]+", "-", f"{rec['prompt'][-40:]} {rec['target']}".lower())
    key = json.dumps([rec["prompt"], rec["target"], rec["contrast"], rec["settings"],
                      [Path(s).name for s in rec["saes"]]])
    return f"{words.strip('-')[:48]}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def _rows(rec: dict, name: str) -> tuple[list[dict], list[dict]]:
    keys = {"graph": name, **{k: rec[k] for k in ("model", "prompt", "target", "contrast",
                                                  "metric")}}
    nodes = [{**keys, **{k: n.get(k) for k in ("id", "hook", "sae", "pos", "token",
                                               "activation", "effect", "label")},
              "latent": -1 if n["latent"] == "error" else n["latent"],
              "is_error": n["latent"] == "error"} for n in rec["nodes"]]
    edges = [{"graph": name, **e} for e in rec["edges"]]
    return nodes, edges


def write_graph(workspace: Path, rec: dict, name: str | None = None,
                out: Path | None = None) -> Path:
    """Write the JSON (to `out`, default `<workspace>/graphs/<name>.json`) and the catalog rows
    (always into the workspace); return the JSON's path."""
    from saebench.circuits.output import write  # imports torch: only writers need it
    from store.catalog import refresh, write_parquet_atomic

    name = name or slug(rec)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise UserError(f"graph name {name!r}: use letters, digits, '.', '_' and '-'")
    folder = Path(workspace) / GRAPHS_DIR
    path = Path(out) if out else folder / f"{name}.json"
    write(path, rec)  # a tmp file beside it, then os.replace
    nodes, edges = _rows(rec, Path(path).stem)
    write_parquet_atomic(folder / f"{Path(path).stem}.nodes.parquet",
                         pa.Table.from_pylist(nodes, schema=NODES))
    write_parquet_atomic(folder / f"{Path(path).stem}.edges.parquet",
                         pa.Table.from_pylist(edges, schema=EDGES))
    refresh(workspace)
    return path


def saved_graphs(workspace: Path) -> list[str]:
    """Names of the graphs saved in a workspace, newest first."""
    files = Path(workspace).glob(f"{GRAPHS_DIR}/*.json")
    return [p.stem for p in sorted(files, key=lambda p: -p.stat().st_mtime)]


def read_graph(workspace: Path, name: str) -> dict:
    """One saved graph's record; a one-line UserError if it is missing or not a graph."""
    path = Path(workspace) / GRAPHS_DIR / f"{name}.json"
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read graph {path}: {err}") from None
    if not isinstance(rec, dict) or not str(rec.get("format", "")).startswith(
            "saebench.prompt_graph/"):
        raise UserError(f"{path} is not a prompt graph")
    return rec
