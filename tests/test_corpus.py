"""The corpus layer: the R data reader, the default corpora, local files and the fallback."""

from __future__ import annotations

import json
import struct
import warnings
import zlib
from pathlib import Path

import pytest

from store import corpus, debian
from store.corpus import Document, heldout, load_documents
from store.errors import AptUnavailable, UserError
from store.rdata_reader import loads, read_rdata_dir

# --- A hand-built XDR stream, so the reader is tested without any fetched file. ---


def _i(*values: int) -> bytes:
    return struct.pack(f">{len(values)}i", *values)


def _char(text: str | None, levels: int = 1 << 3) -> bytes:
    if text is None:
        return _i(9, -1)  # NA_STRING
    raw = text.encode("latin-1" if levels == 1 << 2 else "utf-8")
    return _i(9 | levels << 12, len(raw)) + raw


def _names(*names: str, symbol: bytes) -> bytes:
    """An attribute pairlist `names = c(...)`; LISTSXP with the has-tag bit."""
    strs = _i(16, len(names)) + b"".join(_char(n) for n in names)
    return _i(2 | 1 << 10) + symbol + strs + _i(254)


def _synthetic_stream(version: int) -> bytes:
    header = b"X\n" + _i(version, 0x040201, 0x030500)
    if version == 3:
        header += _i(5) + b"UTF-8"
    first_names = _i(1) + _char("names")  # SYMSXP; enters the reference table as ref 1
    inner = (
        _i(19 | 1 << 9, 3)  # VECSXP with attributes, length 3
        + _i(16, 3)
        + _char("a")
        + _char(None)
        + _char("café", levels=1 << 2)
        + _i(13, 2, 7, -(2**31))  # INTSXP c(7L, NA)
        + _i(10, 3, 1, 0, -(2**31))  # LGLSXP c(TRUE, FALSE, NA)
        + _names("s", "i", "l", symbol=first_names)
    )
    reals = _i(14, 2) + struct.pack(">2d", 0.5, -2.0)
    outer = (
        _i(19 | 1 << 9, 2)
        + inner
        + reals
        + _names("inner", "x", symbol=_i(0x1FF))  # REFSXP back to the `names` symbol
    )
    return header + outer


@pytest.mark.parametrize("version", [2, 3])
def test_reader_parses_a_hand_built_stream(version: int) -> None:
    value = loads(_synthetic_stream(version))
    assert value == {
        "inner": {"s": ["a", None, "café"], "i": [7, None], "l": [True, False, None]},
        "x": [0.5, -2.0],
    }


def test_reader_follows_the_lazy_load_index(tmp_path: Path) -> None:
    body = _synthetic_stream(3)
    framed = struct.pack(">I", len(body)) + zlib.compress(body)
    (tmp_path / "Rdata.rdb").write_bytes(b"junk" + framed)
    index = (
        b"X\n"
        + _i(2, 0x040201, 0x020300)
        + _i(19 | 1 << 9, 1)
        + _i(19 | 1 << 9, 1)
        + _i(13, 2, 4, len(framed))
        + _names("obj", symbol=_i(1) + _char("names"))
        + _names("variables", symbol=_i(0x1FF))
    )
    (tmp_path / "Rdata.rdx").write_bytes(struct.pack(">I", len(index)) + zlib.compress(index))
    assert read_rdata_dir(tmp_path) == {"obj": loads(body)}


# --- The real janeaustenr files, with the `rdata` package as an oracle. ---


@pytest.fixture(scope="session")
def austen_dir() -> Path:
    try:
        return corpus.austen_data_dir()
    except AptUnavailable as exc:
        pytest.skip(f"apt cannot fetch r-cran-janeaustenr here: {exc}")


@pytest.fixture(scope="session")
def austen(austen_dir: Path) -> list[Document]:
    return load_documents("austen", allow_fallback=False)


def test_reader_matches_the_rdata_package(austen_dir: Path) -> None:
    rdata = pytest.importorskip("rdata")
    ours = read_rdata_dir(austen_dir)
    blob = (austen_dir / "Rdata.rdb").read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata warns it must guess these are RDS streams
        index = rdata.conversion.convert(rdata.parser.parse_file(austen_dir / "Rdata.rdx"))
        assert sorted(ours) == sorted(str(k) for k in index["variables"])
        for name, (offset, length) in index["variables"].items():
            raw = zlib.decompress(blob[offset + 4 : offset + length])
            theirs = rdata.conversion.convert(rdata.parser.parse_data(raw))
            assert ours[str(name)] == [str(s) for s in theirs.tolist()], name


def test_austen_has_six_books_of_chapters(austen: list[Document]) -> None:
    books = {d.doc_id.split("/")[1] for d in austen}
    assert books == {
        "emma",
        "mansfieldpark",
        "northangerabbey",
        "persuasion",
        "prideprejudice",
        "sensesensibility",
    }
    # 269 chapters (55 + 48 + 31 + 24 + 61 + 50) plus each book's front matter as ch000.
    assert len(austen) == 275
    words = sum(len(d.text.split()) for d in austen)
    assert 650_000 < words < 780_000
    first = next(d for d in austen if d.doc_id == "austen/prideprejudice/ch001")
    assert first.text.startswith("Chapter 1\n\nIt is a truth universally acknowledged, that")
    assert [d.doc_id for d in austen] == sorted(d.doc_id for d in austen)


def test_volume_headings_open_the_next_chapter(austen: list[Document]) -> None:
    emma = {d.doc_id: d.text for d in austen if d.doc_id.startswith("austen/emma/")}
    assert emma["austen/emma/ch019"].startswith("VOLUME II\n\nCHAPTER I\n\n")
    assert "VOLUME" not in emma["austen/emma/ch018"]


def test_heldout_split_is_deterministic_and_small(austen: list[Document]) -> None:
    held = [d.doc_id for d in austen if heldout(d)]
    assert held == [d.doc_id for d in reversed(austen) if heldout(d)][::-1]
    assert held == [d.doc_id for d in load_documents("austen") if heldout(d)]
    assert 0.05 <= len(held) / len(austen) <= 0.15
    assert heldout(Document("austen/emma/ch014", "whatever the text"))


def test_fetch_deb_reuses_the_unpacked_tree(austen_dir: Path) -> None:
    root = next(p for p in austen_dir.parents if (p / debian.MARKER).exists())
    assert debian.fetch_deb("r-cran-janeaustenr", root) == root


# --- Local files, unknown names, and the fallback. ---


def test_local_txt_jsonl_and_parquet(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("second file")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("first\n\nfile")
    assert load_documents(str(tmp_path / "b.txt")) == [Document("b.txt", "second file")]
    assert [d.doc_id for d in load_documents(str(tmp_path))] == ["b.txt", "sub/a.txt"]

    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t, "n": 1}) for t in ["x y", "z"]) + "\n\n")
    assert [d.text for d in load_documents(str(jsonl))] == ["x y", "z"]

    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"text": ["p", "q", "r"]}), tmp_path / "d.parquet")
    docs = load_documents(str(tmp_path / "d.parquet"))
    assert [d.text for d in docs] == ["p", "q", "r"]
    assert len({d.doc_id for d in docs}) == 3


def test_bad_local_files_raise_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_documents(str(tmp_path / "missing.jsonl"))
    (tmp_path / "bad.jsonl").write_text('{"body": "no text field"}\n')
    with pytest.raises(UserError, match="bad.jsonl:1"):
        load_documents(str(tmp_path / "bad.jsonl"))


def test_unknown_dataset_raises_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpus, "_hub_reachable", lambda: False)  # never wait on the network
    with pytest.raises(UserError) as info:
        load_documents("no-such-corpus")
    assert str(info.value).startswith(
        "unknown dataset 'no-such-corpus': expected austen, pydocs, mix, "
        "a .txt/.jsonl/.parquet path, or a reachable hub dataset"
    )


def test_fallback_when_apt_is_unavailable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_apt(package: str, dest: Path) -> Path:
        raise AptUnavailable("cannot fetch: 'apt-get' is not on PATH")

    monkeypatch.setenv("SAEBENCH_CACHE", str(tmp_path))  # an empty cache, so nothing is parsed
    monkeypatch.setattr(corpus, "fetch_deb", no_apt)
    docs = load_documents("mix")
    assert len(docs) > 50
    assert all(d.doc_id.startswith("cpython-topics/") for d in docs)
    assert any(d.doc_id == "cpython-topics/assert" for d in docs)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'mix'" in err[0] and "CPython fallback" in err[0]
    with pytest.raises(AptUnavailable):
        load_documents("austen", allow_fallback=False)


def test_fetch_deb_without_apt_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get, no dpkg-deb
    with pytest.raises(AptUnavailable, match="not on PATH"):
        debian.fetch_deb("r-cran-janeaustenr", tmp_path / "deb")


_FAKE_APT = """#!/bin/sh
if [ "$1" = update ]; then touch "$FAKE_APT_STATE/updated"; exit 0; fi
if [ -e "$FAKE_APT_STATE/updated" ] && [ -z "$FAKE_APT_BROKEN" ]; then
  echo payload > "$2_1.0_all.deb"; exit 0
fi
echo "E: Unable to locate package $2" >&2; exit 100
"""
_FAKE_DPKG_DEB = """#!/bin/sh
mkdir -p "$3/usr/share" && cp "$2" "$3/usr/share/payload"
"""


@pytest.fixture
def fake_apt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """apt-get that finds packages only after `apt-get update`, as on a fresh container."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, script in (("apt-get", _FAKE_APT), ("dpkg-deb", _FAKE_DPKG_DEB)):
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_APT_STATE", str(tmp_path))
    return tmp_path


def test_fetch_deb_updates_lists_once_then_reuses(
    fake_apt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = fake_apt / "cache" / "pkg"
    assert debian.fetch_deb("pkg", dest) == dest
    assert (fake_apt / "updated").exists()
    assert (dest / "usr/share/payload").read_text() == "payload\n"
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]  # temp dir gone
    monkeypatch.setenv("FAKE_APT_BROKEN", "1")  # a second call must not need apt at all
    assert debian.fetch_deb("pkg", dest) == dest


def test_fetch_deb_failure_is_one_line(fake_apt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_APT_BROKEN", "1")
    with pytest.raises(AptUnavailable) as info:
        debian.fetch_deb("pkg", fake_apt / "cache" / "pkg")
    assert "Unable to locate package pkg" in str(info.value)
    assert "\n" not in str(info.value)
    assert not (fake_apt / "cache" / "pkg").exists()
