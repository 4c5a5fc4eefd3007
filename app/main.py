"""Entry point: `streamlit run app/main.py -- --workspace runs/` (or `saebench app`).

The workspace comes from `--workspace` after `--`, else from $SAEBENCH_WORKSPACE (tests).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import streamlit as st

from app.data import sae_names

PAGES = [
    ("views/overview.py", "Overview", "overview"),
    ("views/feature.py", "Feature", "feature"),
    ("views/search.py", "Search", "search"),
    ("views/blind_test.py", "Blind test", "blind_test"),
    ("views/test_text.py", "Test your text", "test_text"),
    ("views/steer.py", "Steer", "steer"),
    ("views/dead_dense.py", "Dead and dense", "dead_dense"),
    ("views/circuits.py", "Circuits", "circuits"),
    ("views/prompt_graph.py", "Prompt graph", "prompt_graph"),
    ("views/compare.py", "Compare SAEs", "compare"),
    ("views/feature_map.py", "Feature map", "feature_map"),
]


def _workspace() -> Path | None:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--workspace")
    known, _ = parser.parse_known_args(sys.argv[1:])
    value = known.workspace or os.environ.get("SAEBENCH_WORKSPACE")
    return Path(value).resolve() if value else None


def _init_state(names: list[str]) -> None:
    """First run of a session: take ?sae=&latent= from the URL (deep links), once."""
    if st.session_state.get("_init"):
        return
    st.session_state["_init"] = True
    params = st.query_params
    if params.get("sae") in names:
        st.session_state["sae"] = params["sae"]
    if str(params.get("latent", "")).isdigit():
        st.session_state["latent"] = int(params["latent"])


def main() -> None:
    st.set_page_config(page_title="saebench", layout="wide")
    ws = _workspace()
    names = sae_names(ws) if ws else []
    if not names:
        st.error(f"No SAEs in workspace {ws}: train one with `saebench train` first."
                 if ws else "No workspace: run `saebench app --workspace runs/`.")
        st.stop()
    st.session_state["workspace"] = str(ws)
    _init_state(names)
    pages = [st.Page(path, title=title, url_path=url, default=(i == 0))
             for i, (path, title, url) in enumerate(PAGES)]
    nav = st.navigation(pages)
    with st.sidebar:
        st.caption(f"Workspace `{ws}` (read-only but for labels and blind-test scores)")
        st.selectbox("SAE", names, key="sae")
    nav.run()


main()
