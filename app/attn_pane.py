"""Feature-page pane for SAEs at `blocks.L.attn.hook_z` (Kissane et al. 2024, arXiv
2406.17759): the latent's share of each head (from the index, a small bar chart) and, only
when asked, the direct feature attribution of its top contexts to their source tokens (runs
the model once, so it sits behind a button and is cached per latent)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from app.charts import _show, shaded_tokens

N_DFA_CONTEXTS = 5
_POS, _NEG = "220, 50, 32", "40, 100, 220"  # red: pushes the latent up; blue: down


def hook_of(workspace: Path, sae: str) -> str:
    """The SAE's hook name from its cfg.json ('' when unreadable)."""
    try:
        cfg = json.loads((Path(workspace) / "saes" / sae / "cfg.json").read_text())
    except (OSError, ValueError):
        return ""
    return (cfg.get("metadata") or {}).get("hook_name") or cfg.get("hook_name") or ""


def is_attn(workspace: Path, sae: str) -> bool:
    from saebench.attn import hook_z_layer  # torch-free

    return hook_z_layer(hook_of(workspace, sae)) is not None


def read_shares(workspace: Path, sae: str, latent: int) -> list[float]:
    """The latent's head shares, in head order; [] when the index has none. One small
    Parquet file read with a row filter (sorted by latent), no catalog connection."""
    import pyarrow.parquet as pq

    from saebench.index import schema

    path = Path(workspace) / "saes" / sae / schema.INDEX_DIR / schema.HEADS_FILE
    if not path.is_file():
        return []
    rows = pq.read_table(path, columns=["head", "share"],
                         filters=[("latent", "=", int(latent))]).to_pylist()
    return [r["share"] for r in sorted(rows, key=lambda r: r["head"])]


def shares_chart(shares: list[float]) -> go.Figure:
    fig = go.Figure(go.Bar(x=[f"H{h}" for h in range(len(shares))], y=shares,
                           marker_color="rgb(255, 140, 0)", name="Head share"))
    fig.update_layout(height=220, margin=dict(l=10, r=10, t=30, b=10),
                      title="Head share of the decoder row (‖W_dec block‖²)",
                      yaxis=dict(range=[0, 1], title="share"))
    return fig


def dfa_strip(tokens: list[str], dfa: list[float | None], center: int) -> str:
    """Tokens shaded by their DFA (red +, blue −, alpha ∝ |dfa| / max |dfa|); grey after
    the destination, which attention cannot read."""
    scale = max((abs(d) for d in dfa if d is not None), default=0.0) or 1.0
    spans = []
    for i, (tok, d) in enumerate(zip(tokens, dfa, strict=False)):
        if d is None:
            style, title = "color: #aaa;", "after the destination"
        else:
            rgb = _POS if d >= 0 else _NEG
            style, title = f"background: rgba({rgb}, {min(abs(d) / scale, 1):.2f});", f"{d:+.4g}"
        if i == center:
            style += " border-bottom: 2px solid #333;"
        spans.append(f'<span class="saebench-dfa" title="{title}" style="{style} '
                     f'white-space: pre-wrap; display: inline-block; border-radius: 2px;">'
                     f"{html.escape(_show(tok))}</span>")
    return ('<div style="font-family: monospace; line-height: 1.8; margin-bottom: 0.2em;">'
            + "".join(spans) + "</div>")


@st.cache_data(show_spinner="Running the model on the top contexts...", max_entries=32)
def _dfa(sae_dir: str, latent: int, stamp: int) -> list[dict]:
    from saebench.attn.top_contexts import top_context_dfa

    return top_context_dfa(Path(sae_dir), latent, N_DFA_CONTEXTS)


def _render_dfa(workspace: Path, sae: str, latent: int, contexts: list[dict],
                max_act: float) -> None:
    folder = Path(workspace) / "saes" / sae
    key = f"dfa_{sae}_{latent}"
    if st.button("Compute DFA for the top contexts", key=f"dfa_btn_{sae}_{latent}"):
        from store.errors import UserError

        stamp = (folder / "sae_weights.safetensors").stat().st_mtime_ns
        try:
            st.session_state[key] = _dfa(str(folder), int(latent), stamp)
        except UserError as err:
            st.error(str(err))
    rows = st.session_state.get(key)
    if rows is None:
        return
    vocab = {t: s for c in contexts for t, s in zip(c["token_ids"], c["tokens"], strict=False)}
    for r in rows:
        words = [vocab.get(t, f"<{t}>") for t in r["token_ids"]]
        acts = next((c["acts"] for c in contexts if c["kind"] == "top"
                     and c["rank"] == r["rank"]), [0.0] * len(words))
        st.html(shaded_tokens(words, acts, max_act, r["center"]) +
                dfa_strip(words, r["dfa"], r["center"]))
        st.caption(f"#{r['rank']}: act {r['act']:.3g} · pre-activation {r['pre']:.3g} = "
                   f"Σ DFA {r['pre'] - r['bias']:+.3g} (of which the sources before this "
                   f"window {r['before']:+.3g}) + bias {r['bias']:+.3g}")


def render(workspace: Path, sae: str, latent: int, contexts: list[dict],
           max_act: float) -> None:
    """The pane: head shares now; source-token DFA behind a button."""
    st.subheader("Attention heads")
    shares = read_shares(workspace, sae, latent)
    if shares:
        st.plotly_chart(shares_chart(shares), key="head_attribution")
    else:
        st.caption("No head attribution in this index (re-run `saebench index`).")
    with st.expander("Direct feature attribution by source token (runs the model)"):
        st.caption("Each top context (activation shading), then each source token's "
                   "contribution to the pre-activation at the underlined token: attention "
                   "weight × value · encoder, summed over heads (red raises it, blue lowers "
                   "it). The bias terms are not attributed.")
        _render_dfa(workspace, sae, latent, contexts, max_act)
