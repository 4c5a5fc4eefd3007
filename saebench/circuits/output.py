"""A circuit as JSON (nodes, weighted edges, the faithfulness sweep, the summary), written
atomically, and as flat rows for the workspace catalog."""

from __future__ import annotations

import json
import os
from pathlib import Path

from saebench.circuits.attribution import Attribution
from saebench.circuits.saes import SAESet

FORMAT = "saebench.circuit/1"


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
        "nodes": nodes(sset, attr),
        "edges": edges(sset, attr, settings["edge_threshold"]),
        "faithfulness": faith,
        "summary": {"nodes_for_80": faith["nodes_for_80"], **faith["circuit"]},
    }


def write(path: Path, rec: dict) -> None:
    """Write the record atomically: a tmp file beside it, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(rec, indent=1))
    os.replace(tmp, path)


def catalog_rows(rec: dict) -> list[dict]:
    """Flat rows (one per sweep point) for a workspace catalog table of circuits."""
    base = {"task": rec["task"], "model": rec["model"], "method": rec["settings"]["method"],
            "saes": ",".join(rec["saes"]), "nodes_for_80": rec["summary"]["nodes_for_80"],
            "completeness": rec["summary"]["completeness"]}
    return [{**base, **row} for row in rec["faithfulness"]["sweep"]]
