"""The index's files and their exact schema (the browser and notebooks read these).

All files live in `<sae_dir>/index/` and are seen through the catalog views named below.

- `features.parquet` (view `features`): sae VARCHAR (the SAE folder name), latent INT32,
  tokens_seen INT64, fires INT64, density DOUBLE, max_act FLOAT, mean_act FLOAT (mean over
  firing tokens; null for dead), hist_counts LIST<INT64> (32 equal-width bins over
  (0, max_act]; empty for dead), dead BOOL (fires == 0 over the indexed tokens), dense BOOL
  (density > 0.01), top_tokens LIST<INT32> (ids of the N_TOP_TOKENS tokens its top contexts
  fire on, most frequent first, ties to the higher activation: a latent's one-glance summary,
  read for many latents at once without decoding their contexts).
- `contexts.parquet` (view `contexts`): sae, latent INT32, kind VARCHAR ('top' | 'interval'),
  bucket SMALLINT (-1 for top; 0..9 for interval buckets of (0, max] split in 10), rank
  SMALLINT, seq INT32, pos SMALLINT (store position of the activating token), act FLOAT,
  center SMALLINT (index of that token inside `tokens`), tokens LIST<INT32> (the window ±N
  around it, clipped at the sequence edges), acts LIST<FLOAT16> (this latent's activation on
  each of those tokens; DuckDB reads them as FLOAT[]), loss_effects LIST<FLOAT16> (top
  contexts only, else null; also null when not computed: per token, the change in the loss of
  predicting the next token when this latent is ablated, NaN at a sequence's last position;
  see loss_effects.py). Rows are sorted by
  (latent, kind, bucket, rank) in row groups of ROW_GROUP rows with statistics, so
  `WHERE latent = ?` reads one or two row groups.
- `logits.parquet` (view `logit_effects`): sae, latent INT32, kind ('top' | 'bottom'), rank
  SMALLINT, token_id INT32, value FLOAT (`W_dec[f] · W_U`).
- `neighbours.parquet` (view `neighbours`): sae, latent INT32, kind ('decoder' |
  'coactivation'), rank SMALLINT, other INT32, value FLOAT.
- `vocab.parquet` (view `vocab`): sae, token_id INT32, token VARCHAR (the model's decoded
  single-token strings, from the store's `vocab` table).
- `head_attribution.parquet` (view `head_attribution`; SAEs at `blocks.L.attn.hook_z`
  only): sae, latent INT32, head SMALLINT, share FLOAT (the head's part of the squared norm
  of the latent's decoder row; see saebench/index/head_table.py).
- `index.json`: the settings and notes of a finished index (written last: it marks completion).
- `.state.pt`: the pass state of an unfinished run (deleted when the run completes).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

INDEX_DIR = "index"
FEATURES_FILE = "features.parquet"
CONTEXTS_FILE = "contexts.parquet"
LOGITS_FILE = "logits.parquet"
NEIGHBOURS_FILE = "neighbours.parquet"
VOCAB_FILE = "vocab.parquet"
HEADS_FILE = "head_attribution.parquet"
DONE_FILE = "index.json"
STATE_FILE = ".state.pt"
FORMAT = "saebench-index/1"

HIST_BINS = 32
N_BUCKETS = 10
PER_BUCKET = 5
N_LOGITS = 10
N_NEIGHBOURS = 10
N_TOP_TOKENS = 3
DENSE_DENSITY = 0.01
# Rows per row group. Smaller groups read less per `WHERE latent = ?` but grow the footer that
# each fresh connection parses: 1024 was 2x slower than 4096 on 16k latents (app_bench).
ROW_GROUP = 4096
# Co-activation correlations use a hashed subsample of about this many tokens (see coactivation).
COACT_TOKENS = 32768
# Loss effects run the model once per top context, so by default an index computes them only
# below this many FLOPs (seconds on one CPU core) or a fifth of its own passes' work (see
# saebench/index/loss_effects.py and write.loss_effects_on).
SMALL_FLOPS = 1e10

FEATURES = pa.schema([
    ("sae", pa.string()), ("latent", pa.int32()), ("tokens_seen", pa.int64()),
    ("fires", pa.int64()), ("density", pa.float64()), ("max_act", pa.float32()),
    ("mean_act", pa.float32()), ("hist_counts", pa.list_(pa.int64())), ("dead", pa.bool_()),
    ("dense", pa.bool_()), ("top_tokens", pa.list_(pa.int32())),
])
CONTEXTS = pa.schema([
    ("sae", pa.string()), ("latent", pa.int32()), ("kind", pa.string()), ("bucket", pa.int16()),
    ("rank", pa.int16()), ("seq", pa.int32()), ("pos", pa.int16()), ("act", pa.float32()),
    ("center", pa.int16()), ("tokens", pa.list_(pa.int32())), ("acts", pa.list_(pa.float16())),
    ("loss_effects", pa.list_(pa.float16())),
])
LOGITS = pa.schema([
    ("sae", pa.string()), ("latent", pa.int32()), ("kind", pa.string()), ("rank", pa.int16()),
    ("token_id", pa.int32()), ("value", pa.float32()),
])
NEIGHBOURS = pa.schema([
    ("sae", pa.string()), ("latent", pa.int32()), ("kind", pa.string()), ("rank", pa.int16()),
    ("other", pa.int32()), ("value", pa.float32()),
])
VOCAB = pa.schema([("sae", pa.string()), ("token_id", pa.int32()), ("token", pa.string())])
HEADS = pa.schema([("sae", pa.string()), ("latent", pa.int32()), ("head", pa.int16()),
                   ("share", pa.float32())])

# Sort keys per file: `WHERE latent = ?` then touches few row groups.
SORT_KEYS = {
    FEATURES_FILE: ["latent"],
    CONTEXTS_FILE: ["latent", "kind", "bucket", "rank"],
    LOGITS_FILE: ["latent", "kind", "rank"],
    NEIGHBOURS_FILE: ["latent", "kind", "rank"],
    VOCAB_FILE: ["token_id"],
    HEADS_FILE: ["latent", "head"],
}


def write_index_table(path: Path, table: pa.Table, row_group: int = ROW_GROUP) -> None:
    """Sort a table by its file's keys and write it atomically in small row groups."""
    import os

    path = Path(path)
    keys = SORT_KEYS.get(path.name)
    if keys and table.num_rows:
        table = table.sort_by([(k, "ascending") for k in keys])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    # Statistics only on the sort keys: DuckDB parses the whole footer on every fresh
    # connection, and per-column stats of every row group were a third of it (app_bench).
    stats = ["sae", *keys] if keys else True
    pq.write_table(table, tmp, row_group_size=row_group, write_statistics=stats)
    os.replace(tmp, path)
