"""Search: features by label text, by a token they fire on, or sorted by density / max act."""

from __future__ import annotations

import streamlit as st

from app import common
from app.data import ORDERS, Catalog

ws, sae = common.workspace(), common.sae()
st.title("Search features")
by_label, by_token, by_stat = st.tabs(["By label", "By token", "By density / max activation"])

with Catalog(ws) as db:
    if db.n_latents(sae) == 0:
        common.no_index()
    with by_label:
        text = st.text_input("Label contains", key="q_label")
        if text:
            hits = db.search_labels(text)
            st.caption(f"{len(hits)} labelled features match")
            for i, h in enumerate(hits[:100]):
                if h["sae"] == sae:
                    common.open_feature(h["latent"], f"#{h['latent']} — {h['label']}",
                                        key=f"lab_{i}")
                else:
                    st.write(f"{h['sae']} #{h['latent']} — {h['label']} (select that SAE)")
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
