"""Blind test: judge a latent's explanation (or label) yourself, as autointerp's judge does.

Torch loads on this page only, when the first test is sampled (saebench/blind_test.py).
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd
import streamlit as st

from app import charts, common
from app.data import Catalog, sae_cfg
from saebench.blind_scores import compare, record
from saebench.explanations import explanation
from store.errors import UserError

ws, sae = common.workspace(), common.sae()
KINDS = {"top": "top", "iw": "importance-sampled", "random": "random"}
st.title("Blind detection test")
st.caption("SAEBench's autointerp detection test with you as the judge: read what the latent "
           "is said to fire on, then tick the excerpts you expect it to fire on. They are 2 "
           "top-activating, 2 importance-sampled and 10 random excerpts, shuffled, shown "
           "without activations. Your score is the share you got right, as the judge's is.")


def _stamp(name: str) -> tuple:
    """Changes when the SAE or its autointerp config does, so cached samples go stale."""
    folder = ws / "saes" / name
    return tuple(p.stat().st_mtime_ns if p.exists() else 0 for p in (
        folder / "sae_weights.safetensors", folder / "evals" / "autointerp.json"))


@st.cache_resource(show_spinner="Loading the SAE and opening its store (read-only)...",
                   max_entries=4)
def _open(workspace: str, name: str, stamp: tuple):
    from saebench.blind_test import open_sae

    return open_sae(Path(workspace), name)


@st.cache_resource(show_spinner="Sampling the excerpts...", max_entries=64)
def _sample(workspace: str, name: str, latent: int, stamp: tuple):
    from saebench.blind_test import blind_set_for

    ctx, cfg, same = _open(workspace, name, stamp)
    return blind_set_for(ctx, name, latent, cfg, same)


def _plain(tokens: list[str]) -> str:
    text = "".join(html.escape(charts._show(t)) for t in tokens)
    return f'<div style="font-family: monospace; white-space: pre-wrap;">{text}</div>'


def _description(kind: str, text: str, by: str) -> str:
    return ('<div style="border-left: 4px solid rgb(255, 140, 0); padding: 0.4em 0.8em; '
            f'margin: 0.5em 0 1em;"><b>{kind}</b> <small>({html.escape(by)})</small><br>'
            f"This latent fires on {html.escape(text)}</div>")


d_sae = int(sae_cfg(ws, sae)["cfg"]["d_sae"])
pick, choose = st.columns([1, 3])
latent = pick.number_input("Latent", 0, d_sae - 1, value=min(max(common.latent(), 0), d_sae - 1),
                           step=1, key="bt_latent")
st.session_state["latent"] = latent = int(latent)
expl = explanation(ws, sae, latent)
with Catalog(ws) as db:
    label = db.labels(sae, [latent]).get(latent)
texts = {k: v for k, v in (("explanation", expl.text if expl else None),
                           ("label", label)) if v}
if not texts:
    st.info(f"Latent {latent} of `{sae}` has no explanation and no label to test. Explain "
            "latents with `saebench eval --evals autointerp`, or write a label on the feature "
            "page.")
    st.stop()
shown = choose.radio("Judge against its", list(texts), horizontal=True, key="bt_shown")
by = expl.explainer if shown == "explanation" and expl else "a label written in the browser"
st.html(_description(shown.capitalize(), texts[shown], by))

try:
    blind = _sample(str(ws), sae, latent, _stamp(sae))
except UserError as err:
    st.error(f"Cannot sample excerpts of `{sae}`: {err}. The test reads the held-out split of "
             "the activation store the SAE was trained on.")
    st.stop()
if blind is None:
    st.info(f"Latent {latent} has too few distinct top-activating excerpts for a detection "
            "test; the autointerp eval skips such latents too.")
    st.stop()
cfg = blind.config
judged = blind.same_as_eval and expl is not None  # the eval explained (and judged) it
st.caption(("The excerpts the autointerp eval's judge saw" if judged else
            "Excerpts sampled as the SAE's autointerp eval samples them" if blind.same_as_eval
            else "This SAE has no autointerp eval yet: excerpts sampled with its default config")
           + f" (seed {cfg.seed}, ±{cfg.buffer} tokens, "
           + (f"{cfg.n_tokens:,} held-out tokens)." if cfg.n_tokens else "all held-out tokens)."))
boxes = [f"bt_{sae}_{latent}_{i}" for i in range(len(blind.contexts))]
result_key = f"bt_result_{sae}_{latent}_{shown}"



def _again() -> None:
    for key in (result_key, *boxes):
        st.session_state.pop(key, None)


def _quiz() -> None:
    """The excerpts with a tick box each; on submit, score, record and show the answers."""
    with st.form(f"bt_form_{sae}_{latent}"):
        st.markdown("Tick every excerpt on which you expect the latent to fire.")
        for i, (box, toks) in enumerate(zip(boxes, blind.texts, strict=True)):
            left, right = st.columns([1, 14], vertical_alignment="center")
            left.checkbox(f"{i + 1}", key=box)
            right.html(_plain(toks))
        if not st.form_submit_button("Score my answers", type="primary"):
            return
    ticked = {i for i, box in enumerate(boxes) if st.session_state.get(box)}
    auto = expl.score if shown == "explanation" and expl else None
    truth = blind.truth
    record(ws, {
        "sae": sae, "latent": latent, "shown": shown, "description": texts[shown],
        "explainer": expl.explainer if shown == "explanation" and expl else None,
        "score": blind.score(ticked), "auto_score": auto, "n_contexts": len(truth),
        "n_firing": sum(truth), "ticked": sorted(ticked), "truth": truth,
        "kinds": [c.kind for c in blind.contexts], "seed": cfg.seed, "n_tokens": cfg.n_tokens,
        "same_as_eval": blind.same_as_eval})
    st.session_state[result_key] = {"ticked": sorted(ticked), "auto": auto}
    st.rerun()  # the next run shows the answers in place of the form


def _answers() -> None:
    result = st.session_state[result_key]
    ticked, truth = set(result["ticked"]), blind.truth
    cols = st.columns(3)
    cols[0].metric("Your score", f"{blind.score(ticked):.2f}", help="Detection accuracy: the "
                   f"share of the {len(truth)} excerpts you judged right, firing or not")
    auto = result["auto"]
    cols[1].metric("Autointerp judge's score", "n/a" if auto is None else f"{auto:.2f}",
                   help="The eval's judge on the same explanation (none for a label)")
    cols[2].metric("Ticking none would score", f"{1 - sum(truth) / len(truth):.2f}",
                   help="The share of excerpts on which the latent is silent")
    right = sum((i in ticked) == t for i, t in enumerate(truth))
    st.caption(f"You got {right} of {len(truth)} right. Recorded under `blind_tests/` in the "
               "workspace (catalog view `blind_tests`).")
    top = max((max(c.acts) for c in blind.contexts), default=1.0)
    for i, (c, toks, fires) in enumerate(zip(blind.contexts, blind.texts, truth, strict=True)):
        said = "fires" if i in ticked else "silent"
        mark = ":green-badge[right]" if (i in ticked) == fires else ":red-badge[wrong]"
        st.markdown(f"{mark} **{i + 1}.** you said "
                    f"*{said}*; it is *{'firing' if fires else 'silent'}* — {KINDS[c.kind]} "
                    f"excerpt, max activation {max(c.acts):.3g}")
        st.html(charts.shaded_tokens(toks, list(c.acts), top))
    st.button("Take this test again", key="bt_again", on_click=_again)


if result_key in st.session_state:
    _answers()
else:
    _quiz()
st.subheader(f"People and the judge on `{sae}`")
history = compare(ws, sae)
if history:
    st.dataframe(pd.DataFrame(history), hide_index=True, key="bt_history", column_config={
        s: st.column_config.NumberColumn(format="%.2f")
        for s in ("human_score", "first_score", "auto_score")})
else:
    st.caption("No blind tests recorded for this SAE yet.")
