"""Text corpora as lists of documents: the default offline corpora, local files, hub datasets.

The defaults (DESIGN.md section 4) are fetched from Debian once, parsed once, and cached
as JSONL under the user cache, so later loads read one file. Where apt is unavailable the
CPython help topics stand in, and the `cpython-topics/` doc_id prefix makes that visible.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from store.debian import fetch_deb
from store.errors import AptUnavailable, UserError
from store.paths import cache_dir
from store.rdata_reader import read_rdata_dir

# Bump when parsing changes, so stale parsed caches are ignored rather than trusted.
_CACHE_VERSION = 1
_AUSTEN_PACKAGE = "r-cran-janeaustenr"
_AUSTEN_DATA = "usr/lib/R/site-library/janeaustenr/data"
_PYDOCS_PACKAGE = "python3.11-doc"
_PYDOCS_SOURCES = "usr/share/doc/python3.11/html/_sources"
_CHAPTER = re.compile(r"(CHAPTER|Chapter) [IVXLC\d]+")
_VOLUME = re.compile(r"VOLUME [IVX]+")
_LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")


@dataclass(frozen=True)
class Document:
    """One unit of text; `doc_id` is stable and readable, e.g. `austen/emma/ch012`."""

    doc_id: str
    text: str


def load_documents(dataset: str = "austen", *, allow_fallback: bool = True) -> list[Document]:
    """Load a named corpus, a .txt/.jsonl/.parquet path, or a hub dataset, in a fixed order."""
    builtin: dict[str, Callable[[], list[Document]]] = {
        "austen": load_austen,
        "pydocs": load_pydocs,
        "mix": lambda: load_austen() + load_pydocs(),
    }
    if dataset in builtin:
        try:
            return builtin[dataset]()
        except AptUnavailable as exc:
            if not allow_fallback:
                raise
            return _cpython_fallback(dataset, exc)
    path = Path(dataset).expanduser()
    if path.is_dir() or path.is_file() or path.suffix in _LOCAL_SUFFIXES:
        return _load_local(path)
    return _load_hub(dataset)


# 10%, not 5%: Austen has only 275 chapters, and 5% left ~14k words to evaluate on.
HELDOUT_PERCENT = 10


def heldout(doc: Document) -> bool:
    """True for the ~10% of documents held out for evaluation, chosen by a hash of doc_id."""
    # Hashing the id (not the position) keeps the split fixed however documents are ordered.
    return int(hashlib.sha1(doc.doc_id.encode()).hexdigest()[:8], 16) % 100 < HELDOUT_PERCENT


def load_austen() -> list[Document]:
    """Jane Austen's six novels, one document per chapter (front matter is chapter 0)."""
    return _cached("austen", _parse_austen)


def load_pydocs() -> list[Document]:
    """Python 3.11's documentation sources, one document per .rst.txt file."""
    return _cached("pydocs", _parse_pydocs)


def austen_data_dir() -> Path:
    """The janeaustenr package's R data directory, fetched on first use."""
    return fetch_deb(_AUSTEN_PACKAGE, cache_dir() / "corpus" / "austen") / _AUSTEN_DATA


def _parse_austen() -> list[Document]:
    books = read_rdata_dir(austen_data_dir())
    docs = []
    for book in sorted(books):
        lines = books[book]
        if not isinstance(lines, list):
            raise UserError(f"{_AUSTEN_PACKAGE}: '{book}' is not a character vector")
        for number, chunk in enumerate(_split_chapters([line or "" for line in lines])):
            text = _paragraphs(chunk)
            if text:  # chapter numbers stay fixed even if a book has no front matter
                docs.append(Document(f"austen/{book}/ch{number:03d}", text))
    return docs


def _split_chapters(lines: list[str]) -> list[list[str]]:
    """Cut a book at its chapter headings; a volume heading goes with the chapter after it."""
    starts = []
    for i, line in enumerate(lines):
        if _CHAPTER.fullmatch(line.strip()):
            j = i - 1
            while j >= 0 and not lines[j].strip():
                j -= 1
            starts.append(j if j >= 0 and _VOLUME.fullmatch(lines[j].strip()) else i)
    bounds = [0, *starts, len(lines)]
    return [lines[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def _paragraphs(lines: list[str]) -> str:
    """Join wrapped lines into paragraphs; blank lines separate paragraphs."""
    paragraphs, current = [], []
    for line in lines:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)


def _parse_pydocs() -> list[Document]:
    root = fetch_deb(_PYDOCS_PACKAGE, cache_dir() / "corpus" / "pydocs") / _PYDOCS_SOURCES
    files = sorted(root.rglob("*.rst.txt"), key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise UserError(f"{_PYDOCS_PACKAGE} unpacked, but {root} holds no .rst.txt files")
    return [
        Document(f"pydocs/{p.relative_to(root).as_posix()}", p.read_text(encoding="utf-8"))
        for p in files
    ]


def _cached(name: str, parse: Callable[[], list[Document]]) -> list[Document]:
    """Return the parsed corpus from its JSONL cache, parsing and writing it on first use."""
    path = cache_dir() / "corpus" / f"{name}.v{_CACHE_VERSION}.jsonl"
    if path.exists():
        return list(_read_jsonl(path))
    docs = parse()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a concurrent or interrupted run never sees half a file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps({"doc_id": doc.doc_id, "text": doc.text}) + "\n")
    os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is ordinary user data
    os.replace(tmp, path)
    return docs


def _read_jsonl(path: Path) -> Iterable[Document]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            yield Document(record["doc_id"], record["text"])


def _cpython_fallback(dataset: str, exc: AptUnavailable) -> list[Document]:
    """CPython's bundled help topics (~0.1M tokens): small, but present on every install."""
    from pydoc_data.topics import topics

    print(
        f"saebench: warning: corpus '{dataset}' is unavailable ({exc}); using the CPython "
        "fallback instead (pydoc_data.topics, ~0.1M tokens, doc_ids 'cpython-topics/...')",
        file=sys.stderr,
    )
    return [Document(f"cpython-topics/{name}", topics[name]) for name in sorted(topics)]


def _read_text(path: Path) -> str:
    """A file's text, or one clear line when it is binary (random bytes, a .gz, ...)."""
    data = path.read_bytes()
    try:
        # Universal newlines, as Path.read_text gives (token windows must not change).
        return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as err:
        hint = " (it looks gzip-compressed: decompress it first)" if data[:2] == b"\x1f\x8b" else ""
        raise UserError(
            f"dataset file {path} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
            f"{err.start}){hint}; give UTF-8 .txt or .jsonl, or .parquet with a 'text' column"
        ) from None


def _load_local(path: Path) -> list[Document]:
    """A text file or a directory of .txt files (one document per file), .jsonl, or .parquet."""
    if not path.exists():
        raise UserError(f"dataset path {path} does not exist")
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise UserError(f"dataset directory {path} holds no .txt files")
        return [Document(p.relative_to(path).as_posix(), _read_text(p)) for p in files]
    if path.suffix == ".jsonl":
        return _load_jsonl(path)
    if path.suffix != ".parquet":  # .txt, or any other existing file: plain text
        return [Document(path.name, _read_text(path))]
    import pyarrow as pa  # imported here: only parquet users pay for it
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        why = str(err).splitlines()[0]
        raise UserError(f"{path} is not a readable Parquet file: {why}") from None
    if "text" not in table.column_names:
        raise UserError(f"{path} has no 'text' column (columns: {table.column_names})")
    texts = table.column("text").to_pylist()
    return [Document(f"{path.stem}/{i:07d}", t) for i, t in enumerate(texts) if t]


def _load_jsonl(path: Path) -> list[Document]:
    docs = []
    for lineno, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)["text"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"{path}:{lineno}: expected a JSON object with 'text'") from exc
        docs.append(Document(f"{path.stem}/{lineno:07d}", text))
    return docs


def _load_hub(name: str) -> list[Document]:
    """A Hugging Face dataset name, if reachable, with a `text` column."""
    message = (
        f"unknown dataset '{name}': expected austen, pydocs, mix, a .txt/.jsonl/.parquet "
        "path, or a reachable hub dataset"
    )
    if not _hub_reachable():
        # Without this check an unreachable hub costs ~25 s of retries before failing.
        raise UserError(
            f"{message} (the hub is unreachable; set HF_HUB_OFFLINE=1 to use its local cache)"
        )
    try:
        import datasets  # slow to import, so only for hub names

        table = datasets.load_dataset(name, split="train")
    except Exception as exc:  # the hub raises many types; all mean "not loadable"
        raise UserError(message) from exc
    if "text" not in table.column_names:
        raise UserError(f"hub dataset '{name}' has no 'text' column ({table.column_names})")
    return [Document(f"{name}/{i:07d}", t) for i, t in enumerate(table["text"]) if t]


def _hub_reachable() -> bool:
    """Probe the hub briefly; offline mode means the user wants its cache, so say yes."""
    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    if any(os.environ.get(flag, "") not in ("", "0") for flag in flags):
        return True
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        # urllib honours HTTPS_PROXY, so a proxied machine is not mistaken for an offline one.
        with urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=3):
            pass
    except urllib.error.HTTPError:
        return True  # any HTTP answer means the host is there
    except (OSError, ValueError):
        return False
    return True


def fetch_all() -> None:
    """Pre-fetch and parse the default corpora (run by `make` set-up)."""
    for name, load in (("austen", load_austen), ("pydocs", load_pydocs)):
        try:
            docs = load()
        except AptUnavailable as exc:
            print(f"{name}: not fetched ({exc}); the CPython fallback will be used")
            continue
        words = sum(len(d.text.split()) for d in docs)
        print(f"{name}: {len(docs)} documents, {words:,} words, cached in {cache_dir()}")


if __name__ == "__main__":
    fetch_all()
