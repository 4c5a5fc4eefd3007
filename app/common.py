"""State shared by the views: the workspace, the chosen SAE and latent, and feature links."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

FEATURE_PAGE = "views/feature.py"


def workspace() -> Path:
    return Path(st.session_state["workspace"])


def sae() -> str:
    return st.session_state["sae"]


def latent() -> int:
    return int(st.session_state.get("latent", 0))


def go_to(latent: int) -> None:
    """Callback target: show this latent on the feature page."""
    st.session_state["latent"] = int(latent)
    st.session_state["jump_to"] = int(latent)


def open_feature(latent: int, text: str, key: str) -> None:
    """A button that opens the feature page on `latent`."""
    if st.button(text, key=key):
        go_to(latent)
        st.switch_page(FEATURE_PAGE)


def no_index() -> None:
    st.info("This workspace has no feature index for this SAE yet. Build it with "
            "`saebench index`, then reload.")
