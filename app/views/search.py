"""Search: latents ranked by text relevance, by a token they fire on, or by density / max act."""

from __future__ import annotations

import zlib
from urllib.parse import urlencode

import pandas as pd
import streamlit as st

from app import common
from app.data import ORDERS, Catalog
from saebench.search import search

ws, sae = common.workspace(), common.sae()
if st.session_state.pop("_search_open", False):  # set by _open below, on the previous run
    st.switch_page(common.FEATURE_PAGE)
st.title("Search features")
by_text, by_token, by_stat = st.tabs(["By text", "By token", "By density / max activation"])


def _open(name: str, latent: int) -> None:
    """Callback: select the hit's SAE and latent (a callback may set the sidebar's widget)."""
    st.session_state["sae"] = name
    common.go_to(latent)
    st.session_state["_search_open"] = True


def _link(name: str, latent: int) -> str:
    # Relative to this page, so it also works under a server base path; a new tab is a new
    # session, which main.py's deep-link handling starts on this SAE and latent.
    return "feature?" + urlencode({"sae": name, "latent": latent})


with by_text:
    left, right = st.columns([3, 1])
    text = left.text_input("Words in a latent's explanation, label or top tokens", key="q_text",
                           placeholder="e.g. plural nouns, apple, ',' (punctuation alone)")
    scope = right.radio("Search in", ["this SAE", "all SAEs"], key="q_scope", horizontal=True)
    if text:
        hits = search(ws, text, sae=None if scope == "all SAEs" else sae, limit=100)
        where = f"`{sae}`" if scope == "this SAE" else "all SAEs"
        st.caption(f"{len(hits)} latents of {where} match, ranked by BM25 over their labels, "
                   "autointerp explanations and top tokens (run `saebench eval --evals "
                   "autointerp` for explanations, `saebench index` for top tokens).")
        if hits:
            st.dataframe(pd.DataFrame([{
                "SAE": h.sae, "latent": h.latent, "score": round(h.score, 3),
                "explanation": h.explanation, "label": h.label,
                "top tokens": " · ".join(repr(t.replace("Ġ", " ")) for t in h.top_tokens),
                "feature": _link(h.sae, h.latent)} for h in hits]),
                hide_index=True, key="q_hits",
                column_config={"feature": st.column_config.LinkColumn(
                    "feature", display_text="open ↗", help="The feature page, in a new tab"),
                    "score": st.column_config.NumberColumn(format="%.3f")})
            pick, go = st.columns([3, 1], vertical_alignment="bottom")
            names = {f"{h.sae} #{h.latent}": h for h in hits}
            # Keyed by the results, so that new results start on the best hit.
            key = f"q_pick_{zlib.crc32(' '.join(names).encode()):08x}"
            h = names[pick.selectbox("Open in this tab", list(names), key=key)]
            go.button("Open", key="q_open", on_click=_open, args=(h.sae, h.latent))

with Catalog(ws) as db:
    if db.n_latents(sae) == 0:
        common.no_index()
    with by_token:
        token = st.text_input("Token (its text, or its id)", key="q_token")
        if token:
            hits = db.features_on_token(sae, token)
            labels = db.labels(sae, [h["latent"] for h in hits])
            st.caption(f"{len(hits)} features have top or interval contexts on this token")
            for h in hits:
                common.open_feature(
                    h["latent"], f"#{h['latent']}  max {h['max_act']:.3g}  in {h['contexts']} "
                    f"contexts  {labels.get(h['latent'], '')}", key=f"tok_{h['latent']}")
    with by_stat:
        order = st.radio("Sort by", list(ORDERS), horizontal=True, key="q_order",
                         format_func={"density": "density (densest first)",
                                      "max_act": "max activation",
                                      "rarest": "density (rarest alive first)"}.get)
        hits = db.features_by(sae, order, limit=25)
        labels = db.labels(sae, [h["latent"] for h in hits])
        for h in hits:
            common.open_feature(
                h["latent"], f"#{h['latent']}  density {h['density']:.2e}  max "
                f"{h['max_act']:.3g}  {labels.get(h['latent'], '')}", key=f"stat_{h['latent']}")
