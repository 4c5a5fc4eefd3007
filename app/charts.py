"""Pure chart builders: data in, plotly figure (or HTML string) out; no Streamlit here."""

from __future__ import annotations

import html
import math

import plotly.graph_objects as go

SHADE = "255, 140, 0"  # orange, the usual colour of activation highlights
_LAYOUT = dict(height=320, margin=dict(l=10, r=10, t=40, b=10))
# Distinct hues per architecture (Streamlit's theme would draw them in shades of one blue).
ARCH_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                "#17becf")


def _show(token: str) -> str:
    """Visible text for a token: byte-level BPE markers and whitespace made readable."""
    return token.replace("Ġ", " ").replace("Ċ", "↵").replace("\n", "↵").replace("\t", "⇥")


def _token_title(act: float, loss: float | None) -> str:
    """The hover text of one token: its activation, then the ablation's loss effect if any."""
    if loss is None or loss != loss:  # none stored, or NaN (no next token to predict)
        return f"{act:.4g}"
    return f"{act:.4g} · ablating the latent: next-token loss {loss:+.3g}"


def shaded_tokens(tokens: list[str], acts: list[float], max_act: float,
                  center: int | None = None, loss: list[float | None] | None = None) -> str:
    """Tokens as HTML spans, background alpha ∝ act / max_act; on hover (title) the activation
    and, given `loss` (saebench/index/loss_effects.py), the change in next-token loss.

    Each token is an inline-block, so a context wraps between tokens inside its column
    instead of running under its neighbours (whitespace inside a token stays visible).
    """
    scale = max_act if max_act and max_act > 0 else max((a for a in acts), default=1.0) or 1.0
    loss = list(loss) if loss is not None else [None] * len(tokens)
    spans = []
    for i, (tok, act, d) in enumerate(zip(tokens, acts, loss, strict=False)):
        act = float(act or 0.0)
        alpha = min(max(act / scale, 0.0), 1.0)
        style = (f"background: rgba({SHADE}, {alpha:.2f}); white-space: pre-wrap; "
                 "display: inline-block; max-width: 100%; overflow-wrap: anywhere; "
                 "border-radius: 2px;")
        if i == center:
            style += " border-bottom: 2px solid #333;"
        data = "" if d is None or d != d else f' data-loss="{float(d):.4g}"'
        spans.append(f'<span class="saebench-tok" title="{html.escape(_token_title(act, d))}"'
                     f'{data} style="{style}">{html.escape(_show(tok))}</span>')
    return ('<div class="saebench-ctx" style="font-family: monospace; line-height: 1.8; '
            'max-width: 100%; overflow-wrap: anywhere; margin-bottom: 0.4em; '
            'padding-bottom: 0.3em; border-bottom: 1px dashed #ddd;">' + "".join(spans)
            + "</div>")


def metric_vs_l0(points: list[dict], y_title: str, log_x: bool = False) -> go.Figure:
    """One eval metric against L0, one point per SAE and one colour (trace) per architecture.

    `points`: dicts with sae, arch, l0 and value. SAEBench draws every metric this way: the
    sparsity/quality frontier, architectures compared at equal L0.
    """
    fig = go.Figure()
    for i, arch in enumerate(sorted({str(p["arch"]) for p in points})):
        part = [p for p in points if str(p["arch"]) == arch]
        fig.add_trace(go.Scatter(
            x=[p["l0"] for p in part], y=[p["value"] for p in part], mode="markers",
            name=arch, text=[p["sae"] for p in part],
            marker=dict(size=10, color=ARCH_COLOURS[i % len(ARCH_COLOURS)]),
            hovertemplate="%{text}<br>L0 %{x:.1f}<br>" + y_title + " %{y:.4g}<extra>"
            + arch + "</extra>"))
    fig.update_layout(title=f"{y_title} against L0", xaxis_title="L0", yaxis_title=y_title,
                      xaxis_type="log" if log_x else "linear", legend_title="architecture",
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
