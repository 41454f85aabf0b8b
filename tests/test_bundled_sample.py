"""Check that the bundled sample dataset contains the awkward cases the prepare stage must handle.

``src/prodesc/data/sample_trn.jsonl`` imitates the AmazonTitles-1.3MM ``trn.json`` format: JSON Lines with
``uid``, ``title``, ``content`` (often empty) and optional ``target_ind``/``target_rel``. These tests guard the
properties the pipeline relies on: raw HTML entities and tags, exact duplicates, very long descriptions,
near-empty titles and a realistic share of empty descriptions.
"""

import json
import re
from collections import Counter
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "prodesc" / "data" / "sample_trn.jsonl"

ENTITY_RE = re.compile(r"&(#\d+|#x[0-9a-fA-F]+|[a-zA-Z]+);")
TAG_RE = re.compile(r"</?[a-zA-Z][^<>]*>")


def load_rows():
    with SAMPLE.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_every_line_is_a_record():
    rows = load_rows()
    for row in rows:
        assert isinstance(row, dict)
        assert isinstance(row["title"], str)
        assert isinstance(row["content"], str)
        assert row["uid"] is None or isinstance(row["uid"], str)


def test_size_and_empty_fraction():
    rows = load_rows()
    assert 300 <= len(rows) <= 400
    empty = sum(row["content"] == "" for row in rows)
    assert 0.33 <= empty / len(rows) <= 0.43


def test_raw_html_entities_and_tags():
    rows = load_rows()
    with_entity = [r for r in rows if ENTITY_RE.search(r["title"] + r["content"])]
    with_tag = [r for r in rows if TAG_RE.search(r["content"])]
    assert len(with_entity) >= 40
    assert len(with_tag) >= 8


def test_exact_duplicates():
    rows = load_rows()
    pairs = Counter((r["title"], r["content"]) for r in rows if r["content"])
    assert sum(n - 1 for n in pairs.values()) >= 5


def test_length_extremes():
    rows = load_rows()
    assert sum(len(r["content"]) > 2500 for r in rows) >= 3
    assert sum(len(r["title"]) < 3 and r["content"] != "" for r in rows) >= 2
