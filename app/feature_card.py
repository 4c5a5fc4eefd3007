"""A feature card: everything the feature page shows about one latent, gathered into one
plain dict, and exported as JSON (for notebooks and papers) or as one standalone HTML file.

The page renders from the same dict it exports, so a download holds exactly what was on
screen, and benchmarks/app_bench.py times `gather` as the page's data cost. No Streamlit.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from app import cross_sae, explanations
from app.charts import _show, shaded_tokens
from app.data import Catalog

FORMAT = "saebench-feature-card/1"
N_TOP_TOKENS = 3


def gather(db: Catalog, workspace: Path, sae: str, latent: int) -> dict | None:
    """The card of one indexed latent (None if the index lacks it): every query the feature
    page makes, and the nearest rows of the other SAEs at its hook."""
    feat = db.feature(sae, latent)
    if feat is None:
        return None
    ctxs, logits = db.contexts(sae, latent), db.logits(sae, latent)
    rows = {sae: [{"kind": r["kind"], "latent": r["other"], "value": r["value"]}
                  for r in db.neighbours(sae, latent)]}
    rows |= {o: [{"latent": j, "value": c} for j, c in found]
             for o, found in cross_sae.nearest(workspace, sae, latent).items()}
    # One query each for every latent shown (this one, its neighbours, the other SAEs' rows).
    wanted = {name: [r["latent"] for r in part] for name, part in rows.items()}
    tops = db.top_tokens(wanted, N_TOP_TOKENS)
    wanted[sae] = [latent, *wanted[sae]]
    labels, expl = db.labels_of(wanted), explanations.read(db, wanted)
    ids = ([t for c in ctxs for t in c["tokens"]] + [r["token_id"] for r in logits]
           + [t for ts in tops.values() for t in ts])
    vocab = db.token_strings(sae, ids)  # the other SAEs read the same model: same tokens

    def word(i: int) -> str:
        return vocab.get(i, f"<{i}>")

    def about(name: str, part: list[dict]) -> list[dict]:
        return [r | {"top_tokens": [word(t) for t in tops.get((name, r["latent"]), [])],
                     "label": labels.get((name, r["latent"]), ""),
                     "explanation": explanations.describe(expl.get((name, r["latent"])))}
                for r in part]

    nbrs = about(sae, rows.pop(sae))
    return {
        "format": FORMAT, "sae": sae, "latent": latent,
        "status": "dead" if feat["dead"] else "dense" if feat["dense"] else "alive",
        "stats": {k: feat[k] for k in ("density", "fires", "tokens_seen", "max_act",
                                       "mean_act", "hist_counts")},
        "label": labels.get((sae, latent), ""), "explanation": expl.get((sae, latent)),
        "contexts": [context_entry(c, vocab) for c in ctxs],
        "logits": {name: [{"token": word(r["token_id"]), "token_id": r["token_id"],
                           "value": r["value"]} for r in logits if r["kind"] == kind]
                   for name, kind in (("promoted", "top"), ("suppressed", "bottom"))},
        "neighbours": {kind: [r for r in nbrs if r["kind"] == kind]
                       for kind in ("decoder", "coactivation")},
        "other_saes": {o: about(o, part) for o, part in rows.items()},
    }


def _clean(value):
    """JSON-safe: NaN and infinities become null (json.dumps would write bare NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def context_entry(c: dict, vocab: dict[int, str]) -> dict:
    """One stored context with its tokens as strings (ids kept for exact lookups)."""
    loss = c.get("loss_effects")
    return {
        "kind": c["kind"], "bucket": c["bucket"], "rank": c["rank"], "act": c["act"],
        "center": c["center"], "token_ids": list(c["tokens"]),
        "tokens": [vocab.get(t, f"<{t}>") for t in c["tokens"]],
        "acts": [float(a) for a in c["acts"]],
        "loss_effects": None if loss is None else [float(x) for x in loss],
    }


def to_json(card: dict) -> str:
    return json.dumps(_clean(card), indent=2, ensure_ascii=False)


def _tokens_line(tokens: list[str]) -> str:
    return ", ".join(f"'{_show(t)}'" for t in tokens)


def _list_items(rows: list[dict], value_name: str) -> str:
    items = []
    for r in rows:
        note = " — ".join(x for x in (r.get("label"), r.get("explanation")) if x)
        items.append(f"<li>#{r['latent']} ({value_name} {r['value']:.3f}) "
                     f"{html.escape(_tokens_line(r.get('top_tokens') or []))}"
                     f"{' — ' + html.escape(note) if note else ''}</li>")
    return "<ul>" + "".join(items) + "</ul>" if items else "<p>none stored</p>"


def to_html(card: dict) -> str:
    """A standalone page (inline styles, no scripts or external files) of the card."""
    s, e = card["stats"], card.get("explanation") or {}
    esc = html.escape
    parts = [f"<h1>{esc(card['sae'])} · latent {card['latent']} ({esc(card['status'])})</h1>",
             f"<p>Label: {esc(card.get('label') or '(none)')}</p>"]
    if e.get("explanation"):
        parts.append(f"<p>Explanation: {esc(e['explanation'])} "
                     f"(score {e.get('score')}, {esc(e.get('explainer', ''))})</p>")
    parts.append(f"<p>Density {s['density']:.3e} · fires {s['fires']:,} of "
                 f"{s['tokens_seen']:,} tokens · max activation {s['max_act']:.3f} · mean "
                 f"activation {(s['mean_act'] or 0.0):.3f}</p>")
    parts.append("<h2>Top activations</h2><p>Hover a token: its activation, and the change "
                 "in next-token loss when this latent is ablated, where the index has it.</p>")
    for c in card["contexts"]:
        if c["kind"] == "top":
            parts.append(shaded_tokens(c["tokens"], c["acts"], s["max_act"], c["center"],
                                       c["loss_effects"]))
    for kind, title in (("promoted", "Promoted tokens"), ("suppressed", "Suppressed tokens")):
        rows = card["logits"][kind]
        parts.append(f"<h2>{title}</h2><p>" + (esc(", ".join(
            f"'{_show(r['token'])}' {r['value']:+.3f}" for r in rows)) or "none stored") + "</p>")
    for kind, title in (("decoder", "Decoder-cosine neighbours"),
                        ("coactivation", "Co-activation neighbours")):
        parts.append(f"<h2>{title}</h2>" + _list_items(card["neighbours"][kind], "value"))
    for other, rows in card["other_saes"].items():
        parts.append(f"<h2>Nearest in {esc(other)}</h2>" + _list_items(rows, "cos"))
    title = f"{card['sae']} latent {card['latent']}"
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{esc(title)}</title></head><body style='font-family: sans-serif; "
            "max-width: 60em; margin: 2em auto;'>" + "\n".join(parts) + "</body></html>")
