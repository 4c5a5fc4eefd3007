"""Feature page: contexts (with loss effects on hover), histograms, logit effects, neighbours
with their top tokens and explanations, the nearest latents of the other SAEs at this hook,
a label, and the whole card as a JSON or HTML download."""

from __future__ import annotations

import random
import re

import pandas as pd
import streamlit as st

from app import attn_pane, charts, common, explanations, feature_card
from app.data import Catalog, save_label

ws, sae = common.workspace(), common.sae()


def _random(db_ws, name: str) -> None:
    with Catalog(db_ws) as db:
        pick = db.random_alive(name)
    common.go_to(pick if pick is not None else random.randrange(max(n, 1)))


def _save(name: str, latent: int) -> None:
    save_label(ws, name, latent, st.session_state.get(f"label_{name}_{latent}", ""))
    st.session_state["label_saved"] = True


def _open(name: str, latent: int) -> None:
    """Button callback: show `latent` of SAE `name` here (the sidebar's SAE follows)."""
    st.session_state["sae"] = name
    common.go_to(latent)


def _compact(count: int) -> str:
    """A count short enough for a metric tile: 3,688 · 248k · 12.3M."""
    for above, unit, size in ((1e9, "B", 1e9), (1e6, "M", 1e6), (1e4, "k", 1e3)):
        if count >= above:
            return f"{count / size:.3g}{unit}"
    return f"{count:,}"


with Catalog(ws) as db:
    n = db.n_latents(sae)
    if n == 0:
        common.no_index()
        st.stop()
    latent = min(max(common.latent(), 0), n - 1)
    st.session_state["latent"] = latent
    st.query_params.update({"sae": sae, "latent": str(latent)})
    card = feature_card.gather(db, ws, sae, latent)

# --- navigation -------------------------------------------------------------------------
if not 0 <= st.session_state.get("jump_to", -1) < n:
    st.session_state["jump_to"] = latent
nav = st.columns([1, 1, 1.4, 2])
nav[0].button("◀ Previous", on_click=common.go_to, args=(max(latent - 1, 0),), key="prev")
nav[1].button("Next ▶", on_click=common.go_to, args=(min(latent + 1, n - 1),), key="next")
nav[2].button("Random alive", on_click=_random, args=(ws, sae), key="random")
nav[3].number_input("Jump to latent", 0, n - 1, step=1, key="jump_to",
                    on_change=lambda: common.go_to(st.session_state["jump_to"]))

if card is None:
    st.warning(f"Latent {latent} is not in the index of {sae}.")
    st.stop()
feat, label, expl, status = card["stats"], card["label"], card["explanation"], card["status"]

# --- header: density, badge, export -----------------------------------------------------
badge = {"dead": ":gray-badge[dead]", "dense": ":red-badge[dense]",
         "alive": ":green-badge[alive]"}[status]
st.markdown(f"## Latent {latent} {badge}")
st.caption(f"{sae} · label: {label or '(none)'}")
if expl:
    st.caption(f"Autointerp: {explanations.describe(expl)}")
m = st.columns(4)
m[0].metric("Density", f"{feat['density']:.3e}")
m[1].metric("Fires", _compact(feat["fires"]),
            help=f"{feat['fires']:,} of {feat['tokens_seen']:,} indexed tokens")
m[2].metric("Max activation", f"{feat['max_act']:.3f}")
m[3].metric("Mean activation", f"{feat['mean_act'] or 0.0:.3f}")
st.caption(f"Fires on {feat['fires']:,} of {feat['tokens_seen']:,} indexed tokens.")

with st.form("label_form", border=False):
    cols = st.columns([4, 1])
    cols[0].text_input("Label", value=label, key=f"label_{sae}_{latent}")
    cols[1].form_submit_button("Save label", on_click=_save, args=(sae, latent))
if st.session_state.pop("label_saved", False):
    st.success("Label saved.")
ex = st.columns([1, 1, 3])
# Callables: the files are made on click, not on every render of the page.
ex[0].download_button("Export card (JSON)", lambda: feature_card.to_json(card),
                      key="export_json", file_name=f"{sae}-latent{latent}.json",
                      mime="application/json", on_click="ignore")
ex[1].download_button("Export card (HTML)", lambda: feature_card.to_html(card),
                      key="export_html", file_name=f"{sae}-latent{latent}.html",
                      mime="text/html", on_click="ignore")


def _context_html(c: dict) -> str:
    return charts.shaded_tokens(c["tokens"], c["acts"], feat["max_act"], c["center"],
                                c["loss_effects"])


# --- contexts -----------------------------------------------------------------------------
left, right = st.columns([3, 2])
with left:
    st.subheader("Top activations")
    top = [c for c in card["contexts"] if c["kind"] == "top"]
    if top:
        with_loss = any(c["loss_effects"] for c in top)
        st.caption("Hover a token for its activation" + (
            " and the change in next-token loss when this latent is ablated (+: it helped)."
            if with_loss else "; this index has no loss effects (`saebench index "
            "--loss-effects`)."))
        st.html("".join(_context_html(c) for c in top))
    else:
        st.info("No top contexts stored for this latent.")
    st.subheader("Interval samples")
    interval = [c for c in card["contexts"] if c["kind"] == "interval"]
    for bucket in sorted({c["bucket"] for c in interval}, reverse=True):
        rows = [c for c in interval if c["bucket"] == bucket]
        with st.expander(f"Bucket {bucket} (acts ≈ {rows[0]['act']:.3g})", expanded=False):
            st.html("".join(_context_html(c) for c in rows))
with right:
    st.plotly_chart(charts.activation_histogram(feat["hist_counts"] or [], feat["max_act"]),
                    key="act_hist")

# --- attention-output SAEs: head shares; source-token DFA on request (app/attn_pane.py) ---
if attn_pane.is_attn(ws, sae):
    attn_pane.render(ws, sae, latent, card["contexts"], feat["max_act"])

# --- logits -------------------------------------------------------------------------------
st.subheader("Logit effects")
lcols = st.columns(3)
for col, kind, title in ((lcols[0], "promoted", "Promoted"), (lcols[1], "suppressed",
                                                                 "Suppressed")):
    part = card["logits"][kind]
    col.markdown(f"**{title} tokens**")
    if part:
        col.table(pd.DataFrame({"token": [charts._show(r["token"]) for r in part],
                                "logit": [round(r["value"], 4) for r in part]}))
    else:
        col.caption("none stored")
values = [r["value"] for part in card["logits"].values() for r in part]
if values:
    lcols[2].plotly_chart(charts.logit_histogram(values), key="logit_hist")


def _meaning(r: dict) -> str:
    """A latent's top tokens, then its label or explanation: the caption under its button
    (a button's label never wraps, so long text there was clipped)."""
    toks = "  ".join(f"'{charts._show(t)}'" for t in r["top_tokens"]) or "(no contexts)"
    note = r["label"] or r["explanation"]
    note = note if len(note) <= 120 else note[:117] + "…"
    return _md(toks + (f" · {note}" if note else ""))


def _md(text: str) -> str:
    """Text shown literally by st.caption/markdown (tokens can be '*', '_', '$', ...)."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|$<>~])", r"\\\1", text)


def _help(r: dict) -> str | None:
    return " — ".join(x for x in (r["label"], r["explanation"]) if x) or None


# --- neighbours ---------------------------------------------------------------------------
st.subheader("Neighbours")
ncols = st.columns(2)
for col, kind, title in ((ncols[0], "decoder", "Decoder cosine"),
                         (ncols[1], "coactivation", "Co-activation")):
    col.markdown(f"**{title}**")
    part = card["neighbours"][kind]
    if not part:
        col.caption("none stored")
    for i, r in enumerate(part):
        col.button(f"#{r['latent']} · {r['value']:.3f}", key=f"nb_{kind}_{i}",
                   help=_help(r), on_click=common.go_to, args=(r["latent"],))
        col.caption(_meaning(r))

# --- the same hook in other SAEs ----------------------------------------------------------
st.subheader("Nearest latents in the other SAEs at this hook")
if not card["other_saes"]:
    st.caption("No other SAE in this workspace reads the same model, hook and d_in.")
else:
    st.caption("Decoder rows of each other SAE with the largest |cos| to this latent's row "
               "(a negative cos: the same direction, flipped).")
    ocols = st.columns(min(len(card["other_saes"]), 3))
    for i, (other, rows) in enumerate(card["other_saes"].items()):
        col = ocols[i % len(ocols)]
        col.markdown(f"**{other}**")
        for j, r in enumerate(rows):
            col.button(f"#{r['latent']} · cos {r['value']:+.3f}", key=f"x_{other}_{j}",
                       help=_help(r), on_click=_open, args=(other, r["latent"]))
            col.caption(_meaning(r))
