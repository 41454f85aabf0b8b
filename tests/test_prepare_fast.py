"""01's fast reader (pyarrow blocks + vectorized cleaning) against the line-by-line reader.

The fast reader must give exactly the prepared rows, drop counts and manifest of the line-by-line
one (``prepare(..., fast=False)``), or notice that it cannot and hand the file to that reader.
Each case says which of the two must happen, so a fast reader that wrongly accepts a file fails.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest

from prodesc import prepare as prep
from prodesc import rawdata
from prodesc.config import load_config
from prodesc.paths import RunPaths
from prodesc.rawdata import clean_arrow, clean_text
from rawfiles import rows_for

FRACTIONS = ["data.train_size=0.8", "data.validation_size=0.1", "data.test_size=0.1"]
FELL_BACK = "reading line by line"

# pieces of text that clean_text treats specially
ATOMS = [
    "a", "Zq", "9", " ", "  ", "&", ";", "#", "<", ">", "/", "-", "&amp;", "&lt;", "&gt;", "&#8217;", "&#x27;", "&#38;",
    "&amp;amp;", "&amp;#8217;", "&amp;amp;amp;amp;lt;", "&nbsp;", "&notit;", "&#0;", "&#128;", "&#xD800;",
    "&#1114112;", "&quot", "&Tab;", "&#9;", "&#10;", "&#x85;", "&#8203;", "&#65279;", "&#11;", "<br>", "<br />",
    "<b>", "</b>", "<p class='x'>", "<!--", "-->", "<a\nhref=x>", "<a\u00a0b>", "<1>", "< b>", "<b/>", "&lt;b&gt;",
    "&lt;!--", "x&#60;b&#62;y", "\x00", "\x01", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1f", "\x7f", "\x85",
    "\u00a0", "\u1680", "\u2003", "\u2028", "\u202f", "\u3000", "\u200b", "\ufeff", "\u00ad", "é", "’", "😀",
    "\u0378", "\U000e0001",
]


def tricky_strings(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(ATOMS) for _ in range(rng.randint(0, 12))) for _ in range(n)]


def test_clean_arrow_equals_clean_text():
    import pyarrow as pa

    texts = tricky_strings(5000, seed=1) + ["", " ", "plain words only", "Judith Kerr&#8217;s best&#8211;selling"]
    got = clean_arrow(pa.array(texts)).to_pylist()
    want = [clean_text(t) for t in texts]
    assert [(t, g) for t, g, w in zip(texts, got, want) if g != w] == []
    assert sum(g != t for g, t in zip(got, texts)) > 4000  # the strings were really dirty


# --------------------------------------------------------------------------- whole files


def tricky_rows() -> list[dict]:
    """Rows with every kind of mess clean_text handles, plus drops of every content kind."""
    rng = random.Random(7)
    rows = rows_for(60)
    for i, text in enumerate(tricky_strings(150, seed=2)):
        rows.append({"uid": None if i % 5 == 0 else f"U{i}", "title": f"Item {i} {text[:30]}",
                     "content": f"Long enough words here {i}: {text} and more.",
                     "target_ind": [i, i + 1], "target_rel": [1.0, 0.5]})
    rows += [
        {"title": "No uid at all", "content": "A description long enough to keep &amp; clean."},
        {"uid": "D1", "title": "Dup &amp; Co", "content": "The same pair after cleaning, twice over."},
        {"uid": "D2", "title": "Dup & Co", "content": "The same  pair after cleaning,\ttwice over."},
        {"uid": "S", "title": "ab", "content": "Title too short but the content is long enough."},
        {"uid": "C", "title": "Content too short", "content": "tiny &amp; <b>x</b>"},
        {"uid": "L", "title": "Content too long", "content": "word " * 500},
        {"uid": "E", "title": "Only tags", "content": "<br /> <p></p>&nbsp;"},
    ]
    rng.shuffle(rows)
    return rows


def lines(rows: list) -> list[str]:
    return [json.dumps(r, ensure_ascii=bool(i % 2)) for i, r in enumerate(rows)]  # escaped and raw UTF-8


def jsonl(rows: list, sep: str = "\n") -> bytes:
    return (sep.join(lines(rows)) + sep).encode()


def padded(rows: list) -> bytes:
    out = lines(rows)
    out[3] = "   " + out[3] + " \t"
    out.insert(10, "")
    out.insert(20, "  \t ")
    return "\r\n".join(out).encode()  # CRLF, blank lines, padding, no final newline


def with_line(rows: list, at: int, raw: bytes) -> bytes:
    data = lines(rows)
    return b"\n".join(line.encode() for line in data[:at]) + b"\n" + raw + b"\n" + "\n".join(data[at:]).encode() + b"\n"


ROWS = tricky_rows()
GOOD = dict(ROWS[0])
CASES = {  # name: (file bytes, the fast reader must take it)
    "entities_tags_spaces": (jsonl(ROWS), True),
    "crlf_blank_padded_no_final_newline": (padded(ROWS), True),
    "gzip": (gzip.compress(jsonl(ROWS), mtime=0), True),
    "utf8_bom": (b"\xef\xbb\xbf" + jsonl(ROWS), True),
    "gzip_utf8_bom": (gzip.compress(b"\xef\xbb\xbf" + jsonl(ROWS), mtime=0), True),
    "malformed_lines": (with_line(ROWS, 5, b'{"title": "broken') + b"[1, 2]\n" + b'{"title": "caf\xe9", "content": "x"}\n', False),
    "bad_utf8_in_an_unread_field": (with_line(ROWS, 9, b'{"title": "ok title", "content": "a fine description", "x": "\xff"}'), False),
    "utf8_encoded_surrogate": (with_line(ROWS, 9, b'{"title": "t", "content": "a fine description", "x": "\xed\xa0\x80"}'), False),
    "two_objects_on_one_line": (with_line(ROWS, 7, (json.dumps(GOOD) + " " + json.dumps(GOOD)).encode()), False),
    "one_object_over_two_lines": (with_line(ROWS, 7, json.dumps(GOOD).replace(", ", ",\n", 1).encode()), False),
    "null_title": (with_line(ROWS, 4, b'{"title": null, "content": "a fine description here"}'), False),
    "missing_content": (with_line(ROWS, 4, b'{"title": "no content key"}'), False),
    "number_title": (with_line(ROWS, 4, b'{"title": 12345, "content": "a fine description here"}'), False),
    "number_uid": (with_line(ROWS, 4, b'{"uid": 77, "title": "numbered", "content": "a fine description here"}'), False),
    "top_level_null": (with_line(ROWS, 4, b"null"), False),
    "nan_in_a_field": (with_line(ROWS, 4, b'{"title": "t", "content": "a fine description here", "x": NaN}'), True),
    "json_array": (json.dumps(ROWS).encode(), False),
    "utf16": (jsonl(ROWS).decode().encode("utf-16"), False),
}


def run(root: Path, source: Path, fast: bool, capsys) -> tuple[dict, dict, str]:
    import datasets

    cfg = load_config("cpu", [f"data.source={source}", *FRACTIONS, "data.max_malformed_fraction=0.05"])
    paths = RunPaths.from_config(cfg, root)
    manifest = prep.prepare(cfg, paths, fast=fast)
    log = capsys.readouterr().err
    ds = datasets.load_from_disk(str(paths.prepared_dataset))
    for key in ("created", "duration_s"):
        manifest.pop(key)
    return manifest, {split: ds[split].to_list() for split in prep.SPLITS}, log


@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_reader_gives_what_the_line_reader_gives(tmp_path, capsys, case):
    data, fast_ok = CASES[case]
    source = tmp_path / "trn.json"
    source.write_bytes(data)
    fast = run(tmp_path / "fast", source, True, capsys)
    lines_ = run(tmp_path / "lines", source, False, capsys)
    assert (FELL_BACK not in fast[2]) == fast_ok, fast[2]
    assert fast[0] == lines_[0]
    assert fast[1] == lines_[1]
    assert fast[0]["kept"] > 100


@pytest.mark.parametrize("packed", [False, True])
def test_a_line_longer_than_a_block_and_a_duplicate_across_blocks(tmp_path, capsys, monkeypatch, packed):
    """Small blocks (byte ranges of a plain file, decompressed bytes of a gzip one): a 200 kB
    line makes a longer block, dedup carries over block edges."""
    monkeypatch.setattr(rawdata, "FAST_BLOCK", 1 << 12)
    rows = ROWS[:40] + [r for r in ROWS[:40] if r.get("content")] + ROWS[40:]
    rows.insert(50, {"uid": "huge", "title": "A very long row", "content": "long text " * 20_000})
    source = tmp_path / "trn.json"
    source.write_bytes(gzip.compress(b"\xef\xbb\xbf" + jsonl(rows)) if packed else jsonl(rows))
    fast = run(tmp_path / "fast", source, True, capsys)
    lines_ = run(tmp_path / "lines", source, False, capsys)
    assert FELL_BACK not in fast[2]
    assert fast[:2] == lines_[:2]
    assert fast[0]["dropped"]["duplicate"] > 20 and fast[0]["dropped"]["content_too_long"] >= 2


@pytest.mark.parametrize("case", ["entities_tags_spaces", "malformed_lines"])
def test_worker_processes_give_the_same_rows(tmp_path, capsys, monkeypatch, case):
    """The worker pool a big file gets on a multi-core machine (forced here for a small file):
    same rows as in-process, and a block that needs the line reader still hands the file over."""
    monkeypatch.setattr(prep, "POOL_MIN_BYTES", 0)
    monkeypatch.setattr(prep, "_main_is_safe", lambda: True)  # pytest's main module is guarded
    monkeypatch.setattr(prep, "block_workers", lambda size: 2)
    monkeypatch.setattr(rawdata, "FAST_BLOCK", 1 << 12)
    data, fast_ok = CASES[case]
    source = tmp_path / "trn.json"
    source.write_bytes(data)
    pooled = run(tmp_path / "pool", source, True, capsys)
    lines_ = run(tmp_path / "lines", source, False, capsys)
    assert (FELL_BACK not in pooled[2]) == fast_ok
    assert pooled[:2] == lines_[:2]
