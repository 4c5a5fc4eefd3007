"""Labelled text datasets for probing-style evals, all offline.

Two sources (DESIGN.md section 7):
- the `sae-probes==0.4.2` wheel (MIT), fetched once with `pip download --no-deps` into the
  user cache (its requirements conflict with ours, so it is never installed): 155 CSVs
  `sae_probes/data/cleaned_data/<name>.csv.zst` with columns `prompt`, `target`, read here
  straight from the zip. They include SAEBench's own probing sets (amazon, code, agnews, ...);
- passages of our corpora that label themselves: which Austen novel (6 classes), which
  section of the Python docs (library, c-api, ...).
"""

from __future__ import annotations

import csv
import io
import random
import subprocess
import sys
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from store.errors import AptUnavailable, UserError
from store.paths import cache_dir

SAE_PROBES = "sae-probes==0.4.2"
_WHEEL = "sae_probes-0.4.2-py3-none-any.whl"
_CSV_DIR = "sae_probes/data/cleaned_data/"
_SUFFIX = ".csv.zst"
CORPUS_SETS = {"austen_book": "austen", "pydocs_section": "pydocs"}
# Passages of about 128 tokens of English (~4.5 characters per token), cut at a word.
_PASSAGE_CHARS = 600
_MIN_PASSAGE_CHARS = 200
_PYDOCS_CLASSES = 5  # the largest sections; SAEBench also probes 5 classes per multi-class set


@dataclass(frozen=True)
class ProbeSet:
    """One labelled dataset, split into train and test rows."""

    name: str
    texts: list[str]
    labels: list[str]
    splits: list[str]
    """'train' or 'test' per row."""


def wheel_path() -> Path:
    return cache_dir() / "wheels" / _WHEEL


def fetch_wheel() -> Path | None:
    """Download the sae-probes wheel once (no install); None, with one warning, if offline."""
    path = wheel_path()
    if path.exists():
        return path
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps",
           "--disable-pip-version-check", SAE_PROBES, "-d", str(path.parent)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not path.exists():
        print(f"warning: could not download {SAE_PROBES} (offline?); probing evals will use "
              "the corpus datasets only", file=sys.stderr)
        return None
    return path


def sae_probes_names() -> list[str]:
    """The dataset names in the wheel (e.g. '157_amazon_5star'), or [] if it is absent."""
    if not wheel_path().exists():
        return []
    with zipfile.ZipFile(wheel_path()) as z:
        return sorted(n[len(_CSV_DIR) : -len(_SUFFIX)] for n in z.namelist()
                      if n.startswith(_CSV_DIR) and n.endswith(_SUFFIX))


def read_labelled_csv(data: bytes) -> tuple[list[str], list[str]]:
    """Texts and labels from a zstd-compressed CSV with `prompt` and `target` columns."""
    import zstandard

    # stream_reader: the files carry no content size in their frame header.
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    rows = csv.DictReader(io.StringIO(raw.decode("utf-8"), newline=""))
    if rows.fieldnames is None or not {"prompt", "target"} <= set(rows.fieldnames):
        raise UserError(f"expected columns prompt and target, got {rows.fieldnames}")
    pairs = [(r["prompt"], r["target"]) for r in rows if r["prompt"]]
    return [p for p, _ in pairs], [t for _, t in pairs]


def load_sae_probes(name: str) -> tuple[list[str], list[str]]:
    with zipfile.ZipFile(wheel_path()) as z:
        return read_labelled_csv(z.read(f"{_CSV_DIR}{name}{_SUFFIX}"))


def _passages(text: str) -> list[str]:
    """Paragraphs long enough to say something, cut to about 128 tokens at a word boundary."""
    out = []
    for para in text.split("\n\n"):
        para = " ".join(para.split())
        if len(para) >= _MIN_PASSAGE_CHARS:
            out.append(para[:_PASSAGE_CHARS].rsplit(" ", 1)[0] if len(para) > _PASSAGE_CHARS
                       else para)
    return out


def load_corpus_set(name: str) -> tuple[list[str], list[str]]:
    """Austen passages labelled by novel, or Python-docs passages labelled by section."""
    from store.corpus import load_documents

    docs = load_documents(CORPUS_SETS[name], allow_fallback=False)
    by_label: dict[str, list[str]] = defaultdict(list)
    for doc in docs:
        by_label[doc.doc_id.split("/")[1]].extend(_passages(doc.text))
    if name == "pydocs_section":  # only real sections (library, c-api, ...), not index.rst
        sections = [k for k in by_label if not k.endswith(".rst.txt")]
        keep = sorted(sections, key=lambda k: -len(by_label[k]))[:_PYDOCS_CLASSES]
        by_label = {k: by_label[k] for k in keep}
    texts, labels = [], []
    for label in sorted(by_label):
        texts += by_label[label]
        labels += [label] * len(by_label[label])
    return texts, labels


def available() -> list[str]:
    """Every dataset name that can be loaded now."""
    return [*CORPUS_SETS, *sae_probes_names()]


def probe_set(name: str, n_train: int, n_test: int, seed: int = 42) -> ProbeSet:
    """`name` sampled evenly over its classes into n_train + n_test rows (fewer if it is small)."""
    if name in CORPUS_SETS:
        try:
            texts, labels = load_corpus_set(name)
        except AptUnavailable as exc:
            raise UserError(f"dataset {name} needs its corpus: {exc}") from None
    elif name in sae_probes_names():
        texts, labels = load_sae_probes(name)
    else:
        raise UserError(f"unknown probing dataset '{name}'; available: {', '.join(available())}")
    return split_evenly(name, texts, labels, n_train, n_test, seed)


def split_evenly(name, texts, labels, n_train: int, n_test: int, seed: int) -> ProbeSet:
    """Up to (n_train + n_test) / n_classes rows per class, each class split train:test alike."""
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_label[label].append(i)
    rng = random.Random(seed)
    per_class = (n_train + n_test) // max(1, len(by_label))
    rows, splits = [], []
    for label in sorted(by_label):
        idx = by_label[label]
        rng.shuffle(idx)
        take = idx[:per_class]
        n_tr = round(len(take) * n_train / (n_train + n_test))
        rows += take
        splits += ["train"] * n_tr + ["test"] * (len(take) - n_tr)
    return ProbeSet(name, [texts[i] for i in rows], [labels[i] for i in rows], splits)


if __name__ == "__main__":
    found = fetch_wheel()
    if found:
        print(f"{SAE_PROBES}: {len(sae_probes_names())} labelled datasets in {found}")


def wheel_note(skipped: list[str]) -> str:
    """The one-line note on sets skipped because the sae-probes wheel is absent."""
    return (f"{SAE_PROBES} wheel not in {wheel_path().parent} (run `make corpus`); skipped "
            f"{', '.join(skipped)}")


def resolve(eval_name: str, datasets, stand_in: list[str]) -> tuple[list[str], str]:
    """The probing sets that can run now, and a note on any skipped because the wheel is absent
    (`stand_in` runs instead if nothing is left). An unknown name is a one-line error."""
    wheel, corpus = set(sae_probes_names()), set(CORPUS_SETS)
    if wheel:
        unknown = [d for d in datasets if d not in wheel | corpus]
        if unknown:
            raise UserError(f"{eval_name}: unknown datasets {', '.join(unknown)}; available: "
                            f"{', '.join(available())}")
        return list(datasets), ""
    names = [d for d in datasets if d in corpus]
    skipped = [d for d in datasets if d not in corpus]
    return (names or list(stand_in), wheel_note(skipped)) if skipped else (names, "")
