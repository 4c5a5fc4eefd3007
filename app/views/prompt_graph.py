"""Prompt graph: which SAE latents, at which tokens, drive one prompt's target-token logit
(saebench.circuits.prompt_graph), computed live or opened from the graphs `saebench graph`
saved; every latent node links to its feature page. Torch loads only on the first Compute."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from app import charts, common
from app.data import sae_names
from saebench.circuits.graph_output import read_graph, saved_graphs
from saebench.circuits.plot import clicked_node
from saebench.circuits.prompt_plot import graph_figure
from store.errors import UserError

CHART, JUMP, REC = "pg_chart", "_pg_jump", "pg_rec"
NEW = "(compute a new graph)"
DEFAULT_PROMPT = "When Mary and John went to the store, John gave a drink to"


def _open(sae: str, latent: int) -> None:
    """Callback: it runs before the sidebar's SAE selectbox exists, so it may set that key."""
    st.session_state["sae"] = sae
    common.go_to(latent)
    st.session_state[JUMP] = True


def _on_select() -> None:
    """A click on the graph: open the clicked latent if its SAE is in this workspace."""
    state = st.session_state.get(CHART) or {}
    hit = clicked_node((state.get("selection") or {}).get("points", []))
    if hit and hit[0] in sae_names(common.workspace()):
        _open(*hit)


@st.cache_data(show_spinner="Computing the graph (the model loads on the first one)...",
               max_entries=32)
def compute(ws: str, saes: tuple[str, ...], prompt: str, target: str, contrast: str,
            metric: str, nodes: int) -> dict:
    """One graph per distinct input, kept across reruns and sessions (a JSON-ready dict)."""
    from saebench.circuits.prompt_graph import graph_for_folders
    from saebench.circuits.prompt_graph_config import GraphSettings

    folders = [Path(ws) / "saes" / s for s in saes]
    return graph_for_folders(folders, prompt, target, contrast or None,
                             settings=GraphSettings(metric=metric, nodes=nodes))


def _form(names: list[str]) -> dict | None:
    """The inputs and the Compute button; the last computed graph of this session, if any."""
    prompt = st.text_area("Prompt", DEFAULT_PROMPT, height=68, key="pg_prompt")
    cols = st.columns(4)
    target = cols[0].text_input("Target token", " Mary", key="pg_target",
                                help="Exactly one token; mind the leading space.")
    contrast = cols[1].text_input("Contrast token (optional)", "", key="pg_contrast",
                                  help="If given, the metric is target minus contrast.")
    metric = cols[2].selectbox("Metric", ["logit", "logprob"], key="pg_metric")
    nodes = cols[3].number_input("Node budget", 5, 200, 40, step=5, key="pg_nodes")
    current = st.session_state.get("sae")
    saes = st.multiselect("SAEs (one per hook, all of one model)", names, key="pg_saes",
                          default=[current] if current in names else names[:1])
    if st.button("Compute", type="primary", key="pg_go"):
        try:
            st.session_state[REC] = compute(str(common.workspace()), tuple(saes), prompt,
                                            target, contrast, metric, int(nodes))
        except UserError as err:
            st.session_state.pop(REC, None)
            st.error(str(err))
            st.stop()
        except Exception as err:  # a model that cannot load must be a message, not a trace
            st.session_state.pop(REC, None)
            st.error(f"Could not compute the graph: {err}")
            st.stop()
    return st.session_state.get(REC)


def _table(rec: dict, local: set[str]) -> pd.DataFrame:
    """The nodes, strongest first, each latent with a ?sae=&latent= link to its feature page."""
    return pd.DataFrame([{
        "effect": n["effect"], "sae": n.get("sae"), "latent": str(n["latent"]),
        "pos": n["pos"], "token": charts._show(n["token"]), "activation": n["activation"],
        "hook": n["hook"], "label": n.get("label") or "",
        "feature": (f"feature?sae={n['sae']}&latent={n['latent']}"
                    if n["latent"] != "error" and n.get("sae") in local else None),
    } for n in rec["nodes"]])


if st.session_state.pop(JUMP, False):
    st.switch_page(common.FEATURE_PAGE)

ws = common.workspace()
names = sae_names(ws)
st.title("Prompt graph")
saved = saved_graphs(ws)
wanted = st.query_params.get("graph")
start = 1 + saved.index(wanted) if wanted in saved else (1 if saved else 0)
choice = st.selectbox("Graph", [NEW, *saved], index=start, key="pg_saved",
                      help="Graphs saved by `saebench graph` in this workspace, newest first.")
if choice == NEW:
    rec = _form(names)
    if rec is None:
        st.info("Type a prompt and a target token, pick SAEs, then Compute.")
        st.stop()
else:
    try:
        rec = read_graph(ws, choice)
    except UserError as err:
        st.error(str(err))
        st.stop()

against = f" − {rec['contrast']!r}" if rec["contrast"] else ""
st.caption(f"`{rec['model']}` · SAEs " + ", ".join(
    f"`{Path(s).name}` at `{h}`" for s, h in zip(rec["saes"], rec["hooks"], strict=True))
    + f" · prompt {rec['prompt']!r}")
cols = st.columns(4)
cols[0].metric(f"{rec['metric']} {rec['target']!r}{against}", f"{rec['value']:.3f}")
cols[1].metric("Target is the top prediction", "yes" if rec["target_is_top"] else "no")
cols[2].metric("Nodes / edges", f"{len(rec['nodes'])} / {len(rec['edges'])}")
cols[3].metric("Share of summed |effect| kept", f"{rec['kept_share']:.0%}")
st.caption("Effect: attribution patching against zero, the metric's linearised drop when the "
           "latent is zero-ablated (errors kept); squares are SAE error nodes (x − x̂). Click a "
           "latent to open its feature page.")
st.plotly_chart(graph_figure(rec), on_select=_on_select, selection_mode="points", key=CHART)

st.subheader("Top nodes")
st.dataframe(_table(rec, set(names)), hide_index=True, key="pg_nodes_table", column_config={
    "effect": st.column_config.NumberColumn(format="%+.3f"),
    "activation": st.column_config.NumberColumn(format="%.3g"),
    "feature": st.column_config.LinkColumn("feature page", display_text="open"),
})
st.download_button("Download the graph (JSON)", json.dumps(rec, indent=1),
                   file_name="prompt_graph.json", mime="application/json", key="pg_download")
