"""Charts over whole dictionaries (compare, feature map): data in, plotly figure out."""

from __future__ import annotations

import html
import math

import numpy as np
import plotly.graph_objects as go

from app.charts import _show

_LAYOUT = dict(margin=dict(l=10, r=10, t=40, b=10))
NOISE = "#bbbbbb"  # HDBSCAN's noise points and unlabelled latents: present but quiet
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#ad494a", "#637939", "#843c39",
           "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363")


def tokens_text(tokens: list[str] | None) -> str:
    """Top tokens as one readable line: quoted, whitespace made visible; '—' for none."""
    return "  ".join(f"'{_show(t)}'" for t in tokens) if tokens else "—"


def matched_cos_histogram(abs_cos: np.ndarray, threshold: float) -> go.Figure:
    """How well each matched pair agrees: one bar per 0.02 of |cos|, the threshold marked."""
    fig = go.Figure(go.Histogram(x=abs_cos, xbins=dict(start=0, end=1.0001, size=0.02),
                                 marker_color="steelblue"))
    fig.add_vline(x=threshold, line_dash="dash", line_color="crimson",
                  annotation_text=f"threshold {threshold:g}", annotation_position="top left")
    fig.update_layout(title="|cos| of matched decoder pairs", xaxis_title="|cos|",
                      yaxis_title="pairs", xaxis_range=[0, 1], height=320, bargap=0.02,
                      **_LAYOUT)
    return fig


def share_heatmap(names: list[str], matrix: np.ndarray, threshold: float) -> go.Figure:
    """Row SAE's share of latents matched above threshold in the column SAE (blank: not run)."""
    text = [["" if math.isnan(v) else f"{v:.0%}" for v in row] for row in matrix]
    fig = go.Figure(go.Heatmap(
        z=matrix, x=names, y=names, text=text, texttemplate="%{text}", zmin=0, zmax=1,
        colorscale="Blues", hovertemplate="%{y} vs %{x}: %{text}<extra></extra>"))
    size = 140 + 60 * len(names)
    fig.update_layout(title=f"Share of latents matched with |cos| > {threshold:g}",
                      height=max(size, 320), yaxis_autorange="reversed", **_LAYOUT)
    return fig


def _hover(latents: np.ndarray, tokens: dict[int, list[str]], notes: dict[int, str]) -> list[str]:
    out = []
    for i in latents:
        toks = tokens.get(int(i))
        lines = [f"<b>#{int(i)}</b>", html.escape(tokens_text(toks)) if toks else "(no contexts)"]
        if notes.get(int(i)):
            lines.append(html.escape(notes[int(i)][:80]))
        out.append("<br>".join(lines))
    return out


def _group_name(g) -> str:
    if g == -1:
        return "noise"
    if g == "":
        return "unlabelled"
    return f"cluster {g}" if isinstance(g, int) else str(g)


def feature_map(
    latent: np.ndarray, x: np.ndarray, y: np.ndarray, *, groups: np.ndarray | None = None,
    values: np.ndarray | None = None, value_title: str = "", tokens: dict[int, list[str]],
    notes: dict[int, str],
) -> go.Figure:
    """The UMAP scatter. Colour: `groups` (one legend entry each; -1 and '' are grey) or
    continuous `values` (NaN grey). Each point's customdata is its latent (for clicks)."""
    hover = np.array(_hover(latent, tokens, notes), dtype=object)
    marker = dict(size=5, opacity=0.8)
    traces = []
    if values is not None:
        ok = ~np.isnan(values)
        for mask, extra in ((~ok, dict(color=NOISE)),
                            (ok, dict(color=values[ok], colorscale="Viridis", showscale=True,
                                      colorbar=dict(title=value_title)))):
            if mask.any():
                traces.append(go.Scattergl(
                    x=x[mask], y=y[mask], mode="markers", customdata=latent[mask].tolist(),
                    text=hover[mask], hovertemplate="%{text}<extra></extra>",
                    marker={**marker, **extra}, showlegend=False))
    else:
        groups = np.zeros(len(latent), dtype=int) if groups is None else groups
        keys = sorted(set(groups.tolist()), key=lambda g: (g in (-1, ""), str(g).zfill(6)))
        for n, g in enumerate(keys):
            mask = groups == g
            grey = g in (-1, "")
            traces.append(go.Scattergl(
                x=x[mask], y=y[mask], mode="markers", customdata=latent[mask].tolist(),
                text=hover[mask], hovertemplate="%{text}<extra></extra>",
                name=f"{_group_name(g)} ({int(mask.sum())})",
                marker={**marker, "color": NOISE if grey else PALETTE[n % len(PALETTE)]}))
    fig = go.Figure(traces)
    fig.update_layout(height=700, xaxis=dict(showticklabels=False, title=""),
                      yaxis=dict(showticklabels=False, title=""),
                      legend=dict(itemsizing="constant"), **_LAYOUT)
    return fig


def clicked_latent(event) -> int | None:
    """The latent (customdata) of the first selected point of a plotly selection event."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for p in points:
        data = p.get("customdata")
        if data is not None:
            return int(data[0] if isinstance(data, list | tuple) else data)
    return None
