"""Write raw trn.json-style rows in the formats 01_prepare must read (test data made here)."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED_SAMPLE = REPO.parent / "shared" / "data" / "amazon_titles_sample.jsonl"


def rows_for(n: int, empty_every: int = 3) -> list[dict[str, Any]]:
    """``n`` synthetic rows: every ``empty_every``-th has empty content, some carry entities."""
    rows = []
    for i in range(n):
        content = "" if i % empty_every == 0 else (
            f"Sturdy item number {i} &#8211; made of steel &amp; oak, {i % 7 + 1} pieces in the box. "
            f"<br>Great for kitchens and workshops alike."
        )
        rows.append({"uid": f"B{i:09d}", "title": f"Widget Model {i} &#8217;Pro&#8217;", "content": content})
    return rows


def jsonl(rows: list[Any]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write(path: Path, rows: list[Any], layout: str = "jsonl", encoding: str = "utf-8") -> Path:
    """Write ``rows`` as JSON Lines or a JSON array, optionally gzipped (by a .gz suffix)."""
    text = jsonl(rows) if layout == "jsonl" else json.dumps(rows, ensure_ascii=False, indent=1)
    data = text.encode(encoding)  # "utf-16" and "utf-8-sig" write a BOM
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


def zipped(path: Path, members: dict[str, bytes], stored: bool = False) -> Path:
    """A zip archive of ``members`` (name: bytes), deflated or ``stored``."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path
