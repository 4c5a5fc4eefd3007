"""Pure chart builders: data in, plotly figure (or HTML string) out; no Streamlit here."""

from __future__ import annotations

import html
import math

import plotly.graph_objects as go

SHADE = "255, 140, 0"  # orange, the usual colour of activation highlights
_LAYOUT = dict(height=320, margin=dict(l=10, r=10, t=40, b=10))


def _show(token: str) -> str:
    """Visible text for a token: byte-level BPE markers and whitespace made readable."""
    return token.replace("Ġ", " ").replace("Ċ", "↵").replace("\n", "↵").replace("\t", "⇥")


def shaded_tokens(tokens: list[str], acts: list[float], max_act: float,
                  center: int | None = None) -> str:
    """Tokens as HTML spans, background alpha ∝ act / max_act, activation on hover (title)."""
    scale = max_act if max_act and max_act > 0 else max((a for a in acts), default=1.0) or 1.0
    spans = []
    for i, (tok, act) in enumerate(zip(tokens, acts, strict=False)):
        act = float(act or 0.0)
        alpha = min(max(act / scale, 0.0), 1.0)
        style = f"background: rgba({SHADE}, {alpha:.2f}); white-space: pre; border-radius: 2px;"
        if i == center:
            style += " border-bottom: 2px solid #333;"
        spans.append(f'<span class="saebench-tok" title="{act:.4g}" style="{style}">'
                     f"{html.escape(_show(tok))}</span>")
    return ('<div class="saebench-ctx" style="font-family: monospace; line-height: 1.8;">'
            + "".join(spans) + "</div>")


def pareto(rows: list[dict], y: str, y_title: str) -> go.Figure:
    """L0 against one metric, one point per SAE (the sparsity/fidelity frontier)."""
    pts = [r for r in rows if r.get("l0") is not None and r.get(y) is not None]
    fig = go.Figure(go.Scatter(
        x=[r["l0"] for r in pts], y=[r[y] for r in pts], mode="markers+text",
        text=[r["sae"] for r in pts], textposition="top center", hovertemplate=(
            "%{text}<br>L0 %{x:.1f}<br>" + y_title + " %{y:.4f}<extra></extra>")))
    fig.update_layout(title=f"L0 vs {y_title}", xaxis_title="L0", yaxis_title=y_title,
                      **_LAYOUT)
    return fig


def training_curves(df, metric: str) -> go.Figure:
    """One line per SAE of a training-curve column against training tokens."""
    fig = go.Figure()
    for sae, part in df.groupby("sae", sort=True):
        fig.add_trace(go.Scatter(x=part["tokens"], y=part[metric], mode="lines", name=sae))
    fig.update_layout(title=f"{metric} during training", xaxis_title="training tokens",
                      yaxis_title=metric, **_LAYOUT)
    return fig


def activation_histogram(counts: list[int], max_act: float) -> go.Figure:
    """The index's histogram of nonzero activations: len(counts) equal bins over (0, max_act]."""
    n = max(len(counts), 1)
    width = (max_act or 1.0) / n
    fig = go.Figure(go.Bar(x=[(i + 0.5) * width for i in range(len(counts))], y=list(counts),
                           width=width, marker_color=f"rgb({SHADE})"))
    fig.update_layout(title="Activation histogram (nonzero)", xaxis_title="activation",
                      yaxis_title="count", bargap=0, **_LAYOUT)
    return fig


def logit_histogram(values: list[float]) -> go.Figure:
    """Histogram of the stored logit effects (top and bottom tokens)."""
    fig = go.Figure(go.Histogram(x=values, nbinsx=30, marker_color="steelblue"))
    fig.update_layout(title="Logit effects", xaxis_title="logit effect", yaxis_title="tokens",
                      **_LAYOUT)
    return fig


def density_histogram(density: list[float], dead: list[bool], dense: list[bool],
                      floor: float) -> go.Figure:
    """log10 density of every latent; dead latents sit at `floor`, dense ones in red."""
    def logd(d: float) -> float:
        return math.log10(d) if d and d > 0 else floor

    groups = {"alive": [], "dead": [], "dense": []}
    for d, is_dead, is_dense in zip(density, dead, dense, strict=True):
        groups["dead" if is_dead else "dense" if is_dense else "alive"].append(logd(d))
    colours = {"alive": "steelblue", "dead": "black", "dense": "crimson"}
    fig = go.Figure([go.Histogram(x=xs, name=f"{name} ({len(xs)})", marker_color=colours[name],
                                  xbins=dict(size=0.1)) for name, xs in groups.items()])
    fig.update_layout(barmode="overlay", title="Feature density (log10 fraction of tokens)",
                      xaxis_title="log10 density", yaxis_title="latents", **_LAYOUT)
    return fig
