"""Compare SAEs: which features two SAEs at one hook share (saebench.compare), and which not."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pandas as pd
import streamlit as st

from app import common, dictionary_charts
from app.data import Catalog
from saebench.compare import THRESHOLD, cached, comparable, compare, share_matrix
from saebench.top_tokens import top_tokens

MAX_MATRIX = 8  # 28 pairs of about 2 s each when none is cached yet
ws, sae = common.workspace(), common.sae()
st.title("Compare SAEs")


@st.cache_data(show_spinner=False, max_entries=16)
def _tokens(workspace: str, name: str, stamp: int) -> dict[int, list[str]]:
    """Top tokens of every latent; `stamp` (the contexts file's mtime) invalidates."""
    return top_tokens(workspace, name)


def _stamp(name: str) -> int:
    path = Path(ws) / "saes" / name / "index" / "contexts.parquet"
    return path.stat().st_mtime_ns if path.exists() else 0


def _link(name: str, latent: int) -> str:
    # A relative deep link (app/main.py `_init_state`): opens the feature page in a new tab.
    return "feature?" + urlencode({"sae": name, "latent": int(latent)})


def _open(name: str, latent: int) -> None:
    """Button callback: show `latent` of SAE `name` (the sidebar follows) on the feature page."""
    st.session_state["sae"] = name
    common.go_to(latent)
    st.session_state["cmp_open"] = True


others = comparable(ws, sae)
if not others:
    st.info(f"No other SAE in this workspace reads the same model, hook and d_in as {sae}; "
            "train another one there to compare.")
    st.stop()
cols = st.columns([3, 3, 2])
cols[0].markdown(f"**A**: `{sae}` (the SAE picked in the sidebar)")
b = cols[1].selectbox("B: an SAE at the same hook", others, key="cmp_b")
threshold = cols[2].slider("Shared if |cos| >", 0.0, 1.0, THRESHOLD, 0.05, key="cmp_threshold")

if cached(ws, sae, b) is None:
    with st.spinner("Matching decoders (Hungarian on |cos|; about 2 s for 4608 latents, "
                    "stored for next time)..."):
        m = compare(ws, sae, b)
else:
    m = compare(ws, sae, b)
tok_a, tok_b = _tokens(str(ws), sae, _stamp(sae)), _tokens(str(ws), b, _stamp(b))
share_a, share_b = m.shared(threshold)
met = st.columns(4)
met[0].metric(f"Shared (|cos| > {threshold:g})", f"{m.n_shared(threshold):,}")
met[1].metric("of A's latents", f"{share_a:.1%}")
met[2].metric("of B's latents", f"{share_b:.1%}")
met[3].metric("Median matched |cos|", f"{np.median(m.abs_cos):.3f}")
st.caption("One-to-one matching of decoder rows by the Hungarian algorithm on |cos| "
           "(Paulo & Belrose 2025). For scale: two random dictionaries at d_in 576 match with "
           "median |cos| about 0.15 and share none above 0.5.")
same = float(np.mean(m.latent_a == m.latent_b)) if len(m.cos) else 0.0
if same > 0.5:
    # Independent inits pair latents with equal indices by chance only (1 in d_sae).
    st.warning(f"{same:.0%} of the pairs join latents with the same index: these SAEs most "
               "likely share their initialisation, so the shared share partly measures how "
               "little training moved the decoders, not agreement between the methods.")
st.plotly_chart(dictionary_charts.matched_cos_histogram(m.abs_cos, threshold), key="cmp_hist")

# --- matched pairs ----------------------------------------------------------------------
st.subheader("Matched pairs")
show = st.radio("Show", ["shared", "not shared", "all"], horizontal=True, key="cmp_show")
keep = {"shared": m.abs_cos > threshold, "not shared": m.abs_cos <= threshold,
        "all": np.ones(len(m.cos), bool)}[show]
order = np.argsort(-m.abs_cos[keep], kind="stable")
la_all, lb_all = m.latent_a[keep][order], m.latent_b[keep][order]
pairs = pd.DataFrame({
    "A": la_all, "A top tokens": [dictionary_charts.tokens_text(tok_a.get(int(i)))
                                  for i in la_all],
    "B": lb_all, "B top tokens": [dictionary_charts.tokens_text(tok_b.get(int(i)))
                                  for i in lb_all],
    "|cos|": m.abs_cos[keep][order].round(3),
    "sign": np.where(m.cos[keep][order] < 0, "−", "+")})
pairs["open A"] = [_link(sae, i) for i in pairs["A"]]
pairs["open B"] = [_link(b, i) for i in pairs["B"]]
link = st.column_config.LinkColumn
st.dataframe(pairs, hide_index=True, height=360, key="cmp_pairs", column_config={
    "|cos|": st.column_config.NumberColumn(format="%.3f"),
    "open A": link(display_text="feature A"), "open B": link(display_text="feature B")})
if not pairs.empty:
    pick = st.selectbox("Open a pair here", range(min(len(pairs), 500)), key="cmp_pick",
                        format_func=lambda r: f"A #{pairs['A'].iloc[r]} ↔ B "
                        f"#{pairs['B'].iloc[r]}  (|cos| {pairs['|cos|'].iloc[r]:.3f})")
    btn = st.columns([1, 1, 4])
    la, lb = int(pairs["A"].iloc[pick]), int(pairs["B"].iloc[pick])
    btn[0].button(f"Open A #{la}", key="cmp_open_a", on_click=_open, args=(sae, la))
    btn[1].button(f"Open B #{lb}", key="cmp_open_b", on_click=_open, args=(b, lb))
if st.session_state.pop("cmp_open", False):
    st.switch_page(common.FEATURE_PAGE)

# --- unmatched --------------------------------------------------------------------------
st.subheader(f"Latents without a partner above {threshold:g}")
best = {"a": dict(zip(m.latent_a.tolist(), m.abs_cos.tolist(), strict=True)),
        "b": dict(zip(m.latent_b.tolist(), m.abs_cos.tolist(), strict=True))}
with Catalog(ws) as db:
    dens = {name: db.densities(name) for name in (sae, b)}
left, right = st.columns(2)
for col, side, name, toks in ((left, "a", sae, tok_a), (right, "b", b, tok_b)):
    lat = m.unmatched(side, threshold)
    col.markdown(f"**{side.upper()}** `{name}`: {len(lat):,} latents")
    df = dens[name]
    dead = set(df.loc[df["dead"], "latent"].tolist()) if df is not None else set()
    col.dataframe(pd.DataFrame({
        "latent": lat, "top tokens": [dictionary_charts.tokens_text(toks.get(int(i)))
                                      for i in lat],
        "matched |cos|": [round(best[side].get(int(i), float("nan")), 3) for i in lat],
        "dead": [int(i) in dead for i in lat], "open": [_link(name, i) for i in lat]}),
        hide_index=True, height=300, key=f"cmp_unmatched_{side}",
        column_config={"open": link(display_text="feature")})

# --- all SAEs at this hook --------------------------------------------------------------
group = sorted([sae, *others])
if len(group) >= 3:
    st.subheader("Every pair at this hook")
    chosen = st.multiselect("SAEs", group, default=group[:MAX_MATRIX], key="cmp_matrix",
                            max_selections=MAX_MATRIX)
    if len(chosen) >= 2:
        matrix = share_matrix(ws, chosen, threshold, compute=False)
        missing = int(np.isnan(matrix).sum()) // 2
        if missing and st.button(f"Match the {missing} missing pairs (about 2 s each)",
                                 key="cmp_fill"):
            with st.spinner("Matching..."):
                matrix = share_matrix(ws, chosen, threshold, compute=True)
        st.plotly_chart(dictionary_charts.share_heatmap(chosen, matrix, threshold),
                        key="cmp_heatmap")
