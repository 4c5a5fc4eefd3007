"""Overview: every SAE of the workspace, its evals, the Pareto plots and training curves."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import charts, common
from app.data import METRICS, Catalog, sae_cfg, sae_names

ws = common.workspace()
st.title("SAEs in this workspace")

with Catalog(ws) as db:
    metrics = db.metrics()
    curves = db.curves()

rows = []
for name in sae_names(ws):
    meta = sae_cfg(ws, name)
    cfg, run = meta["cfg"], meta["run"]
    md = cfg.get("metadata", {})
    rows.append({
        "sae": name, "architecture": run.get("arch", cfg.get("architecture")),
        "width": cfg.get("d_sae"), "k": cfg.get("k"), "model": md.get("model_name"),
        "hook": md.get("hook_name"), "training tokens": run.get("tokens_trained"),
        **{m: metrics.get(name, {}).get(m) for m in METRICS},
    })
st.table(pd.DataFrame(rows).set_index("sae"))
if not metrics:
    st.info("No eval results yet: run `saebench eval` to fill in L0, FVU and CE recovered.")

left, right = st.columns(2)
left.plotly_chart(charts.pareto(rows, "fvu", "FVU"), key="pareto_fvu")
right.plotly_chart(charts.pareto(rows, "ce_recovered_vs_zero_ablation",
                                 "CE recovered (zero abl.)"), key="pareto_ce")

st.subheader("Training curves")
if curves is None or curves.empty:
    st.info("No training curves in this workspace.")
else:
    numeric = [c for c in curves.columns if c not in ("sae", "step", "tokens")
               and pd.api.types.is_numeric_dtype(curves[c])]
    default = numeric.index("loss") if "loss" in numeric else 0
    metric = st.selectbox("Curve", numeric, index=default, key="curve_metric")
    st.plotly_chart(charts.training_curves(curves, metric), key="curves")
