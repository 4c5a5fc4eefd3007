"""A circuit record (saebench.circuits.output) as a plotly graph: one column per hook.

Each node's customdata is (SAE folder, latent or "error", pos), so a browser can link a clicked
node to its feature page.
"""

from __future__ import annotations

import html
from collections import Counter, defaultdict

MAX_NODES = 150
"""Nodes drawn at most: past a few hundred, a column per hook is a solid bar that no hover
can pick from. The largest |effect| ones are drawn, error nodes always."""


def _key(n: dict) -> tuple:
    return n["hook"], n["latent"], n["pos"]


def shown_nodes(rec: dict, max_nodes: int = MAX_NODES) -> list[dict]:
    """The record's nodes the graph draws: every error node, then latents by |effect|, up to
    max_nodes in all; in the record's order."""
    if len(rec["nodes"]) <= max_nodes:
        return list(rec["nodes"])
    errors = [n for n in rec["nodes"] if n["latent"] == "error"]
    latents = sorted((n for n in rec["nodes"] if n["latent"] != "error"),
                     key=lambda n: -abs(n["effect"]))
    keep = {_key(n) for n in errors + latents[: max(0, max_nodes - len(errors))]}
    return [n for n in rec["nodes"] if _key(n) in keep]


def hook_tick(hook: str) -> str:
    """A hook name on two lines (`blocks.6<br>hook_resid_post`), so that the ticks of four or
    more columns fit side by side; plotly drops labels that would overlap."""
    head, dot, tail = hook.partition(".hook_") if ".hook_" in hook else hook.rpartition(".")
    return f"{head}<br>{dot.lstrip('.')}{tail}" if dot else hook


def _layout(nodes: list[dict], hooks: list[str]) -> dict[tuple, tuple[float, float]]:
    """(hook, latent, pos) -> (x, y): hooks left to right, largest |effect| at the top."""
    by_hook: dict[str, list[dict]] = defaultdict(list)
    for n in nodes:
        by_hook[n["hook"]].append(n)
    xy = {}
    for x, hook in enumerate(hooks):
        for y, n in enumerate(sorted(by_hook[hook], key=lambda n: -abs(n["effect"]))):
            xy[_key(n)] = (float(x), -float(y))
    return xy


def _hover(n: dict) -> str:
    """Hook, latent, position, effect, and the label and top tokens where the record has them."""
    out = f"{n['hook']} {n['latent']}" + ("" if n["pos"] is None else f" @ {n['pos']}")
    out += f"<br>effect {n['effect']:.3g}"
    if n.get("label"):
        out += f"<br>{html.escape(n['label'], quote=False)}"
    if n.get("top_tokens"):
        tokens = " ".join(repr(t) for t in n["top_tokens"])
        out += "<br>promotes " + html.escape(tokens, quote=False)
    return out


def circuit_figure(rec: dict, max_edges: int = 300, max_nodes: int = MAX_NODES):
    """A plotly Figure of the nodes (size ∝ |effect|, colour = sign) and strongest edges;
    the largest max_nodes nodes only (shown_nodes), and the edges between them."""
    import plotly.graph_objects as go

    nodes = shown_nodes(rec, max_nodes)
    xy = _layout(nodes, rec["hooks"])
    folder = dict(zip(rec["hooks"], rec["saes"], strict=True))
    fig = go.Figure()
    drawn = [e for e in rec["edges"]
             if _key(e["up"]) in xy and _key(e["down"]) in xy]
    edges = sorted(drawn, key=lambda e: -abs(e["weight"]))[:max_edges]
    top = max((abs(e["weight"]) for e in edges), default=1.0) or 1.0
    # One trace per (sign, width bucket), segments split by None: thousands of one-edge traces
    # make plotly slow.
    groups: dict[tuple[bool, int], tuple[list, list]] = defaultdict(lambda: ([], []))
    for e in edges:
        a, b = xy[_key(e["up"])], xy[_key(e["down"])]
        xs, ys = groups[(e["weight"] > 0, min(3, int(4 * abs(e["weight"]) / top)))]
        xs += [a[0], b[0], None]
        ys += [a[1], b[1], None]
    for (positive, bucket), (xs, ys) in sorted(groups.items()):
        colour = "rgba(31,119,180,0.5)" if positive else "rgba(214,39,40,0.5)"
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                                 line={"width": 0.5 + 1.5 * bucket, "color": colour}))
    big = max((abs(n["effect"]) for n in nodes), default=1.0) or 1.0
    keys = [_key(n) for n in nodes]
    fig.add_trace(go.Scatter(
        x=[xy[k][0] for k in keys], y=[xy[k][1] for k in keys], mode="markers",
        marker={"size": [6 + 18 * abs(n["effect"]) / big for n in nodes],
                "color": ["#1f77b4" if n["effect"] > 0 else "#d62728" for n in nodes],
                "symbol": ["square" if n["latent"] == "error" else "circle" for n in nodes]},
        customdata=[[folder[n["hook"]], n["latent"], n["pos"]] for n in nodes],
        text=[_hover(n) for n in nodes],
        hoverinfo="text", showlegend=False,
    ))
    column = max(Counter(k[0] for k in keys).values(), default=0)
    total = len(rec["nodes"])
    shown = (f"{total:,} nodes" if len(nodes) == total
             else f"the largest {len(nodes):,} of {total:,} nodes")
    fig.update_layout(
        title=f"{rec['task']} circuit on {rec['model']} ({shown}, {len(rec['edges']):,} edges)",
        xaxis={"tickvals": list(range(len(rec["hooks"]))),
               "ticktext": [hook_tick(h) for h in rec["hooks"]]},
        yaxis={"visible": False}, plot_bgcolor="white",
        # ~14 px per node of the longest column, so that neighbours can be told apart.
        height=max(450, min(1400, 14 * column + 150)),
    )
    return fig


def faithfulness_figure(sweep: list[dict], nodes_for_80: float | None = None):
    """Faithfulness against circuit size over the node-threshold sweep, with the random
    circuit of the same size per hook as the control (Marks et al. 2024 §3, Fig. 3)."""
    import plotly.graph_objects as go

    rows = sorted(sweep, key=lambda r: r["n_nodes"])
    x = [max(r["n_nodes"], 1) for r in rows]  # log axis: an empty circuit plots at 1
    fig = go.Figure()
    for col, name, dash in (("faithfulness", "circuit", None),
                            ("random_faithfulness", "random circuit", "dot")):
        fig.add_trace(go.Scatter(x=x, y=[r[col] for r in rows], mode="lines+markers",
                                 name=name, line={"dash": dash}))
    fig.add_hline(y=0.8, line={"dash": "dash", "color": "grey"})
    if nodes_for_80 is not None:
        fig.add_vline(x=nodes_for_80, line={"dash": "dash", "color": "grey"})
    fig.update_layout(title="Faithfulness vs circuit size", xaxis={"type": "log"},
                      xaxis_title="nodes", yaxis_title="faithfulness", height=320,
                      margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def clicked_node(points: list[dict]) -> tuple[str, int] | None:
    """(SAE folder name, latent) of the first latent node among a plotly selection's points,
    decoded from circuit_figure's customdata; None for error nodes, edges or nothing."""
    from pathlib import Path

    for p in points:
        data = p.get("customdata")
        if isinstance(data, list | tuple) and len(data) >= 2 and data[1] != "error":
            try:
                return Path(str(data[0])).name, int(data[1])
            except (TypeError, ValueError):
                continue
    return None
