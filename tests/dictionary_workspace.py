"""A workspace of SAEs with planted decoder relations, for the compare and feature-map tests.

- `sae-a`: 64 latents in 4 tight clusters of 16 directions (d_in 32), with a feature index.
- `sae-b`: A's first 48 rows permuted, sign-flipped and rescaled, then 16 fresh random rows;
  so exactly 48 latents (75%) are shared with |cos| 1. Indexed.
- `sae-c`: 64 independent random rows (shares nothing with A). Not indexed.
- `sae-far`: reads another hook: never comparable to the others.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

D_IN, D_SAE, N_SHARED, HOOK = 32, 64, 48, "blocks.0.hook_resid_post"
N_VOCAB = 40


def planted() -> dict[str, np.ndarray]:
    """The decoders and the permutation: {'a', 'b', 'c', 'perm', 'sign'} (seeded)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, D_IN))
    a = np.repeat(centres, D_SAE // 4, axis=0) + 0.15 * rng.normal(size=(D_SAE, D_IN))
    perm = rng.permutation(D_SAE)[:N_SHARED]  # b[j] = sign[j] * a[perm[j]] for j < 48
    sign = rng.choice([-1.0, 1.0], N_SHARED)
    b = np.concatenate([a[perm] * sign[:, None] * 2.5, rng.normal(size=(D_SAE - N_SHARED, D_IN))])
    c = rng.normal(size=(D_SAE, D_IN))
    f32 = np.float32
    return {"a": a.astype(f32), "b": b.astype(f32), "c": c.astype(f32), "perm": perm,
            "sign": sign}


def write_sae(ws: Path, name: str, W_dec: np.ndarray, hook: str = HOOK) -> Path:
    from safetensors.numpy import save_file

    folder = ws / "saes" / name
    folder.mkdir(parents=True, exist_ok=True)
    d_sae, d_in = W_dec.shape
    save_file({"W_enc": np.ascontiguousarray(W_dec.T), "b_enc": np.zeros(d_sae, np.float32),
               "W_dec": W_dec, "b_dec": np.zeros(d_in, np.float32)},
              str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({
        "d_in": d_in, "d_sae": d_sae, "k": 4, "architecture": "topk",
        "apply_b_dec_to_input": True, "normalize_activations": "none",
        "metadata": {"model_name": "random:tiny", "hook_name": hook}}))
    return folder


def top_token_of(latent: int) -> int:
    """The token id that latent's top contexts mostly sit on (the second one: +1)."""
    return latent % (N_VOCAB - 1)


def write_index(ws: Path, name: str, d_sae: int = D_SAE) -> None:
    """features, contexts and vocab: latent 0 dead; 3 top contexts each, 2 on top_token_of."""
    from saebench.index import schema
    from store.catalog import write_parquet_atomic

    out = ws / "saes" / name / "index"
    feats, ctxs = [], []
    for lat in range(d_sae):
        dead = lat == 0
        fires = 0 if dead else 10 * (lat + 1)
        feats.append(dict(sae=name, latent=lat, tokens_seen=10_000, fires=fires,
                          density=fires / 10_000, max_act=0.0 if dead else 1.0 + lat,
                          mean_act=None if dead else 0.5, hist_counts=[], dead=dead,
                          dense=fires > 100))
        if dead:
            continue
        for rank, tok in enumerate((top_token_of(lat), top_token_of(lat), top_token_of(lat) + 1)):
            ctxs.append(dict(sae=name, latent=lat, kind="top", bucket=-1, rank=rank, seq=rank,
                             pos=1, act=1.0 - 0.1 * rank, center=1, tokens=[N_VOCAB - 1, tok],
                             acts=[0.0, 1.0 - 0.1 * rank]))
    vocab = [dict(sae=name, token_id=i, token=f"Ġw{i}") for i in range(N_VOCAB)]
    write_parquet_atomic(out / "features.parquet", pa.Table.from_pylist(feats, schema.FEATURES))
    write_parquet_atomic(out / "contexts.parquet", pa.Table.from_pylist(ctxs, schema.CONTEXTS))
    write_parquet_atomic(out / "vocab.parquet", pa.Table.from_pylist(vocab, schema.VOCAB))


def make_dictionary_workspace(root: Path) -> Path:
    from store.catalog import refresh

    p = planted()
    for name in ("a", "b", "c"):
        write_sae(root, f"sae-{name}", p[name])
    write_sae(root, "sae-far", p["c"], hook="blocks.1.hook_resid_post")
    write_index(root, "sae-a")
    write_index(root, "sae-b")
    refresh(root)
    return root
