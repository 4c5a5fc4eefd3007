"""Dead and dense latents: the density histogram with both highlighted, and lists of them."""

from __future__ import annotations

import math

import streamlit as st

from app import charts, common
from app.data import Catalog

ws, sae = common.workspace(), common.sae()
st.title("Dead and dense latents")

with Catalog(ws) as db:
    df = db.densities(sae)
    if df is None or df.empty:
        common.no_index()
        st.stop()
    labels = db.labels(sae)

window = int(df["tokens_seen"].max())
dead, dense = df[df["dead"]], df[df["dense"]]
very_dense = df[df["density"] > 0.10]
m = st.columns(4)
m[0].metric("Latents", len(df))
m[1].metric("Dead", f"{len(dead)} ({100 * len(dead) / len(df):.1f}%)")
m[2].metric("Dense (> 1%)", len(dense))
m[3].metric("Dense (> 10%)", len(very_dense))
st.caption(f"Dead: no activation above 0 in a window of {window:,} tokens.")

floor = math.log10(1 / max(window, 1)) - 0.5
st.plotly_chart(charts.density_histogram(df["density"].tolist(), df["dead"].tolist(),
                                         df["dense"].tolist(), floor), key="density_hist")


def _listing(part, title: str, key: str) -> None:
    st.subheader(f"{title} ({len(part)})")
    if part.empty:
        st.caption("none")
        return
    shown = part.assign(label=[labels.get(i, "") for i in part["latent"]])
    st.dataframe(shown[["latent", "density", "fires", "max_act", "label"]], hide_index=True,
                 height=240)
    pick = st.selectbox("Open latent", part["latent"].tolist(), key=f"pick_{key}")
    common.open_feature(pick, f"Open #{pick}", key=f"open_{key}")


left, right = st.columns(2)
with left:
    _listing(dead, "Dead", "dead")
with right:
    _listing(dense.sort_values("density", ascending=False), "Dense", "dense")
