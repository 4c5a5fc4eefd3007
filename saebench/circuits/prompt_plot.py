"""A prompt graph (saebench.circuits.prompt_graph) as a plotly figure: x is the token position,
y the hook (in execution order, the output on top), node size and colour the effect, edge width
the weight. Nodes sharing a (hook, position) cell are stacked, strongest on top.

Each node's customdata is (SAE folder, latent or "error", pos), as in saebench.circuits.plot, so
plot.clicked_node decodes a click into a feature page.
"""

from __future__ import annotations

import html
from collections import defaultdict

BAND = 0.38  # half the height of a hook's band that stacked nodes spread over
COLOURS = {True: "rgba(33,102,172,{a})", False: "rgba(178,24,43,{a})"}  # effect > 0, < 0


def layout(rec: dict) -> dict[str, tuple[float, float]]:
    """node id -> (x, y); the output node sits above the last hook at the last position."""
    cells: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for n in rec["nodes"]:
        cells[(n["hook"], n["pos"])].append(n)
    row = {h: i for i, h in enumerate(rec["hooks"])}
    xy = {rec["output"]["id"]: (float(rec["output"]["pos"]), float(len(rec["hooks"])))}
    for (hook, pos), nodes in cells.items():
        nodes = sorted(nodes, key=lambda n: -abs(n["effect"]))
        step = 2 * BAND / max(len(nodes) - 1, 1)
        for i, n in enumerate(nodes):
            # A zigzag in x keeps big markers in a tall stack from covering each other.
            dx = 0.0 if len(nodes) < 4 else (0.18 if i % 2 else -0.18)
            dy = 0.0 if len(nodes) == 1 else BAND - i * step
            xy[n["id"]] = (pos + dx, row[hook] + dy)
    return xy


def _hover(n: dict) -> str:
    name = "error" if n["latent"] == "error" else f"#{n['latent']}"
    out = (f"{html.escape(str(n.get('sae') or n['hook']))} {name}<br>"
           f"{html.escape(repr(n['token']))} @ {n['pos']} · {n['hook']}<br>"
           f"activation {n['activation']:.3g} · effect {n['effect']:+.3g}")
    if n.get("label"):
        out += f"<br>{html.escape(n['label'], quote=False)}"
    if n.get("top_tokens"):
        out += "<br>promotes " + html.escape(" ".join(map(repr, n["top_tokens"])), quote=False)
    return out


def graph_figure(rec: dict, max_edges: int = 300):
    """A plotly Figure of the graph's nodes, output and strongest edges."""
    import plotly.graph_objects as go

    xy = layout(rec)
    fig = go.Figure()
    edges = sorted(rec["edges"], key=lambda e: -abs(e["weight"]))[:max_edges]
    top = max((abs(e["weight"]) for e in edges), default=1.0) or 1.0
    # One trace per (sign, width bucket), segments split by None (as plot.circuit_figure).
    groups: dict[tuple[bool, int], tuple[list, list]] = defaultdict(lambda: ([], []))
    for e in edges:
        (x0, y0), (x1, y1) = xy[e["source"]], xy[e["target"]]
        xs, ys = groups[(e["weight"] > 0, min(4, int(5 * abs(e["weight"]) / top)))]
        xs += [x0, x1, None]
        ys += [y0, y1, None]
    for (positive, bucket), (xs, ys) in sorted(groups.items()):
        colour = COLOURS[positive].format(a=0.25 + 0.12 * bucket)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                                 line={"width": 0.6 + 1.6 * bucket, "color": colour}))
    out = rec["output"]
    against = f" − {out['contrast']!r}" if out.get("contrast") else ""
    fig.add_trace(go.Scatter(
        x=[xy[out["id"]][0]], y=[xy[out["id"]][1]], mode="markers+text",
        marker={"size": 22, "symbol": "diamond", "color": "#444"},
        text=[f"{rec['metric']} {out['token']!r}{against} = {rec['value']:.2f}"],
        textposition="middle left", hoverinfo="skip", showlegend=False,
        customdata=[["", "output", out["pos"]]]))
    nodes = rec["nodes"]
    big = max((abs(n["effect"]) for n in nodes), default=1.0) or 1.0
    fig.add_trace(go.Scatter(
        x=[xy[n["id"]][0] for n in nodes], y=[xy[n["id"]][1] for n in nodes], mode="markers",
        marker={"size": [7 + 23 * abs(n["effect"]) / big for n in nodes],
                "color": [n["effect"] for n in nodes], "colorscale": "RdBu", "cmid": 0,
                "cmin": -big, "cmax": big, "line": {"width": 1, "color": "#333"},
                "colorbar": {"title": {"text": "effect"}, "thickness": 12},
                "symbol": ["square" if n["latent"] == "error" else "circle" for n in nodes]},
        customdata=[[n.get("sae") or "", n["latent"], n["pos"]] for n in nodes],
        text=[_hover(n) for n in nodes], hoverinfo="text", showlegend=False))
    positions = range(int(rec["bos"]), len(rec["tokens"]))
    fig.update_layout(
        xaxis={"tickvals": list(positions), "tickangle": -40, "range": [
            positions.start - 0.6, len(rec["tokens"]) - 0.4],
               "ticktext": [f"{rec['tokens'][p]!r}<br>{p}" for p in positions]},
        yaxis={"tickvals": list(range(len(rec["hooks"]) + 1)),
               "ticktext": [*rec["hooks"], "output"], "range": [-0.6, len(rec["hooks"]) + 0.5]},
        plot_bgcolor="white", height=260 + 200 * len(rec["hooks"]),
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        title=f"{len(nodes)} nodes, {len(rec['edges'])} edges · {rec['model']}")
    return fig
