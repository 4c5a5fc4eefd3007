"""Steer: generate with a latent added along its decoder row or clamped through the SAE, next to
the default text from the same seed; the latent's activation on both, and the held-out loss.

One of the two live-model views (torch loads on first use). Results are cached per setting, so
going back to a setting, or rerunning the page for another reason, does not generate again.
"""

from __future__ import annotations

import html
from dataclasses import asdict
from pathlib import Path

import streamlit as st

from app import charts, common
from app.data import Catalog, sae_cfg
from store.errors import UserError

ws, sae = common.workspace(), common.sae()
st.title("Steer")
DEFAULT_PROMPT = "I think that"
GREY = "color: #888; white-space: pre;"  # breaks between tokens only, as the new ones


@st.cache_resource(show_spinner="Loading the model and SAE (once per session)...")
def _handle(workspace: str, name: str, stamp: float):
    """The SAE's API handle; it keeps the model, the SAE and the strength units loaded."""
    import saebench

    return saebench.open_workspace(workspace).sae(name)


@st.cache_data(max_entries=64, show_spinner="Generating...")
def _steer(workspace: str, name: str, stamp: float, latent: int, strength: float, method: str,
           prompt: str, n_tokens: int, temperature: float, seed: int, heldout: str) -> dict:
    result = _handle(workspace, name, stamp).steer(
        latent, strength, method=method, prompt=prompt, n_tokens=n_tokens,
        temperature=temperature, seed=seed, heldout_text=heldout or None)
    return asdict(result) | {"delta": None if result.loss is None else result.loss.delta}


cfg = sae_cfg(ws, sae)["cfg"]
meta, d_sae = cfg.get("metadata") or {}, int(cfg["d_sae"])
st.caption(f"Model `{meta.get('model_name')}`, hook `{meta.get('hook_name')}`, SAE `{sae}`. "
           "Strength is in units of the latent's max activation.")
with st.form("steer_form"):
    c1, c2, c3 = st.columns([1, 3, 1])
    latent = c1.number_input("Latent", 0, d_sae - 1, value=min(common.latent(), d_sae - 1),
                             step=1, key="steer_latent")
    strength = c2.slider("Strength (× max activation)", -20.0, 20.0, 4.0, 0.5,
                         key="steer_strength")
    method = c3.radio("Method", ["add", "clamp"], key="steer_method",
                      help="add: strength × max act × the decoder row at every position. "
                           "clamp: the latent held at strength × max act, SAE error kept.")
    prompt = st.text_input("Prompt", DEFAULT_PROMPT, key="steer_prompt")
    c4, c5, c6 = st.columns(3)
    n_tokens = c4.number_input("New tokens", 1, 200, value=30, step=1, key="steer_tokens")
    temperature = c5.slider("Temperature", 0.0, 2.0, 1.0, 0.1, key="steer_temperature")
    seed = c6.number_input("Seed", 0, 2**31 - 1, value=0, step=1, key="steer_seed")
    heldout = st.text_area("Held-out text for the loss change (blank: the store's held-out "
                           "windows)", "", key="steer_heldout", height=68)
    st.form_submit_button("Steer")

stamp = (Path(ws) / "saes" / sae / "sae_weights.safetensors").stat().st_mtime
try:
    r = _steer(str(ws), sae, stamp, int(latent), float(strength), method, prompt,
               int(n_tokens), float(temperature), int(seed), heldout.strip())
except UserError as err:
    st.error(str(err))
    st.stop()

with Catalog(ws) as db:
    label = db.labels(sae, [int(latent)]).get(int(latent), "")
unit = r["max_acts"][0]
st.markdown(f"**Latent {latent}** {html.escape(label)} — {method} at {strength:g} × "
            f"{unit:.3g} = **{strength * unit:.3g}** (max activation from {r['max_act_source']})")


def _column(col, title: str, gen: dict, baseline: float | None) -> float:
    """One generation: the prompt in grey, the new tokens shaded by the latent's activation."""
    acts = gen["acts"][int(latent)]
    mean = sum(acts) / max(len(acts), 1)
    col.subheader(title)
    shaded = charts.shaded_tokens(gen["tokens"], acts, unit)
    start = shaded.index(">") + 1  # the prompt goes inside the token row, before the new text
    prompt = "".join(f'<span style="{GREY}">{html.escape(charts._show(t))}</span>'
                     for t in r["prompt_tokens"])
    col.html(f"{shaded[:start]}{prompt}{shaded[start:]}")
    delta = None if baseline is None else f"{mean - baseline:+.3g}"
    col.metric(f"Mean activation of latent {latent} on the new tokens", f"{mean:.3g}", delta)
    return mean


left, right = st.columns(2)
base = _column(left, "Default", r["default"], None)
_column(right, "Steered", r["steered"], base)
st.caption("Activations are read on the unsteered model, so they say whether the text itself "
           "evokes the latent. Both columns use the same seed and the same sampling noise.")

loss = r["loss"]
if loss is None:
    st.info("No held-out text: this SAE records no store. Paste text above to measure the loss.")
else:
    st.metric("Held-out CE with steering (nats/token)", f"{loss['ce_steered']:.4f}",
              f"{r['delta']:+.4f} vs {loss['ce_default']:.4f} unsteered", delta_color="inverse")
    st.caption(f"Mean next-token CE over {loss['n_tokens']} predictions: {loss['source']}.")
times = ", ".join(f"{k} {v:.2f} s" for k, v in r["seconds"].items())
st.caption(f"Time: {times}.")
common.open_feature(int(latent), f"Open latent {latent} on the feature page", key="steer_open")
