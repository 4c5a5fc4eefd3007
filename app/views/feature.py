"""Feature page: contexts, histograms, logit effects, neighbours, density and a label."""

from __future__ import annotations

import random

import pandas as pd
import streamlit as st

from app import charts, common
from app.data import Catalog, save_label

ws, sae = common.workspace(), common.sae()


def _random(db_ws, name: str) -> None:
    with Catalog(db_ws) as db:
        pick = db.random_alive(name)
    common.go_to(pick if pick is not None else random.randrange(max(n, 1)))


def _save(name: str, latent: int) -> None:
    save_label(ws, name, latent, st.session_state.get(f"label_{name}_{latent}", ""))
    st.session_state["label_saved"] = True


with Catalog(ws) as db:
    n = db.n_latents(sae)
    if n == 0:
        common.no_index()
        st.stop()
    latent = min(max(common.latent(), 0), n - 1)
    st.session_state["latent"] = latent
    st.query_params.update({"sae": sae, "latent": str(latent)})
    feat = db.feature(sae, latent)
    ctxs = db.contexts(sae, latent)
    logits = db.logits(sae, latent)
    nbrs = db.neighbours(sae, latent)
    ids = [t for c in ctxs for t in c["tokens"]] + [r["token_id"] for r in logits]
    vocab = db.token_strings(sae, ids)
    labels = db.labels(sae, [latent] + [r["other"] for r in nbrs])

# --- navigation -------------------------------------------------------------------------
if not 0 <= st.session_state.get("jump_to", -1) < n:
    st.session_state["jump_to"] = latent
nav = st.columns([1, 1, 1.4, 2])
nav[0].button("◀ Previous", on_click=common.go_to, args=(max(latent - 1, 0),), key="prev")
nav[1].button("Next ▶", on_click=common.go_to, args=(min(latent + 1, n - 1),), key="next")
nav[2].button("Random alive", on_click=_random, args=(ws, sae), key="random")
nav[3].number_input("Jump to latent", 0, n - 1, step=1, key="jump_to",
                    on_change=lambda: common.go_to(st.session_state["jump_to"]))

# --- header: density and badge ----------------------------------------------------------
if feat is None:
    st.warning(f"Latent {latent} is not in the index of {sae}.")
    st.stop()
status = "dead" if feat["dead"] else "dense" if feat["dense"] else "alive"
badge = {"dead": ":gray-badge[dead]", "dense": ":red-badge[dense]",
         "alive": ":green-badge[alive]"}[status]
st.markdown(f"## Latent {latent} {badge}")
st.caption(f"{sae} · label: {labels.get(latent, '(none)')}")
m = st.columns(4)
m[0].metric("Density", f"{feat['density']:.3e}")
m[1].metric("Fires", f"{feat['fires']:,} / {feat['tokens_seen']:,}")
m[2].metric("Max activation", f"{feat['max_act']:.3f}")
m[3].metric("Mean activation", f"{feat['mean_act']:.3f}")

with st.form("label_form", border=False):
    cols = st.columns([4, 1])
    cols[0].text_input("Label", value=labels.get(latent, ""), key=f"label_{sae}_{latent}")
    cols[1].form_submit_button("Save label", on_click=_save, args=(sae, latent))
if st.session_state.pop("label_saved", False):
    st.success("Label saved.")


def _context_html(c: dict) -> str:
    toks = [vocab.get(t, f"<{t}>") for t in c["tokens"]]
    return charts.shaded_tokens(toks, c["acts"], feat["max_act"], c["center"])


# --- contexts -----------------------------------------------------------------------------
left, right = st.columns([3, 2])
with left:
    st.subheader("Top activations")
    top = [c for c in ctxs if c["kind"] == "top"]
    if top:
        st.html("".join(_context_html(c) for c in top))
    else:
        st.info("No top contexts stored for this latent.")
    st.subheader("Interval samples")
    for bucket in sorted({c["bucket"] for c in ctxs if c["kind"] == "interval"}, reverse=True):
        rows = [c for c in ctxs if c["kind"] == "interval" and c["bucket"] == bucket]
        with st.expander(f"Bucket {bucket} (acts ≈ {rows[0]['act']:.3g})", expanded=False):
            st.html("".join(_context_html(c) for c in rows))
with right:
    st.plotly_chart(charts.activation_histogram(feat["hist_counts"] or [], feat["max_act"]),
                    key="act_hist")

# --- logits -------------------------------------------------------------------------------
st.subheader("Logit effects")
lcols = st.columns(3)
for col, kind, title in ((lcols[0], "top", "Promoted"), (lcols[1], "bottom", "Suppressed")):
    part = [r for r in logits if r["kind"] == kind]
    col.markdown(f"**{title} tokens**")
    if part:
        col.table(pd.DataFrame({"token": [charts._show(vocab.get(r["token_id"], "?"))
                                          for r in part],
                                "logit": [round(r["value"], 4) for r in part]}))
    else:
        col.caption("none stored")
if logits:
    lcols[2].plotly_chart(charts.logit_histogram([r["value"] for r in logits]), key="logit_hist")

# --- neighbours ---------------------------------------------------------------------------
st.subheader("Neighbours")
ncols = st.columns(2)
for col, kind, title in ((ncols[0], "decoder", "Decoder cosine"),
                         (ncols[1], "coactivation", "Co-activation")):
    col.markdown(f"**{title}**")
    part = [r for r in nbrs if r["kind"] == kind]
    if not part:
        col.caption("none stored")
    for r in part:
        text = f"#{r['other']}  ({r['value']:.3f})  {labels.get(r['other'], '')}"
        col.button(text, key=f"nb_{kind}_{r['rank']}", on_click=common.go_to,
                   args=(r["other"],))
