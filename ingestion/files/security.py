"""Defences applied to an uploaded file before any parser sees it.

File names are sanitised (no path traversal), the format is decided from the content (magic bytes and
sniffing, never the extension), oversized streams are cut off while they are being written, and
zip containers (xlsx) are checked for bombs from their central directory before anything is inflated.
"""

from __future__ import annotations

import re
import unicodedata
import zipfile
from pathlib import Path

MAX_UNCOMPRESSED_BYTES = 1024 * 1024 * 1024
MAX_COMPRESSION_RATIO = 100.0
MAX_ZIP_MEMBERS = 10_000

FORMATS = ("csv", "xlsx", "json", "jsonl", "parquet")


class RejectedFile(ValueError):
    """The file is refused before parsing; the message says why (shown to the uploader)."""


def sanitised_file_name(name: str) -> str:
    """`name` reduced to a safe base name: no directories, no control or shell-special characters."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = unicodedata.normalize("NFKC", base)
    base = re.sub(r"[^\w.\- ()]+", "_", base, flags=re.UNICODE).strip(" .")
    base = re.sub(r"\.{2,}", ".", base)
    return base[:200] or "upload"


def detected_format(path: Path) -> str:
    """The file's format from its bytes: csv (any delimited text), xlsx, json, jsonl or parquet."""
    with path.open("rb") as fh:
        head = fh.read(65536)
        if head[:4] == b"PAR1":
            fh.seek(-4, 2)
            if fh.read(4) == b"PAR1":
                return "parquet"
            raise RejectedFile("truncated Parquet file (no footer magic)")
    if head[:4] == b"PK\x03\x04":
        return _zip_format(path)
    if head[:8] == b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1":
        raise RejectedFile("legacy .xls (OLE2) workbooks are not accepted; save as .xlsx or CSV")
    if not head:
        raise RejectedFile("empty file")
    text = _as_text(head)
    if text is None:
        raise RejectedFile("binary content that is neither CSV, JSON, Excel (.xlsx) nor Parquet")
    stripped = text.lstrip("\ufeff \t\r\n")
    if stripped.startswith("["):
        return "json"
    if stripped.startswith("{"):
        first, _, rest = stripped.partition("\n")
        # A JSON-Lines file has a complete object on its first line and more objects after it.
        if first.rstrip().endswith("}") and rest.lstrip().startswith("{"):
            return "jsonl"
        return "json"
    return "csv"


def _as_text(head: bytes) -> str | None:
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return head.decode("utf-16", errors="ignore")
    if b"\x00" in head:
        return None
    return head.decode("utf-8", errors="replace")


def _zip_format(path: Path) -> str:
    check_zip_container(path)
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
    if "[Content_Types].xml" in names and any(n.startswith("xl/") for n in names):
        return "xlsx"
    raise RejectedFile("zip archive that is not an Excel .xlsx workbook")


def check_zip_container(
    path: Path,
    *,
    max_uncompressed_bytes: int = MAX_UNCOMPRESSED_BYTES,
    max_ratio: float = MAX_COMPRESSION_RATIO,
) -> None:
    """Refuse zip bombs using the central directory only (sizes and ratios), before inflating anything."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except zipfile.BadZipFile as exc:
        raise RejectedFile(f"corrupt zip/xlsx container: {exc}") from exc
    if len(infos) > MAX_ZIP_MEMBERS:
        raise RejectedFile(f"zip container has {len(infos)} members (limit {MAX_ZIP_MEMBERS})")
    total = sum(i.file_size for i in infos)
    packed = max(sum(i.compress_size for i in infos), 1)
    if total > max_uncompressed_bytes:
        raise RejectedFile(
            f"workbook expands to {total:,} bytes (limit {max_uncompressed_bytes:,}): refused as a zip bomb"
        )
    if total / packed > max_ratio:
        raise RejectedFile(
            f"compression ratio {total / packed:.0f}:1 exceeds {max_ratio:.0f}:1: refused as a zip bomb"
        )
    for info in infos:
        if info.file_size > 1_000_000 and info.file_size / max(info.compress_size, 1) > max_ratio:
            raise RejectedFile(f"member {info.filename!r} has compression ratio above {max_ratio:.0f}:1")
