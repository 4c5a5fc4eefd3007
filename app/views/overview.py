"""Overview: every SAE of the workspace, its evals, any eval against L0 and training curves."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import charts, common
from app.data import METRICS, Catalog, sae_cfg, sae_names

# SAEBench's headline metrics (and a few of ours), offered first, by name, where present:
# (label, eval, metric). Every other metric in `eval_metrics` follows, as "eval: metric".
PRESETS = (
    ("CE loss recovered (zero ablation)", "core", "ce_recovered_vs_zero_ablation"),
    ("CE loss recovered (mean ablation)", "core", "ce_recovered_vs_mean_ablation"),
    ("Explained variance (FVE)", "core", "explained_variance"),
    ("FVU", "core", "fvu"),
    ("KL to the clean model", "core", "kl_sae"),
    ("Sparse probing: top-1 accuracy", "sparse_probing", "sae_top_1_test_accuracy"),
    ("Absorption: mean fraction", "absorption", "mean_absorption_fraction_score"),
    ("Absorption: full", "absorption", "mean_full_absorption_score"),
    ("Autointerp score (LLM judge)", "autointerp", "autointerp_score"),
    ("Autointerp (token-pattern judge)", "autointerp", "lexical_detection_accuracy"),
    ("SCR (20 latents ablated)", "scr", "scr_metric_threshold_20"),
    ("TPP (20 latents ablated)", "tpp", "tpp_threshold_20_total_metric"),
    ("Dead latents (%)", "core", "pct_dead"),
    ("MDL: description length (bits)", "mdl", "description_length_bits"),
)
L0 = ("core", "l0")
SHORT = {"explained_variance": "FVE", "ce_recovered_vs_zero_ablation": "CE rec. (zero abl.)",
         "ce_recovered_vs_mean_ablation": "CE rec. (mean abl.)", "pct_dead": "% dead"}
ws = common.workspace()
st.title("SAEs in this workspace")

with Catalog(ws) as db:
    metrics = db.metrics()
    evals = db.eval_rows()
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
table = pd.DataFrame(rows).set_index("sae")
for col in ("width", "k", "training tokens"):  # counts: no "3.0000" where some are missing
    table[col] = table[col].astype("Int64")
# Columns every SAE shares go in a caption, so the table fits the page (it ran off the side).
shared = [c for c in ("model", "hook") if len(rows) > 1 and table[c].nunique(dropna=False) == 1]
if shared:
    st.caption(" · ".join(f"{c}: `{table[c].iloc[0]}`" for c in shared) + " (every SAE)")
st.table(table.drop(columns=shared).rename(columns=SHORT))
if not metrics:
    st.info("No eval results yet: run `saebench eval` to fill in L0, FVU and CE recovered.")

# --- any eval against L0 ----------------------------------------------------------------
st.subheader("Evals against L0")
values = {(r["eval"], r["metric"], r["sae"]): r["value"] for r in evals}
l0 = {sae: v for (e, m, sae), v in values.items() if (e, m) == L0 and v is not None}
found = sorted({(e, m) for e, m, _ in values} - {L0})
labels = {(e, m): label for label, e, m in PRESETS if (e, m) in found}
options = [f"{e}: {m}" for e, m in [*labels, *(p for p in found if p not in labels)]]
names = {f"{e}: {m}": labels.get((e, m), f"{m} ({e})") for e, m in found}
if not l0 or not options:
    st.info("Run `saebench eval` (core gives L0) to plot evals against L0.")
else:
    arch = {r["sae"]: r["architecture"] or "?" for r in rows}
    log_x = st.checkbox("Log-scale L0", value=False, key="l0_log")
    cols = st.columns(2)
    defaults = ("core: ce_recovered_vs_zero_ablation", "core: explained_variance")
    for i, (col, default) in enumerate(zip(cols, defaults, strict=True)):
        pick = col.selectbox(
            "Metric (SAEBench's headline metrics first)", options, key=f"l0_metric_{i}",
            index=options.index(default) if default in options else min(i, len(options) - 1),
            format_func=lambda key: names[key])
        e, m = pick.split(": ", 1)
        points = [{"sae": s, "arch": arch.get(s, "?"), "l0": l0[s], "value": v}
                  for (pe, pm, s), v in values.items() if (pe, pm) == (e, m) and s in l0
                  and v is not None and v == v]
        col.plotly_chart(charts.metric_vs_l0(points, names[pick], log_x), key=f"l0_plot_{i}")
        if not points:
            col.caption("No SAE has both this metric and L0.")

st.subheader("Training curves")
if curves is None or curves.empty:
    st.info("No training curves in this workspace.")
else:
    numeric = [c for c in curves.columns if c not in ("sae", "step", "tokens")
               and pd.api.types.is_numeric_dtype(curves[c])]
    default = numeric.index("loss") if "loss" in numeric else 0
    metric = st.selectbox("Curve", numeric, index=default, key="curve_metric")
    st.plotly_chart(charts.training_curves(curves, metric), key="curves")
