"""Test your text: run the model and SAE live on typed text (the only view that loads torch)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from app import charts, common
from app.data import Catalog, sae_cfg

ws, sae = common.workspace(), common.sae()
st.title("Test your text")
TOP = 5


@st.cache_resource(show_spinner="Loading the model and SAE (once per session)...")
def _load(model_name: str, sae_dir: str):
    """Model and SAE, kept across reruns; torch is imported here, never at app start."""
    from store.models import load_model
    from trainers.saelens_format import load_sae

    return load_model(model_name, device="cpu"), load_sae(Path(sae_dir), device="cpu")


def encode(text: str, model_name: str, hook: str, sae_dir: str) -> tuple[list[str], object]:
    """(tokens, codes [tokens, d_sae]) of `text`, BOS dropped as it is in the SAE's data."""
    import torch

    from store.hooks import stop_layer

    model, coder = _load(model_name, sae_dir)
    tokens = model.to_tokens(text, prepend_bos=True)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[hook],
                                        stop_at_layer=stop_layer(hook))
        codes = coder.encode(cache[hook][0, 1:].float())
    return model.to_str_tokens(tokens[0])[1:], codes


meta = sae_cfg(ws, sae)["cfg"].get("metadata", {})
model_name, hook = meta.get("model_name"), meta.get("hook_name")
if not model_name or not hook:
    st.error(f"{sae}'s cfg.json names no model_name/hook_name in its metadata.")
    st.stop()
st.caption(f"Model `{model_name}`, hook `{hook}`, SAE `{sae}`.")

text = st.text_area("Text", "The quick brown fox jumps over the lazy dog.", key="tt_text")
if not text.strip():
    st.stop()
try:
    toks, codes = encode(text, model_name, hook, str(ws / "saes" / sae))
except Exception as err:  # a missing model must be a message, not a traceback
    st.error(f"Could not run {model_name} with {sae}: {err}")
    st.stop()

values, indices = codes.topk(min(TOP, codes.shape[1]), dim=1)
with Catalog(ws) as db:
    labels = db.labels(sae, sorted({int(i) for i in indices.flatten().tolist()}))


def _cell(v: float, i: int) -> str:
    return f"#{i} ({v:.2f}) {labels.get(i, '')}".strip() if v > 0 else ""


st.subheader("Top features per token")
table = pd.DataFrame([{"token": charts._show(t),
                       **{f"top {j + 1}": _cell(float(v), int(i))
                          for j, (v, i) in enumerate(zip(vs, ix, strict=True))}}
                      for t, vs, ix in zip(toks, values.tolist(), indices.tolist(), strict=True)])
st.table(table)

st.subheader("Tokens highlighted for one feature")
per_token_max = codes.max(dim=0)
default = int(per_token_max.values.argmax()) if codes.numel() else 0
pick = st.number_input("Latent", 0, codes.shape[1] - 1, value=default, step=1, key="tt_latent")
acts = codes[:, int(pick)].tolist()
st.html(charts.shaded_tokens(list(toks), acts, max(acts, default=0.0)))
st.caption(f"Latent {pick}: max activation {max(acts, default=0.0):.3f} on this text.")
common.open_feature(int(pick), f"Open latent {pick} on the feature page", key="tt_open")
