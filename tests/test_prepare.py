"""01_prepare: reading every input form, cleaning, filtering, dedup, seeded splits, manifest."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from prodesc import prepare as prep
from prodesc.config import load_config
from prodesc.errors import DataError, UserError
from prodesc.paths import RunPaths
from prodesc.rawdata import (
    BOILERPLATE,
    EDITION_NOTE,
    REVIEW_BYLINE,
    clean_text,
    cut_boilerplate,
    cut_boilerplate_arrow,
    respace_glue,
)
from rawfiles import SHARED_SAMPLE, rows_for, write

GLUED_NOTE = re.compile(r"refers to (?:an alternate|the)[A-Z]|[a-z)]edition\b")
"""Amazon's edition note with the binding name glued to its neighbours (respace_glue)."""
GLUED = re.compile(r"[a-z]{2}[.!?][A-Z][a-z]|\b[a-z]{3,}[A-Z][a-z]{2,}\b")
"""A sentence glued to the one before it, or a lower-case word to a capitalised one (respace_glue;
glue between capitalised words, "PlanesShe", cannot be told from a name like "HarperCollins")."""
ANY_NOTE = re.compile(r"refers to (?:an?|the).*?edition", re.I)
"""Amazon's edition note in any form (a looser pattern than 01's, to catch what it might miss)."""
KEEP_NOTE = "data.drop_edition_note=false"

FRACTIONS = ["data.train_size=0.8", "data.validation_size=0.1", "data.test_size=0.1"]


def run(root: Path, source, *overrides: str):
    """Prepare ``source`` under ``root``; return (manifest, DatasetDict, RunPaths)."""
    import datasets

    cfg = load_config("cpu", [f"data.source={source}", *FRACTIONS, *overrides])
    paths = RunPaths.from_config(cfg, root)
    manifest = prep.prepare(cfg, paths)
    return manifest, datasets.load_from_disk(str(paths.prepared_dataset)), paths


def pairs(ds) -> list[tuple[str, str]]:
    return [(r["title"], r["content"]) for split in ds.values() for r in split]


def check_invariants(manifest, ds):
    assert manifest["complete"] is True
    assert manifest["rows_read"] == sum(manifest["dropped"].values()) + manifest["kept"]
    assert manifest["kept"] == manifest["not_selected"] + sum(manifest["splits"].values())
    assert {s: len(ds[s]) for s in prep.SPLITS} == manifest["splits"]
    all_pairs = pairs(ds)
    assert len(all_pairs) == len(set(all_pairs)), "duplicate (title, content) pairs"  # also: splits disjoint
    for title, content in all_pairs:
        for text in (title, content):
            assert "&#" not in text and "&amp;" not in text and "&quot;" not in text
            assert "<br" not in text and "<b>" not in text and "<p>" not in text
            assert text == text.strip() and "  " not in text and "\n" not in text
        assert len(content) >= 20 and len(title) >= 3


# --------------------------------------------------------------------------- real and bundled rows


def test_bundled_sample(tmp_path):
    manifest, ds, _ = run(tmp_path, "bundled")
    check_invariants(manifest, ds)
    assert manifest["dropped"]["empty_content"] > 0.3 * manifest["rows_read"]
    assert manifest["dropped"]["duplicate"] >= 5
    assert manifest["dropped"]["title_too_short"] >= 1
    assert manifest["dropped"]["content_too_long"] >= 1
    contents = " ".join(r["content"] for r in ds["train"])
    assert "’" in contents or "–" in contents  # entities became characters


@pytest.mark.skipif(not SHARED_SAMPLE.exists(), reason="../shared/data is not beside this checkout")
def test_real_rows_from_shared_data(tmp_path):
    manifest, ds, _ = run(tmp_path, SHARED_SAMPLE)
    check_invariants(manifest, ds)
    assert manifest["rows_read"] == 203
    assert manifest["dropped"]["empty_content"] == 4  # 3 empty, 1 that was its edition note alone
    raw = [json.loads(line) for line in SHARED_SAMPLE.read_text().splitlines()]
    entity_titles = {clean_text(r["title"]) for r in raw if "&#8217;" in r["content"]}
    kept = {r["title"]: r["content"] for split in ds.values() for r in split}
    assert any("’" in kept[t] for t in entity_titles if t in kept)
    # 64 of these rows end with Amazon's edition note: 01 cuts it out (data.drop_edition_note)
    noted = [r for r in raw if ANY_NOTE.search(r["content"])]
    assert len(noted) >= 60
    assert not any(ANY_NOTE.search(c) for c in kept.values())
    assert not any("--This" in c or c.endswith("--") for c in kept.values())
    # a description that was its note and a byline is too short once the note is cut
    assert manifest["dropped"]["content_too_short"] >= 1
    noted_kept = {clean_text(r["title"]) for r in noted} & set(kept)
    assert len(noted_kept) >= 50  # the rest of those descriptions is kept
    # 37 end with a trade review's copyright line: cut too (data.drop_review_byline), the review kept
    signed = {clean_text(r["title"]) for r in raw if "Reed Business Information" in r["content"]
              or "Cahners Business Information" in r["content"]}
    assert len(signed) >= 30
    assert not any("Copyright" in c or "Business Information" in c for c in kept.values())
    assert len(signed & set(kept)) >= 30
    # ~30 rows have sentences or words glued together where markup was stripped: 01 re-spaces them
    glued = {clean_text(r["title"]) for r in raw if GLUED.search(cut_boilerplate(clean_text(r["content"])))}
    assert len(glued & set(kept)) >= 20
    assert not any(GLUED.search(c) for c in kept.values())


@pytest.mark.skipif(not SHARED_SAMPLE.exists(), reason="../shared/data is not beside this checkout")
def test_real_rows_keeping_the_edition_note(tmp_path):
    manifest, ds, _ = run(tmp_path, SHARED_SAMPLE, KEEP_NOTE)
    check_invariants(manifest, ds)
    assert manifest["dropped"]["empty_content"] == 3
    raw = [json.loads(line) for line in SHARED_SAMPLE.read_text().splitlines()]
    kept = {r["title"]: r["content"] for split in ds.values() for r in split}
    # 24 of these raw rows glue the binding into Amazon's edition note; 01 puts the spaces back
    assert sum(bool(GLUED_NOTE.search(clean_text(r["content"]))) for r in raw) >= 20
    assert not any(GLUED_NOTE.search(c) for c in kept.values())
    assert any("refers to an alternate Paperback edition." in c for c in kept.values())


# --------------------------------------------------------------------------- splits


def test_same_seed_same_splits_other_seed_other_splits(tmp_path):
    src = write(tmp_path / "trn.jsonl", rows_for(300))
    _, a, _ = run(tmp_path / "a", src)
    _, b, _ = run(tmp_path / "b", src)
    _, c, _ = run(tmp_path / "c", src, "seed=7")
    assert all(a[s]["uid"] == b[s]["uid"] for s in prep.SPLITS)
    assert set(a["test"]["uid"]) != set(c["test"]["uid"])


def test_edition_note_is_respaced_without_moving_rows_between_splits(tmp_path, monkeypatch):
    rows = rows_for(90)
    for i, row in enumerate(rows):
        if row["content"] and i % 2:
            row["content"] += f" --This text refers to {'an alternate' if i % 4 == 1 else 'the'}Paperbackedition."
    src = write(tmp_path / "trn.jsonl", rows)
    _, fixed, _ = run(tmp_path / "fixed", src, KEEP_NOTE)
    glued_rows = [r for split in fixed.values() for r in split if "Paperback edition." in r["content"]]
    assert len(glued_rows) >= 20 and not any(GLUED_NOTE.search(r["content"]) for r in glued_rows)
    monkeypatch.setattr(prep, "respace_glue", lambda texts: texts)  # 01 as before the fix
    _, before, _ = run(tmp_path / "before", src, KEEP_NOTE)
    assert all(fixed[s]["uid"] == before[s]["uid"] for s in prep.SPLITS)  # the same rows, in order
    glued_before = [c for s in prep.SPLITS for c in before[s]["content"] if GLUED_NOTE.search(c)]
    assert len(glued_before) == len(glued_rows)


@pytest.mark.parametrize(
    "text, respaced",
    [
        ("--This text refers to an alternatePaperbackedition.",
         "--This text refers to an alternate Paperback edition."),
        ("This text refers to theAudio Cassetteedition.", "This text refers to the Audio Cassette edition."),
        ("This text refers to thePrint on Demand (Paperback)edition.",
         "This text refers to the Print on Demand (Paperback) edition."),
        ("a This text refers to theHardcoveredition. b This text refers to thePaperbackedition.",
         "a This text refers to the Hardcover edition. b This text refers to the Paperback edition."),
        # already spaced, or not the note: unchanged
        ("This text refers to an out of print or unavailable edition of this title.", None),
        ("This text refers to the Paperback edition.", None),
        ("This text refers to theory. Its edition differs.", None),
        # sentences and words glued where markup was stripped
        ("sold in 30 countries.He was born", "sold in 30 countries. He was born"),
        ("Is it love?Maybe! (Mar.)Its tour.\u201dThe end", "Is it love? Maybe! (Mar.) Its tour.\u201d The end"),
        ("a column in hisEvening Post and forHarper's Weekly", "a column in his Evening Post and for Harper's Weekly"),
        ("includingRed Hat,Blue Shoe,andGreen Kite", "including Red Hat,Blue Shoe,and Green Kite"),
        # not glue: unchanged
        ("an iPhone case for eBay sellers at McDonald's", None),
        ("call getElementById or onClick, use JavaScript", None),
        ("U.S.A. The end. e.g.The text at www.amazon.com", None),
        ("the Postcolumn runs daily", None),
    ],
)
def test_respace_glue(text, respaced):
    import pyarrow as pa

    assert respace_glue(pa.array([text, None])).to_pylist() == [respaced or text, None]


@pytest.mark.parametrize(
    "text, cut",
    [
        ("A novel. --This text refers to thePaperbackedition.", "A novel."),
        ("A novel.--This text refers to an alternatePaperbackedition.", "A novel."),
        ("Praise.' Sunday Times--This text refers to an out of print or unavailable edition of this title.",
         "Praise.' Sunday Times"),
        ("This text refers to thePrint on Demand (Paperback)edition.", ""),
        ("a This text refers to theHardcoveredition. b This text refers to the Paperback edition. c", "a b c"),
        ("A novel. — this text refers to the Kindle edition. More.", "A novel. More."),
        ("A novel.--THIS TEXT REFERS TO THE HARDCOVER EDITION.", "A novel."),
        # not the note: unchanged
        ("This text refers to theory. Its edition differs.", None),
        ("The text refers to the first edition of 1851.", None),
        ("Refers to nothing at all", None),
    ],
)
def test_cut_edition_note(text, cut):
    import pyarrow as pa

    note_only = BOILERPLATE[:1]
    assert cut_boilerplate(text, note_only) == (text if cut is None else cut)
    arrow = cut_boilerplate_arrow(pa.array([text, "plain"]), note_only)
    assert arrow.to_pylist() == [cut_boilerplate(text, note_only), "plain"]
    assert re.compile(EDITION_NOTE).search(text) is None or cut is not None


@pytest.mark.parametrize(
    "text, cut",
    [
        ("Recommended.Copyright 1991 Reed Business Information, Inc.", "Recommended."),
        ("Fine. Copyright © Reed Business Information, a division of Reed Elsevier Inc. All rights reserved.",
         "Fine."),
        ("A fable.Copyright 2001 Cahners Business Information, Inc.", "A fable."),
        ("Recommended. Copyright 2005 Reed Business Information", "Recommended."),
        ("Grades 3-5. Copyright 2004 American Library Association. All rights reserved", "Grades 3-5."),
        ("K. Collins, Library of CongressCopyright 1985 Reed Business Information, Inc.",
         "K. Collins, Library of Congress"),
        ("One. (c) Copyright 1996 Reed Business Information, Inc. Two. copyright 1997 Kirkus Associates, LP. Three",
         "One. Two. Three"),
        # with the edition note after it: both go
        ("A novel.Copyright 1990 Reed Business Information, Inc.--This text refers to thePaperbackedition.",
         "A novel."),
        # no review publisher after "Copyright": unchanged
        ("Copyright law for authors. Covers fair use.", None),
        ("Copyright 1998 by the author. A memoir.", None),
        ("Reviewed by Reed Business Information staff.", None),
    ],
)
def test_cut_review_byline(text, cut):
    import pyarrow as pa

    assert cut_boilerplate(text) == (text if cut is None else cut)
    assert cut_boilerplate_arrow(pa.array([text, "plain"])).to_pylist() == [cut_boilerplate(text), "plain"]
    assert re.compile(REVIEW_BYLINE).search(text) is None or cut is not None


def test_boilerplate_cut_before_the_length_filter_and_the_duplicate_check(tmp_path):
    rows = rows_for(60)
    body = "A long enough description of this product, the same twice."
    rows += [
        {"uid": "n1", "title": "Only a note", "content": "--This text refers to thePaperbackedition."},
        {"uid": "n2", "title": "Note and a byline", "content": "By A. Writer--This text refers to theHardcoveredition."},
        {"uid": "n3", "title": "Two editions", "content": body + "--This text refers to thePaperbackedition."},
        {"uid": "n4", "title": "Two editions", "content": body + "--This text refers to theHardcoveredition."},
        {"uid": "b1", "title": "Only a byline", "content": "Copyright 1991 Reed Business Information, Inc."},
        {"uid": "b2", "title": "Two years", "content": body + "Copyright 1990 Reed Business Information, Inc."},
        {"uid": "b3", "title": "Two years", "content": body + "Copyright 1991 Reed Business Information, Inc."},
    ]
    src = write(tmp_path / "trn.jsonl", rows)
    empty = {}
    for fast in (True, False):
        cfg = load_config("cpu", [f"data.source={src}", *FRACTIONS, f"data.name=fast-{fast}"])
        paths = RunPaths.from_config(cfg, tmp_path)
        manifest = prep.prepare(cfg, paths, fast=fast)
        import datasets

        kept = {r["uid"]: r["content"] for split in datasets.load_from_disk(str(paths.prepared_dataset)).values()
                for r in split}
        assert "n1" not in kept and "n2" not in kept and "b1" not in kept  # empty / too short once cut
        assert ("n3" in kept) != ("n4" in kept) and ("b2" in kept) != ("b3" in kept)  # one copy each
        assert list(kept.values()).count(body) == 2  # without its note or byline
        assert manifest["dropped"]["duplicate"] == 2
        empty[fast] = manifest["dropped"]["empty_content"]
    kept_all, kept_note, _ = run(tmp_path / "keep", src, KEEP_NOTE, "data.drop_review_byline=false")
    assert empty[True] == empty[False] == kept_all["dropped"]["empty_content"] + 2  # n1 and b1
    contents = [c for split in kept_note.values() for c in split["content"]]
    assert sum("Paperback edition." in c for c in contents) == 2 and sum(body in c for c in contents) == 4
    assert sum("Reed Business Information" in c for c in contents) == 3


def test_counts_and_subsample(tmp_path):
    src = write(tmp_path / "trn.jsonl", rows_for(300))  # 200 usable rows
    manifest, ds, _ = run(tmp_path, src, "data.train_size=50", "data.validation_size=10", "data.test_size=5")
    assert manifest["splits"] == {"train": 50, "validation": 10, "test": 5}
    assert manifest["not_selected"] == 200 - 65
    manifest, ds, _ = run(tmp_path / "s", src, "data.subsample=100")
    assert manifest["splits"] == {"train": 80, "validation": 10, "test": 10}


def test_split_sizes_larger_than_the_data_is_an_error(tmp_path):
    src = write(tmp_path / "trn.jsonl", rows_for(30))
    with pytest.raises(DataError, match="only 20 usable rows remain"):
        run(tmp_path, src, "data.train_size=100", "data.validation_size=10", "data.test_size=10")


@pytest.mark.parametrize(
    "sizes, available, expected",
    [((0.8, 0.1, 0.1), 195, (157, 19, 19)), ((100, 10, 10), 500, (100, 10, 10)),
     ((0, 0.1, 5), 100, (85, 10, 5)), ((10000, 1000, 1000), 12000, (10000, 1000, 1000))],
)
def test_split_counts(sizes, available, expected):
    cfg = load_config("cpu", [f"data.{s}_size={v}" for s, v in zip(prep.SPLITS, sizes)])
    assert tuple(prep.split_counts(cfg, available).values()) == expected


# --------------------------------------------------------------------------- input forms


def test_gz_array_jsonl_and_boms_give_identical_data(tmp_path):
    rows = rows_for(120)
    variants = {
        "jsonl": write(tmp_path / "a.jsonl", rows),
        "gz": write(tmp_path / "b.json.gz", rows),
        "array": write(tmp_path / "c.json", rows, layout="array"),
        "array_gz": write(tmp_path / "d.json.gz", rows, layout="array"),
        "utf8_bom": write(tmp_path / "e.jsonl", rows, encoding="utf-8-sig"),
        "utf16": write(tmp_path / "f.jsonl", rows, encoding="utf-16"),
        "utf16_array": write(tmp_path / "g.json", rows, layout="array", encoding="utf-16"),
    }
    results = {name: run(tmp_path / name, src) for name, src in variants.items()}
    reference = results["jsonl"][1]
    for name, (manifest, ds, _) in results.items():
        for split in prep.SPLITS:
            assert ds[split].to_list() == reference[split].to_list(), name
    assert results["array_gz"][0]["source"]["compression"] == "gzip"
    assert results["array_gz"][0]["source"]["layout"] == "json-array"
    assert results["utf16"][0]["source"]["encoding"] == "utf-16"


def test_gzip_is_detected_from_bytes_not_the_name(tmp_path):
    src = tmp_path / "trn.json"  # gzip data without .gz
    src.write_bytes(gzip.compress(write(tmp_path / "x.jsonl", rows_for(60)).read_bytes()))
    manifest, _, _ = run(tmp_path, src)
    assert manifest["source"]["compression"] == "gzip" and manifest["kept"] == 40


def test_malformed_lines_are_counted_not_fatal(tmp_path):
    lines = [json.dumps(r) for r in rows_for(400)]
    lines[5] = '{"title": "broken'
    lines[9] = "[1, 2]"
    src = tmp_path / "trn.jsonl"
    src.write_bytes(("\n".join(lines) + "\n\n").encode() + b'{"title": "caf\xe9", "content": "latin-1 bytes"}\n')
    manifest, ds, _ = run(tmp_path / "r", src)
    assert manifest["dropped"]["malformed_json"] == 1
    assert manifest["dropped"]["not_an_object"] == 1
    assert manifest["dropped"]["not_utf8"] == 1
    assert manifest["rows_read"] == 401
    assert "line 6" in manifest["first_malformed"]
    check_invariants(manifest, ds)


def test_too_many_malformed_lines_stop_with_the_fix(tmp_path):
    src = tmp_path / "trn.jsonl"
    src.write_text("\n".join(["{bad json"] * 10 + [json.dumps(r) for r in rows_for(90)]) + "\n")
    with pytest.raises(DataError, match=r"10 of 100 rows unreadable.*max_malformed_fraction"):
        run(tmp_path / "r", src)
    manifest, _, _ = run(tmp_path / "r2", src, "data.max_malformed_fraction=0.2")
    assert manifest["dropped"]["malformed_json"] == 10


def test_latin1_file_says_resave_as_utf8(tmp_path):
    src = tmp_path / "trn.jsonl"
    src.write_bytes("".join(
        json.dumps({"title": f"Café crème {i}", "content": "Délicieux café, très bon. " * 2}, ensure_ascii=False) + "\n"
        for i in range(50)
    ).encode("latin-1"))
    with pytest.raises(DataError, match="re-save it as UTF-8"):
        run(tmp_path / "r", src)


FULL_GZ = gzip.compress("".join(json.dumps(r) + "\n" for r in rows_for(3000)).encode())
TRUNCATED_GZ = FULL_GZ[: len(FULL_GZ) // 2]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p, "not found"),
        (lambda p: (p.mkdir(), p)[1], "is a folder"),
        (lambda p: (p.write_bytes(b""), p)[1], "is empty"),
        (lambda p: (p.write_bytes(TRUNCATED_GZ), p)[1], "truncated or corrupt gzip"),
        (lambda p: (p.write_text('[{"title": "A thing", "content": "x"}, {"title"'), p)[1], "malformed|not closed"),
    ],
)
def test_unreadable_files_give_one_clear_error(tmp_path, make, message):
    src = make(tmp_path / "trn.json")
    with pytest.raises(DataError, match=message):
        run(tmp_path / "r", src)
    assert not (tmp_path / "r" / "data" / "prepared").exists() or not any(
        p for p in (tmp_path / "r" / "data" / "prepared").iterdir() if not p.name.startswith(".")
    )


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"title": f"Item {i}", "description": "no content field here at all"} for i in range(20)], "missing_content.*need 'title' and 'content'"),
        ([{"title": i, "content": ["a", "list"]} for i in range(20)], "wrong_type.*must be strings"),
        ([{"title": f"Item {i}", "content": ""} for i in range(20)], "20 empty_content"),
    ],
)
def test_all_rows_filtered_is_an_error_not_an_empty_dataset(tmp_path, rows, message):
    with pytest.raises(DataError, match=message):
        run(tmp_path / "r", write(tmp_path / "trn.jsonl", rows))


def test_wrong_types_and_missing_fields_are_counted(tmp_path):
    rows = rows_for(150) + [
        {"title": None, "content": "x" * 40}, {"title": 12345, "content": "y" * 40},
        {"content": "z" * 40}, {"title": "No content key"}, {"title": "Null content", "content": None},
    ]
    manifest, _, _ = run(tmp_path, write(tmp_path / "trn.jsonl", rows))
    assert manifest["dropped"]["wrong_type"] == 3
    assert manifest["dropped"]["missing_title"] == 1
    assert manifest["dropped"]["missing_content"] == 1


def test_a_one_megabyte_content_line_is_dropped_as_too_long(tmp_path):
    rows = rows_for(60) + [{"title": "Huge", "content": "word " * 200_000}]
    manifest, _, _ = run(tmp_path, write(tmp_path / "trn.jsonl", rows))
    assert manifest["dropped"]["content_too_long"] == 1


# --------------------------------------------------------------------------- reruns and atomicity


def test_rerun_skips_overwrite_redoes_and_a_changed_source_is_refused(tmp_path, capsys):
    src = write(tmp_path / "trn.jsonl", rows_for(90))
    first, _, paths = run(tmp_path, src)
    again, _, _ = run(tmp_path, src)
    assert again == first and "already prepared" in capsys.readouterr().err
    redone, _, _ = run(tmp_path, src, "overwrite=true")
    assert redone["created"] >= first["created"] and redone["fingerprint"] == first["fingerprint"]
    write(src, rows_for(120))  # the source file changed under the same settings
    with pytest.raises(UserError, match="another source or with other settings: pass overwrite=true"):
        run(tmp_path, src)
    manifest = json.loads(paths.prepared_manifest.read_text())
    manifest["format_version"] -= 1  # as written by the prodesc before the last format change
    paths.prepared_manifest.write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="prepared by an older prodesc .*: pass overwrite=true"):
        run(tmp_path, src)


def test_a_failure_mid_write_leaves_the_previous_dataset_untouched(tmp_path, monkeypatch):
    src = write(tmp_path / "trn.jsonl", rows_for(90))
    _, _, paths = run(tmp_path, src)
    before = {p: p.read_bytes() for p in paths.prepared.rglob("*") if p.is_file()}

    def explode(*args, **kwargs):
        raise OSError(28, "No space left on device")  # simulated full disk while saving

    monkeypatch.setattr(prep, "write_dataset", explode)
    with pytest.raises(OSError):
        run(tmp_path, src, "overwrite=true")
    after = {p: p.read_bytes() for p in paths.prepared.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in paths.prepared_root.iterdir()] == [paths.prepared_name]  # no temp left


def test_prompt_and_completion_follow_the_template(tmp_path):
    src = write(tmp_path / "trn.jsonl", rows_for(60))
    manifest, ds, _ = run(tmp_path / "d", src, "data.template=descfmt")
    row = ds["train"][0]
    assert row["prompt"].endswith(f"Title: {row['title']}\n")
    assert row["completion"] == f"Description: {row['content']}"
    assert manifest["template"]["name"] == "descfmt"
    _, chat, _ = run(tmp_path / "c", src)
    assert chat["train"][0]["prompt"][-1] == {"role": "user", "content": f"Product title: {chat['train'][0]['title']}"}


def test_a_user_template_file_inside_the_root(tmp_path):
    (tmp_path / "mine.yaml").write_text('kind: text\nprompt: "Item: {title}\\nText:"\ncompletion: " {content}"\n')
    src = write(tmp_path / "trn.jsonl", rows_for(60))
    manifest, ds, _ = run(tmp_path, src, "data.template=mine.yaml")
    assert ds["train"][0]["prompt"].startswith("Item: ") and manifest["template"]["name"] == "mine"


# --------------------------------------------------------------------------- cleaning


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("Judith Kerr&#8217;s best&#8211;selling", "Judith Kerr’s best–selling"),
        ("Tom &amp;amp; Jerry &amp;#8482;", "Tom & Jerry ™"),
        ("Line one<br />line two <b>bold</b>", "Line one line two bold"),
        ("fits wrists < 7 inches and > 5", "fits wrists < 7 inches and > 5"),
        ("  tabs\tand\nnewlines   here ", "tabs and newlines here"),
        ("&lt;script&gt;alert(1)&lt;/script&gt; ok", "alert(1) ok"),
        ("a&nbsp;b\u200bc", "a bc"),
        ("<!-- hidden --> shown", "shown"),
    ],
)
def test_clean_text(raw, clean):
    assert clean_text(raw) == clean
