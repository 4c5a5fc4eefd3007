"""Circuits: a feature circuit written by `saebench circuits` (Marks et al. 2024), its
faithfulness sweep and its graph; every latent node opens its feature page."""

from __future__ import annotations

import streamlit as st

from app import charts, common
from app.data import Catalog, sae_names
from saebench.circuits.output import from_catalog
from saebench.circuits.plot import MAX_NODES, circuit_figure, clicked_node, faithfulness_figure

GRAPH, JUMP = "circuit_graph", "_circuit_jump"
MAX_LISTED = 50  # node buttons; the graph's hover shows the rest


def _open(sae: str, latent: int) -> None:
    """Callback: it runs before the sidebar's SAE selectbox exists, so it may set that key."""
    st.session_state["sae"] = sae
    common.go_to(latent)
    st.session_state[JUMP] = True


def _on_select() -> None:
    """A click on the graph: open the clicked latent if its SAE is in this workspace."""
    state = st.session_state.get(GRAPH) or {}
    hit = clicked_node((state.get("selection") or {}).get("points", []))
    if hit and hit[0] in sae_names(common.workspace()):
        _open(*hit)


def _roles(name: str) -> list[str] | None:
    """Role names of a `--by-template --per-position` circuit, whose node `pos` is a role
    index (saebench.circuits.positional); None for other circuits."""
    import json

    path = common.workspace() / "circuits" / f"{name}.roles.json"
    return json.loads(path.read_text())["roles"] if path.is_file() else None


def _with_roles(rec: dict, roles: list[str]) -> dict:
    """The record with each node's and edge end's `pos` replaced by its role name, so the
    graph's hover reads `latent @ role` (its keys stay consistent: every end is renamed)."""
    for n in [*rec["nodes"], *(e[s] for e in rec["edges"] for s in ("up", "down"))]:
        if n["pos"] is not None:
            n["pos"] = roles[n["pos"]]
    return rec


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "—" if x is None else format(x, spec)


if st.session_state.pop(JUMP, False):
    st.switch_page(common.FEATURE_PAGE)

ws = common.workspace()
st.title("Feature circuits")
with Catalog(ws) as db:
    names = db.circuits()
    if not names:
        st.info("No circuits in this workspace yet: run `saebench circuits --saes DIR... "
                "--task ioi` with SAEs of this workspace.")
        st.stop()
    name = st.selectbox("Circuit", names, key="circuit")
    sweep, node_rows = db.circuit_sweep(name), db.circuit_nodes(name)
    rec = from_catalog(sweep, node_rows, db.circuit_edges(name))
    roles = _roles(name)
    if roles:
        rec = _with_roles(rec, roles)
    current = {sae: db.labels(sae, [n["latent"] for n in node_rows if n["sae"] == sae])
               for sae in {n["sae"] for n in node_rows}}

head, local = sweep[0], set(sae_names(ws))
st.caption(f"Task `{head['task']}` on `{head['model']}`, {head['method']}; SAEs "
           + ", ".join(f"`{s}` at `{h}`" for s, h in zip(head["saes"], head["hooks"],
                                                          strict=True)))
cols = st.columns(5)
cols[0].metric("Nodes for 80% faithfulness", _fmt(head["nodes_for_80"], ".0f"))
cols[1].metric("Completeness at 80%", _fmt(head["completeness_at_80"]))
cols[2].metric("Faithfulness", _fmt(head["circuit_faithfulness"]))
cols[3].metric("Completeness", _fmt(head["circuit_completeness"]))
cols[4].metric("Nodes / edges", f"{head['circuit_n_nodes']} / {head['n_edges']}")
chosen = ("the learned mask's smallest circuit past 80% (else its most faithful one); the "
          "sweep's points are the mask's λ stages" if head["method"] == "mask" else
          f"at node threshold {_fmt(head['node_threshold'], '.3g')}")
st.caption("The first two: the smallest swept circuit past 80% faithfulness. The others: the "
           f"graph's circuit, {chosen}. "
           "Faithfulness: the "
           "metric with only the circuit's nodes left unablated (1 = the whole model); "
           "completeness: with only them ablated (near 0 = nothing important is missing).")
st.plotly_chart(faithfulness_figure(sweep, head["nodes_for_80"]), key="circuit_faith")

st.subheader("Graph")
big = len(rec["nodes"]) > MAX_NODES
st.caption("Click a latent (circle) to open its feature page; squares are error nodes."
           + (f" The graph draws the {MAX_NODES} largest nodes by |effect|, error nodes "
              "always; the SQL view `circuit_nodes` has every node." if big else ""))
st.plotly_chart(circuit_figure(rec), on_select=_on_select, selection_mode="points", key=GRAPH)

st.subheader("Nodes")
for i, n in enumerate(node_rows[:MAX_LISTED]):
    role = None if n["pos"] is None or not roles else roles[n["pos"]]
    where = n["hook"] + ("" if n["pos"] is None or role else f" @ {n['pos']}")
    if n["is_error"]:
        err = "error" + (f"@{role}" if role else "")
        st.write(f"{where} · {err} node · effect {n['effect']:+.3g} (no feature page)")
        continue
    label = current[n["sae"]].get(n["latent"]) or n["label"] or ""
    tokens = " ".join(repr(charts._show(t)) for t in n["top_tokens"] or [])
    latent = f"#{n['latent']}" + (f"@{role}" if role else "")
    text = (f"{n['sae']} {latent} · {where} · effect {n['effect']:+.3g}"
            + (f" · {label}" if label else "") + (f" · promotes {tokens}" if tokens else ""))
    if n["sae"] in local:
        st.button(text, key=f"cn_{i}", on_click=_open, args=(n["sae"], n["latent"]))
    else:
        st.write(f"{text} (SAE not in this workspace)")
if len(node_rows) > MAX_LISTED:
    st.caption(f"{len(node_rows) - MAX_LISTED:,} smaller nodes not listed: "
               + ("the SQL view `circuit_nodes` has them all." if big else "see the graph."))
