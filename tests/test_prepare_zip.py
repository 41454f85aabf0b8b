"""01 reads the dataset as distributed: trn.json out of its zip, and the test split from tst.json.

The release is a zip holding trn.json and tst.json (or their .gz), often in a folder, next to label
files. 01 streams the member out of the archive (nothing is extracted) through the same fast and
line-by-line readers as a plain file, so it must prepare exactly the rows the plain file gives.
With data.test_source the test split comes from the test file; the expected split is rebuilt here
from the raw rows with clean_text/cut_boilerplate, not by 01's code path.
"""

from __future__ import annotations

import gzip
import json
import re
import zipfile
from pathlib import Path

import pytest

from conftest import run_stage_subprocess
from prodesc import prepare as prep
from prodesc.config import load_config
from prodesc.errors import DataError, UserError
from prodesc.paths import RunPaths
from prodesc.rawdata import RawReader, clean_text, cut_boilerplate, respace_glue
from rawfiles import SHARED_SAMPLE, jsonl, rows_for, write, zipped

FRACTIONS = ["data.train_size=0.8", "data.validation_size=0.1", "data.test_size=0.1"]
FELL_BACK = "reading line by line"
FOLDER = "LF-AmazonTitles-1.3M"
LABELS = {f"{FOLDER}/filter_labels_train.txt": b"0 1\n", f"{FOLDER}/filter_labels_test.txt": b"2 3\n"}
"""Label files the release ships next to trn.json (01 never reads them)."""

needs_real = pytest.mark.skipif(not SHARED_SAMPLE.exists(), reason="../shared/data is not beside this checkout")


def prepared(root: Path, source, *overrides: str, fast: bool = True):
    """Prepare ``source`` under ``root``: (manifest, {split: rows}, RunPaths)."""
    import datasets

    cfg = load_config("cpu", [f"data.source={source}", *FRACTIONS, *overrides])
    paths = RunPaths.from_config(cfg, root)
    manifest = prep.prepare(cfg, paths, fast=fast)
    ds = datasets.load_from_disk(str(paths.prepared_dataset))
    return manifest, {split: ds[split].to_list() for split in prep.SPLITS}, paths


COUNTS = ("rows_read", "dropped", "kept", "not_selected", "splits", "first_malformed")


# --------------------------------------------------------------------------- the real rows, zipped


def real_zip(folder: Path, variant: str) -> tuple[Path, str, str]:
    """(zip, the member 01 must pick, its compression) of the real sample rows, as ``variant``."""
    data = SHARED_SAMPLE.read_bytes()
    packed = gzip.compress(data, mtime=0)
    test_part = data[: len(data) // 3]
    if variant == "stored_trn_json":
        return zipped(folder / "a.zip", {"trn.json": data, "tst.json": test_part}, stored=True), "trn.json", "zip"
    if variant == "deflated_trn_json":
        return zipped(folder / "b.zip", {"tst.json": test_part, "trn.json": data}), "trn.json", "zip"
    if variant == "deflated_trn_json_gz":
        return zipped(folder / "c.zip", {"trn.json.gz": packed}), "trn.json.gz", "zip+gzip"
    member = f"{FOLDER}/trn.json.gz"
    members = {f"{FOLDER}/": b"", **LABELS, member: packed, f"{FOLDER}/tst.json.gz": gzip.compress(test_part)}
    if variant == "nested_stored_gz":
        return zipped(folder / "d.zip", members, stored=True), member, "zip+gzip"
    assert variant == "nested_named_without_zip"  # found by its bytes, not its name
    return zipped(folder / "trn.json", members), member, "zip+gzip"


@pytest.fixture(scope="module")
def plain_reference(tmp_path_factory):
    """The real rows prepared from the plain file, by the fast reader (checked against the other)."""
    root = tmp_path_factory.mktemp("plain")
    fast = prepared(root / "fast", SHARED_SAMPLE)
    lines = prepared(root / "lines", SHARED_SAMPLE, fast=False)
    assert fast[1] == lines[1]
    return fast


ZIP_VARIANTS = ["stored_trn_json", "deflated_trn_json", "deflated_trn_json_gz", "nested_stored_gz",
                "nested_named_without_zip"]


@needs_real
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "lines"])
@pytest.mark.parametrize("variant", ZIP_VARIANTS)
def test_a_zip_gives_the_rows_of_the_plain_file(tmp_path, capsys, plain_reference, variant, fast):
    source, member, compression = real_zip(tmp_path, variant)
    capsys.readouterr()
    manifest, rows, _ = prepared(tmp_path / "root", source, fast=fast)
    assert (FELL_BACK in capsys.readouterr().err) is False  # the fast reader took the zip member itself
    reference_manifest, reference_rows, _ = plain_reference
    assert rows == reference_rows
    assert sum(map(len, rows.values())) > 150
    assert {k: manifest[k] for k in COUNTS} == {k: reference_manifest[k] for k in COUNTS}
    assert manifest["source"] == {
        "path": str(source), "member": member, "bytes": source.stat().st_size, "compression": compression,
        "encoding": "utf-8", "layout": "jsonl",
    }


def test_the_one_zip_in_data_raw_is_found_and_its_label_files_ignored(tmp_path):
    rows = rows_for(120)  # 80 usable
    cfg = load_config("cpu", ["data.source=", *FRACTIONS])  # the cpu preset's source is the bundled sample
    paths = RunPaths.from_config(cfg, tmp_path)
    paths.raw_dir.mkdir(parents=True)
    packed = gzip.compress(jsonl(rows).encode())
    archive = zipped(paths.raw_dir / f"{FOLDER}.zip", {**LABELS, f"{FOLDER}/trn.json.gz": packed})
    (paths.raw_dir / "filter_labels_train.txt").write_text("0 1\n")
    manifest = prep.prepare(cfg, paths)
    assert manifest["source"]["path"] == str(archive) and manifest["source"]["member"] == f"{FOLDER}/trn.json.gz"
    assert manifest["kept"] == 80
    (paths.raw_dir / "trn.json").write_text(jsonl(rows))  # the zip and its contents, side by side
    with pytest.raises(UserError, match=r"several raw files .*LF-AmazonTitles-1\.3M\.zip.*data\.source=<file>"):
        prep.prepare(cfg, paths)


# --------------------------------------------------------------------------- which member, and damage


def members_zip(path: Path, *names: str) -> Path:
    data = jsonl(rows_for(30)).encode()
    return zipped(path, {n: gzip.compress(data) if n.endswith(".gz") else data for n in names})


def test_member_choice(tmp_path):
    archive = members_zip(tmp_path / "d.zip", "a/tst.json.gz", "a/trn.json", "other.jsonl", "lbl.json.gz")
    with RawReader(archive) as reader:
        assert reader.info.member == "a/trn.json" and reader.info.compression == "zip"
        assert sum(1 for _ in reader) == 30
        assert reader.position() == reader.info.data_bytes  # where the progress bar ends
    with RawReader(archive, "tst.json") as reader:  # a bare name, in a folder, with .gz
        assert reader.info.member == "a/tst.json.gz" and reader.info.compression == "zip+gzip"
        assert sum(1 for _ in reader) == 30
    with RawReader(archive, "other.jsonl") as reader:
        assert reader.info.member == "other.jsonl"


@pytest.mark.parametrize(
    "names, member, message",
    [
        (("a/tst.json.gz", "a/lbl.json.gz", "notes.txt"), "",
         r"d\.zip holds no trn\.json or trn\.json\.gz \(it holds a/tst\.json\.gz, a/lbl\.json\.gz, notes\.txt\): "
         r"name the member to read with data\.member=<name>"),
        ((*(f"f{i}.txt" for i in range(9)),), "",
         r"holds no trn\.json .*\(it holds f0\.txt, f1\.txt, f2\.txt, f3\.txt, f4\.txt, f5\.txt, \.\.\. \(9 files\)\)"),
        (("trn.json", "x/trn.json.gz"), "",
         r"d\.zip holds 2 members named trn\.json: trn\.json, x/trn\.json\.gz: "
         r"pick one with data\.member=<its full name>"),
        (("trn.json",), "tst.json", r"holds no tst\.json or tst\.json\.gz \(it holds trn\.json\): .*data\.member="),
    ],
)
def test_a_zip_without_one_usable_member_lists_what_it_holds(tmp_path, names, member, message):
    archive = members_zip(tmp_path / "d.zip", *names)
    with pytest.raises(DataError, match=message):
        RawReader(archive, member)


def test_a_member_for_a_file_that_is_not_a_zip_is_refused(tmp_path):
    plain = write(tmp_path / "trn.jsonl", rows_for(10))
    with pytest.raises(DataError, match=r"data\.member=trn\.json names a member of a zip archive, but .*trn\.jsonl "
                                        r"is not one: leave data\.member empty"):
        RawReader(plain, "trn.json")


def test_a_truncated_or_damaged_zip_says_download_again(tmp_path):
    archive = zipped(tmp_path / "a.zip", {"trn.json": jsonl(rows_for(300)).encode()}, stored=True)
    data = archive.read_bytes()
    (tmp_path / "cut.zip").write_bytes(data[: len(data) // 2])  # a download cut short: no directory
    with pytest.raises(DataError, match=r"cut\.zip starts like a zip archive but cannot be opened .*download it again"):
        RawReader(tmp_path / "cut.zip")
    at = data.index(b"Widget Model 150")  # one letter changed inside a stored member: still valid JSON
    (tmp_path / "flip.zip").write_bytes(data[:at] + b"V" + data[at + 1:])
    for fast in (True, False):  # the CRC stops both readers: the rows are not silently used
        with pytest.raises(DataError, match=r"trn\.json in .*flip\.zip is a truncated or corrupt member of a zip "
                                            r"archive \(Bad CRC-32.*download it again"):
            prepared(tmp_path / f"r{fast}", tmp_path / "flip.zip", fast=fast)


@pytest.mark.parametrize("field, value, message", [
    ("flags", 1, r"trn\.json in .*a\.zip cannot be read \(File .* is encrypted, password required"),
    ("method", 9, r"trn\.json in .*a\.zip is compressed in a way Python's zipfile cannot read \(That compression"),
])
def test_an_encrypted_or_deflate64_member_says_unzip_it(tmp_path, field, value, message):
    """Python cannot write either kind, so a stored zip's headers are edited to say so (the
    general-purpose flags, or the method: 9 = Deflate64, which Windows writes for big files)."""
    archive = zipped(tmp_path / "a.zip", {"trn.json": jsonl(rows_for(20)).encode()}, stored=True)
    data = bytearray(archive.read_bytes())
    local, central = data.index(b"PK\x03\x04"), data.index(b"PK\x01\x02")
    at = {"flags": (local + 6, central + 8), "method": (local + 8, central + 10)}[field]
    for offset in at:
        data[offset:offset + 2] = value.to_bytes(2, "little")
    archive.write_bytes(bytes(data))
    with pytest.raises(DataError, match=message + r".*: unzip trn\.json yourself and give its path instead"):
        RawReader(archive)


def test_unreadable_rows_in_a_member_name_the_member_and_its_zip(tmp_path):
    rows = "".join(json.dumps({"title": f"Café {i}", "content": "Crème brûlée, très bon. " * 2}, ensure_ascii=False)
                   + "\n" for i in range(50)).encode("latin-1")
    archive = zipped(tmp_path / "LF.zip", {f"{FOLDER}/trn.json": rows})
    with pytest.raises(DataError, match=rf"^{FOLDER}/trn\.json in .*LF\.zip: 50 of 50 rows unreadable \(50 not_utf8"):
        prepared(tmp_path / "r", archive)


def test_the_member_setting_rejects_backslashes():
    from prodesc.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data\.member' has a '\\': zip member names use '/'"):
        load_config("cpu", [r"data.member=LF\trn.json.gz"])


# --------------------------------------------------------------------------- --inspect


def inspect(root: Path, capsys, *overrides: str) -> tuple[int, str, str]:
    rc = prep.main(["--preset", "cpu", "--inspect", "--root", str(root), *overrides])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_inspect_a_zip_through_the_script(tmp_path):
    rows = jsonl(rows_for(120)).encode()
    archive = zipped(tmp_path / "LF.zip", {**LABELS, f"{FOLDER}/trn.json.gz": gzip.compress(rows),
                                           f"{FOLDER}/tst.json": rows[:1000]})
    member_bytes, test_bytes = (zipfile.ZipFile(archive).getinfo(f"{FOLDER}/{name}").compress_size
                                for name in ("trn.json.gz", "tst.json"))
    test_lines = rows[:1000].count(b"\n") + 1  # the last one cut short
    args = ["--inspect", "--root", str(tmp_path / "root"), f"data.source={archive}", "data.test_source=tst.json"]
    res = run_stage_subprocess("01_prepare.py", args, timeout=120)
    assert res.returncode == 0, res.stderr
    size = f"{archive.stat().st_size:,} bytes, {archive.stat().st_size / 2**20:,.1f} MiB"
    assert res.stdout.splitlines() == [
        f"data file: {archive} (zip archive, {size})",
        f"  member: {FOLDER}/trn.json.gz (gzip, {member_bytes:,} bytes, {member_bytes / 2**20:,.1f} MiB in the zip)",
        "  rows: 120",
        f"test file: {archive} (zip archive, {size})",
        f"  member: {FOLDER}/tst.json ({test_bytes:,} bytes, 0.0 MiB in the zip)",
        f"  rows: {test_lines}",
    ]
    assert not (tmp_path / "root" / "data" / "prepared").exists()


def test_inspect_plain_files_and_a_missing_one(tmp_path, capsys):
    plain = tmp_path / "trn.json"
    plain.write_bytes(jsonl(rows_for(57)).encode().rstrip(b"\n"))  # no newline after the last row
    rc, out, _ = inspect(tmp_path / "root", capsys, f"data.source={plain}")
    size = plain.stat().st_size
    assert rc == 0
    assert out.splitlines() == [f"data file: {plain} ({size:,} bytes, {size / 2**20:,.1f} MiB)", "  rows: 57"]
    packed = write(tmp_path / "trn.json.gz", rows_for(33))
    rc, out, _ = inspect(tmp_path / "root", capsys, f"data.source={packed}")
    assert rc == 0 and "(gzip, " in out and out.splitlines()[-1] == "  rows: 33"
    array = write(tmp_path / "a.json", rows_for(21), layout="array")  # one element over several lines
    rc, out, _ = inspect(tmp_path / "root", capsys, f"data.source={array}")
    assert rc == 0 and out.splitlines()[-1] == "  rows: 21"
    rc, out, err = inspect(tmp_path / "root", capsys, f"data.source={tmp_path / 'nowhere.json'}")
    assert rc == 2 and out == ""
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: data file {tmp_path / 'nowhere.json'} not found: check data.source or put the file in data/raw/"
    ]
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(packed.read_bytes()[:-30])
    rc, out, err = inspect(tmp_path / "root", capsys, f"data.source={cut}")
    assert rc == 2 and out == "" and err.splitlines()[-1].startswith(f"error: {cut} is truncated or corrupt (")
    assert not (tmp_path / "root" / "data" / "prepared").exists()


# --------------------------------------------------------------------------- data.test_source


TRN = rows_for(150)  # every third content empty: 100 usable, distinct rows
TST_NEW = rows_for(210)[150:]  # 60 rows (40 usable) that trn.json does not have


def respelled(row: dict) -> dict:
    """The same product after cleaning, spelled differently in the raw file."""
    return {"uid": "T" + row["uid"], "title": row["title"].replace("&#8217;", "’").replace(" ", "  "),
            "content": row["content"].replace("&amp;", "&").replace("<br>", "<p>")}


def tst_rows() -> list[dict]:
    copies = [respelled(r) for r in TRN if r["content"]][::5]  # 20 pairs also in trn.json
    rows = [*TST_NEW[:30], *copies, *TST_NEW[30:]]
    rows.insert(7, dict(TST_NEW[1]))  # a duplicate within the test file
    rows += [{"uid": "s", "title": "ab", "content": "A title too short, a description long enough."},
             {"uid": "c", "title": "Content too short", "content": "tiny &amp; <b>x</b>"},
             {"uid": "e", "title": "Only tags", "content": "<br /> &nbsp;"}]
    return rows


def expected_test(raw: list[dict]) -> list[tuple[str, str]]:
    """The test file's (title, content) pairs cleaned and filtered as 01 must, duplicates after
    the first dropped, in file order (the default data settings: titles >= 3, descriptions 20-2000)."""
    pairs = []
    for row in raw:
        title, content = clean_text(row["title"]), cut_boilerplate(clean_text(row["content"]))
        if len(title) >= 3 and 20 <= len(content) <= 2000:
            pairs.append((title, content))
    return list(dict.fromkeys(pairs))


def respaced(text: str) -> str:
    import pyarrow as pa

    return respace_glue(pa.array([text])).to_pylist()[0]


SIZES = ["data.train_size=60", "data.validation_size=20"]  # of trn.json's 100: 20 left unselected


@pytest.mark.parametrize("given_as", ["zip_member", "file"])
def test_the_test_split_comes_from_the_test_file(tmp_path, given_as):
    raw = tst_rows()
    if given_as == "zip_member":
        source = zipped(tmp_path / "LF.zip", {**LABELS, f"{FOLDER}/trn.json.gz": gzip.compress(jsonl(TRN).encode()),
                                              f"{FOLDER}/tst.json.gz": gzip.compress(jsonl(raw).encode())})
        test_source, test_path, member = "tst.json", source, f"{FOLDER}/tst.json.gz"
    else:
        source = write(tmp_path / "trn.jsonl", TRN)
        test_path, member = write(tmp_path / "tst.jsonl", raw), ""
        test_source = str(test_path)
    manifest, rows, paths = prepared(tmp_path / "root", source, f"data.test_source={test_source}", *SIZES,
                                     "data.test_size=1000")

    seen = {(r["title"], r["content"]) for split in ("train", "validation") for r in rows[split]}
    cleaned = expected_test(raw)
    want = [(t, respaced(c)) for t, c in cleaned if (t, respaced(c)) not in seen]
    assert [(r["title"], r["content"]) for r in rows["test"]] == want  # all of them (1000 > 40 + 20), in file order
    assert len(rows["train"]) == 60 and len(rows["validation"]) == 20
    in_train = len(cleaned) - len(want)
    assert 0 < in_train < 20  # of the 20 copies, those in the 80 rows selected from trn.json's 100

    test = manifest["test_source"]
    assert (test["path"], test["member"]) == (str(test_path), member)
    assert test["rows_read"] == len(raw) == 84
    assert test["kept"] == len(cleaned) == 60
    assert test["dropped"]["duplicate"] == 1 and test["dropped"]["empty_content"] == 21
    assert test["dropped"]["title_too_short"] == 1 and test["dropped"]["content_too_short"] == 1
    assert test["in_train_or_validation"] == in_train and test["not_selected"] == 0
    assert manifest["splits"] == {"train": 60, "validation": 20, "test": len(want)}
    assert manifest["kept"] == 100 and manifest["not_selected"] == 20  # trn.json gives no test rows

    table = prep.format_manifest(manifest)
    assert re.search(rf"^test file rows read +84\n(.*\n)*?kept +60\n  in train/validation +{in_train}\n"
                     rf"  not selected +0\n  test +{len(want)}\n", table, re.M), table
    assert f"test file: {member + ' in ' if member else ''}{test_path}" in table
    assert "  test " not in table.split("test file rows read")[0]  # trn.json gave no test rows


def test_test_size_caps_the_test_file_with_a_seeded_sample(tmp_path, capsys):
    source, test = write(tmp_path / "trn.jsonl", TRN), write(tmp_path / "tst.jsonl", tst_rows())
    args = (f"data.test_source={test}", *SIZES)
    everything = prepared(tmp_path / "all", source, *args, "data.test_size=1000")[1]["test"]
    assert f"data.test_size=1000 but {test} has only {len(everything)} usable test rows: using all" in (
        capsys.readouterr().err)
    manifest, rows, _ = prepared(tmp_path / "ten", source, *args, "data.test_size=10")
    assert len(rows["test"]) == 10 and all(r in everything for r in rows["test"])
    assert manifest["test_source"]["not_selected"] == len(everything) - 10
    again = prepared(tmp_path / "again", source, *args, "data.test_size=10")[1]["test"]
    other = prepared(tmp_path / "other", source, *args, "data.test_size=10", "seed=7")[1]["test"]
    assert again == rows["test"] and other != rows["test"]
    half = prepared(tmp_path / "half", source, *args, "data.test_size=0.5")[1]["test"]
    assert len(half) == len(everything) // 2


def test_a_test_source_names_and_fingerprints_its_own_prepared_data(tmp_path):
    source, test = write(tmp_path / "trn.jsonl", TRN), write(tmp_path / "tst.jsonl", tst_rows())
    alone = RunPaths.from_config(load_config("cpu", [f"data.source={source}"]), tmp_path)
    with_test = RunPaths.from_config(
        load_config("cpu", [f"data.source={source}", f"data.test_source={test}"]), tmp_path
    )
    assert alone.prepared_name != with_test.prepared_name
    zipped_name = RunPaths.from_config(load_config("cpu", ["data.source=/d/LF-AmazonTitles-1.3M.zip"]), tmp_path)
    assert zipped_name.prepared_name.startswith("LF-AmazonTitles-1_3M-chat-")
    prepared(tmp_path, source, "data.name=pinned", f"data.test_source={test}", *SIZES)
    with pytest.raises(UserError, match="another source or with other settings"):
        prepared(tmp_path, source, "data.name=pinned", *SIZES)
    write(test, tst_rows()[:-1])  # the test file changed
    with pytest.raises(UserError, match="another source or with other settings"):
        prepared(tmp_path, source, "data.name=pinned", f"data.test_source={test}", *SIZES)


def test_test_source_errors(tmp_path):
    source = write(tmp_path / "trn.jsonl", TRN)
    with pytest.raises(DataError, match=r"data\.test_source: .*tst\.json not found, and data\.source \(.*trn\.jsonl\) "
                                        r"is not a zip archive to take a member 'tst\.json' from"):
        prepared(tmp_path / "r", source, "data.test_source=tst.json")
    archive = zipped(tmp_path / "LF.zip", {"trn.json": jsonl(TRN).encode()})
    with pytest.raises(DataError, match=r"LF\.zip holds no tst\.json or tst\.json\.gz \(it holds trn\.json\): "
                                        r"name the member to read with data\.test_source=<name>"):
        prepared(tmp_path / "r", archive, "data.test_source=tst.json")
    with pytest.raises(UserError, match=r"data\.test_source '\.\./\.\./tst\.json' points outside the root"):
        prepared(tmp_path / "r", source, "data.test_source=../../tst.json")
    only_copies = write(tmp_path / "copies.jsonl", [r for r in TRN if r["content"]])
    with pytest.raises(DataError, match=r"gives no test rows: raise data\.test_size, or check data\.test_source"):
        prepared(tmp_path / "r", source, f"data.test_source={only_copies}", "data.train_size=0")
    assert not (tmp_path / "r" / "data" / "prepared").exists() or not any(
        p for p in (tmp_path / "r" / "data" / "prepared").iterdir() if not p.name.startswith(".")
    )


@pytest.mark.parametrize(
    "sizes, expected",
    [
        ((0.8, 0.1, 0.1), {"train": 90, "validation": 10, "test": 0}),  # train is the rest
        ((50, 10, 1000), {"train": 50, "validation": 10, "test": 0}),  # test_size is the test file's
        ((0, 0.2, 5), {"train": 80, "validation": 20, "test": 0}),
    ],
)
def test_split_counts_with_the_test_split_apart(sizes, expected):
    cfg = load_config("cpu", [f"data.{s}_size={v}" for s, v in zip(("train", "validation", "test"), sizes)])
    assert prep.split_counts(cfg, 100, test_apart=True) == expected


def test_test_rows_from_the_test_file_get_their_examples_from_the_train_split(tmp_path):
    source, test = write(tmp_path / "trn.jsonl", TRN), write(tmp_path / "tst.jsonl", tst_rows())
    _, rows, _ = prepared(tmp_path, source, f"data.test_source={test}", *SIZES, "data.test_size=1000",
                          "data.example_words=4")
    train_titles = {r["title"] for r in rows["train"]}
    assert len(rows["test"]) > 30
    for row in rows["test"]:
        assert len(row["example_title"]) == 1 and row["example_title"][0] in train_titles
        assert row["example_title"][0] in row["prompt"][-1]["content"]
