"""Read R's XDR serialization format far enough to load a package's lazy-load data.

An R package's `data/Rdata.rdx` is a serialized list whose `variables` entry maps each
object name to `[offset, length]` inside `data/Rdata.rdb`; each blob there is one
compressed serialized object. We read these with the standard library so that the default
corpus needs neither R (700 Debian packages) nor a third-party parser.

Format reference: R Internals, "Serialization Formats", and src/main/serialize.c.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from pathlib import Path
from typing import Any

# SEXP type codes (Rinternals.h) and the pseudo-types used only in streams (serialize.c).
SYMSXP, LISTSXP, LANGSXP = 1, 2, 6
CHARSXP, LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP, EXPRSXP = 9, 10, 13, 14, 16, 19, 20
ATTRLISTSXP, ATTRLANGSXP, BASEENV_SXP, EMPTYENV_SXP = 239, 240, 241, 242
GLOBALENV_SXP, NILVALUE_SXP, REFSXP = 253, 254, 255

_PAIRLIST_TYPES = {LISTSXP, ATTRLISTSXP}
_ENV_MARKERS = {BASEENV_SXP: "<baseenv>", EMPTYENV_SXP: "<emptyenv>", GLOBALENV_SXP: "<globalenv>"}

# Flag word layout: type in the low byte, then is-object, has-attr, has-tag bits, then gp
# "levels" from bit 12. For CHARSXP the levels carry the string's encoding.
_HAS_ATTR, _HAS_TAG = 1 << 9, 1 << 10
_LATIN1, _BYTES = 1 << 2, 1 << 1
NA_INTEGER = -(2**31)


class RDataError(ValueError):
    """The bytes are not an R serialization stream this reader understands."""


class Symbol(str):
    """An R symbol (name), kept distinct from a character string."""


def read_rdata_dir(data_dir: Path) -> dict[str, object]:
    """Map each object in `data_dir/Rdata.rdx` + `Rdata.rdb` to a Python value."""
    index = loads(_decompress_file((data_dir / "Rdata.rdx").read_bytes()))
    if not isinstance(index, dict) or not isinstance(index.get("variables"), dict):
        raise RDataError(f"{data_dir / 'Rdata.rdx'}: no 'variables' index")
    blob = (data_dir / "Rdata.rdb").read_bytes()
    out: dict[str, object] = {}
    for name, (offset, length) in index["variables"].items():
        out[name] = loads(_decompress_blob(blob[offset : offset + length]))
    return out


def loads(data: bytes) -> Any:
    """Parse one serialized R object (uncompressed, XDR format)."""
    return _Reader(data).read_stream()


def _decompress_file(raw: bytes) -> bytes:
    """Undo the whole-file compression saveRDS may apply (gzip by default)."""
    if raw[:2] == b"\x1f\x8b":
        return gzip.decompress(raw)
    if raw[:3] == b"BZh":
        return bz2.decompress(raw)
    if raw[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(raw)
    if raw[:2] == b"X\n":
        return raw
    return _decompress_blob(raw)


def _decompress_blob(raw: bytes) -> bytes:
    """Undo lazy-load framing: 4-byte big-endian length, then zlib (or a typed stream)."""
    (expected,) = struct.unpack(">I", raw[:4])
    body = raw[4:]
    # compress=2/3 in makeLazyLoadDB adds a type byte: '2' bzip2, 'Z' xz, '0' stored.
    if body[:1] == b"Z":
        out = lzma.decompress(body[1:])
    elif body[:1] == b"2":
        out = bz2.decompress(body[1:])
    elif body[:1] == b"0":
        out = body[1:]
    else:
        out = zlib.decompress(body)
    if len(out) != expected:
        raise RDataError(f"blob inflated to {len(out)} bytes, header says {expected}")
    return out


class _Reader:
    """Cursor over one XDR stream, plus the reference table that REFSXP indexes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.refs: list[Any] = []
        self.native_encoding = "utf-8"

    def read_stream(self) -> Any:
        if self.data[:2] != b"X\n":
            raise RDataError(f"unsupported serialization format {self.data[:2]!r}; need XDR")
        self.pos = 2
        version = self.int()
        self.take(8)  # writer's R version, then the minimum R version that can read it
        if version == 3:
            n = self.int()
            self.native_encoding = self.take(n).decode("ascii")
        elif version != 2:
            raise RDataError(f"unsupported serialization version {version}")
        return self.item()

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise RDataError("stream ends early")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:  # long vector: two more ints, upper then lower 32 bits
            upper, lower = struct.unpack(">II", self.take(8))
            n = (upper << 32) + lower
        return n

    def item(self) -> Any:
        flags = self.int()
        kind = flags & 0xFF
        if kind == NILVALUE_SXP:
            return None
        if kind == REFSXP:
            index = flags >> 8 or self.int()
            return self.refs[index - 1]
        if kind in _ENV_MARKERS:
            return _ENV_MARKERS[kind]
        if kind == SYMSXP:
            symbol = Symbol(self.item() or "")
            self.refs.append(symbol)  # symbols enter the table so later REFSXPs can name them
            return symbol
        if kind in _PAIRLIST_TYPES or kind == LANGSXP:
            return self.pairlist(flags)
        if kind == CHARSXP:
            return self.charsxp(flags)
        value = self.vector(kind)
        attrs = self.attributes() if flags & _HAS_ATTR else {}
        return _with_names(value, attrs) if kind in (VECSXP, EXPRSXP) else value

    def attributes(self) -> dict[str, Any]:
        attrs = self.item()
        return attrs if isinstance(attrs, dict) else {}

    def pairlist(self, flags: int) -> Any:
        """Read a chain of CONS cells iteratively: long pairlists would overflow recursion."""
        tags: list[str | None] = []
        values: list[Any] = []
        while True:
            if flags & _HAS_ATTR:
                self.attributes()
            tags.append(self.item() if flags & _HAS_TAG else None)
            values.append(self.item())
            flags = self.int()
            if flags & 0xFF not in _PAIRLIST_TYPES:
                break
        if flags & 0xFF != NILVALUE_SXP:  # a dotted tail; keep it as a final untagged value
            self.pos -= 4
            tags.append(None)
            values.append(self.item())
        if all(tag is not None for tag in tags):
            return {str(tag): value for tag, value in zip(tags, values, strict=True)}
        return values

    def charsxp(self, flags: int) -> str | None:
        n = self.int()
        if n == -1:
            return None  # NA_STRING
        raw = self.take(n)
        levels = flags >> 12
        if levels & _BYTES:
            return raw.decode("latin-1")  # arbitrary bytes; latin-1 keeps them one-to-one
        if levels & _LATIN1:
            return raw.decode("latin-1")
        # UTF8 or ASCII flag, or unflagged "native" text written in the header's encoding.
        encoding = "utf-8" if levels else self.native_encoding
        return raw.decode(encoding, errors="replace")

    def vector(self, kind: int) -> list[Any]:
        n = self.length()
        if kind in (STRSXP, VECSXP, EXPRSXP):
            return [self.item() for _ in range(n)]
        if kind == INTSXP:
            ints = struct.unpack(f">{n}i", self.take(4 * n))
            return [None if v == NA_INTEGER else v for v in ints]
        if kind == LGLSXP:
            ints = struct.unpack(f">{n}i", self.take(4 * n))
            return [None if v == NA_INTEGER else bool(v) for v in ints]
        if kind == REALSXP:
            return list(struct.unpack(f">{n}d", self.take(8 * n)))
        raise RDataError(f"unsupported SEXP type {kind} at byte {self.pos - 8}")


def _with_names(value: list[Any], attrs: dict[str, Any]) -> Any:
    """A generic vector with a complete `names` attribute becomes a dict, as R users expect."""
    names = attrs.get("names")
    if isinstance(names, list) and len(names) == len(value) and None not in names:
        if len(set(names)) == len(names):
            return dict(zip(names, value, strict=True))
    return value
