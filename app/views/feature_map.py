"""Feature map: the SAE's decoder directions in 2-D (UMAP, saebench.feature_map); click to open."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from app import common, dictionary_charts
from app.data import Catalog
from saebench.explanations import read_explanations
from saebench.feature_map import build_feature_map, read_feature_map
from saebench.top_tokens import top_tokens

ws, sae = common.workspace(), common.sae()
folder = Path(ws) / "saes" / sae
st.title("Feature map")


table = read_feature_map(folder)
if table is None:
    st.info(f"{sae} has no feature map yet. `saebench index --sae {folder}` stores one; "
            "or compute it here (about 30 s for 4608 latents on 2 CPU cores, most of it "
            "compiling UMAP on first use).")
    if st.button("Compute the feature map", key="fmap_build"):
        with st.spinner("UMAP of the decoder directions..."):
            build_feature_map(folder)
        st.rerun()
    st.stop()

latent = table["latent"].to_numpy()
x, y = table["x"].to_numpy(), table["y"].to_numpy()
cluster = table["cluster"].to_numpy()
with Catalog(ws) as db:
    dens = db.densities(sae)
    labels = db.labels(sae)
if dens is not None and dens.empty:
    dens = None  # the features view exists, but for other SAEs only
stamp = folder / "index" / "contexts.parquet"
tokens = top_tokens(ws, sae) if stamp.exists() else {}
explanations = read_explanations(ws, sae)
explained = {lat: e.text for (_, lat), e in explanations.items()}
scores = {lat: e.score for (_, lat), e in explanations.items()}
notes = {i: labels.get(i) or explained.get(i, "") for i in latent.tolist()}

options = ["cluster"]
if dens is not None:
    options.append("density")
if labels:
    options.append("labelled")
if scores:
    options.append("explanation score")
c = st.columns([3, 1])
colour = c[0].radio("Colour by", options, horizontal=True, key="fmap_colour")
hide_dead = c[1].checkbox("Hide dead", value=False, key="fmap_hide_dead",
                          disabled=dens is None)

kwargs: dict = {"tokens": tokens, "notes": notes}
if colour == "cluster":
    kwargs["groups"] = cluster
elif colour == "density":
    by = dict(zip(dens["latent"].tolist(), dens["density"].tolist(), strict=True))
    d = np.array([by.get(i, 0.0) for i in latent.tolist()])
    kwargs["values"] = np.where(d > 0, np.log10(np.maximum(d, 1e-300)), np.nan)
    kwargs["value_title"] = "log10 density"
elif colour == "labelled":
    kwargs["groups"] = np.array(["labelled" if labels.get(i) else "" for i in latent.tolist()])
else:
    kwargs["values"] = np.array([np.nan if scores.get(i) is None else scores[i]
                                 for i in latent.tolist()])
    kwargs["value_title"] = "detection score"
keep = np.ones(len(latent), bool)
if hide_dead and dens is not None:
    dead = set(dens.loc[dens["dead"], "latent"].tolist())
    keep = np.array([i not in dead for i in latent.tolist()])
for key in ("groups", "values"):
    if key in kwargs:
        kwargs[key] = kwargs[key][keep]
fig = dictionary_charts.feature_map(latent[keep], x[keep], y[keep], **kwargs)
n_clusters = len(set(cluster.tolist()) - {-1})
meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
st.caption(f"{len(latent):,} decoder directions, UMAP (cosine, {meta.get('n_neighbors')} "
           f"neighbours, seed {meta.get('seed')}, computed in {meta.get('seconds', '?')} s); "
           f"{n_clusters} HDBSCAN clusters, {np.mean(cluster < 0):.0%} noise. Hover for top "
           "tokens; click a point to open its feature page.")
event = st.plotly_chart(fig, on_select="rerun", selection_mode="points", key="fmap")
target = dictionary_charts.clicked_latent(event)
if target is not None:
    common.go_to(target)
    st.switch_page(common.FEATURE_PAGE)

c = st.columns([1, 1, 4])
pick = c[0].number_input("Latent", 0, len(latent) - 1, step=1, key="fmap_latent")
if c[1].button("Open", key="fmap_open"):
    common.go_to(int(pick))
    st.switch_page(common.FEATURE_PAGE)
