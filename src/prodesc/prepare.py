"""python src/01_prepare.py [--preset NAME] [--root DIR] [key=value ...]

Clean, deduplicate and split AmazonTitles trn.json into a prepared dataset:
<root>/data/prepared/<name>/{dataset/, manifest.json}.

One streaming pass reads the raw file (JSON Lines or a JSON array, plain or .gz), cleans each
row (HTML entities unescaped, tags stripped, whitespace collapsed), drops unusable rows (each
reason counted), removes exact duplicates and spills the kept rows to a temporary file. A seeded
hash of each (title, content) pair then picks the subsample and the train/validation/test splits,
so the same data and seed give the same splits whatever the file's order, format or compression.
The result appears under its final name only when complete; re-running with the same settings
skips the work (overwrite=true redoes it).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from array import array
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from prodesc import __version__, atomic
from prodesc.cli import log, run_stage
from prodesc.config import Config
from prodesc.errors import DataError, UserError
from prodesc.paths import RunPaths
from prodesc.rawdata import RawReader, clean_text, row_fields
from prodesc.templates import PromptTemplate, template_for

BUNDLED_SAMPLE = Path(__file__).resolve().parent / "data" / "sample_trn.jsonl"
SPLITS = ("train", "validation", "test")
MALFORMED = ("malformed_json", "not_utf8", "not_an_object")
DROP_REASONS = MALFORMED + (
    "missing_title",
    "missing_content",
    "wrong_type",
    "empty_content",
    "title_too_short",
    "content_too_short",
    "content_too_long",
    "duplicate",
)
FORMAT_VERSION = 1
EARLY_CHECK_ROWS = 2000


@dataclass
class PassStats:
    """What the streaming pass saw: every row read lands in exactly one bucket."""

    rows_read: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    first_error: str = ""

    @property
    def malformed(self) -> int:
        return sum(self.dropped[r] for r in MALFORMED)


def source_path(cfg: Config, paths: RunPaths) -> Path:
    if cfg.data.source == "bundled":
        return BUNDLED_SAMPLE
    return paths.raw_source(cfg.data.source)


def fingerprint(cfg: Config, source: Path, template: PromptTemplate) -> str:
    """Identity of a prepared dataset: settings, seed, template and the source file's size."""
    blob = json.dumps(
        {
            "data": {k: v for k, v in cfg.to_dict()["data"].items() if k != "name"},
            "seed": cfg.seed,
            "template": template.to_dict(),
            "source": str(source),
            "source_bytes": source.stat().st_size,
            "format_version": FORMAT_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of a complete prepared dataset, or None when absent or unreadable."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("complete") is True else None


def open_prepared(paths: RunPaths, splits: tuple[str, ...], columns: tuple[str, ...]) -> tuple[dict[str, Any], Any]:
    """(manifest, DatasetDict) of the prepared data, checked for the ``splits`` and ``columns`` a
    later stage needs; a one-line UserError that says to run (or re-run) this stage otherwise."""
    manifest = read_manifest(paths.prepared_manifest)
    if manifest is None or not paths.prepared_dataset.is_dir():
        raise UserError(
            f"no prepared data at {paths.prepared}: run 01_prepare.py first "
            "(with the same --preset/--root and data.* settings)"
        )
    if not isinstance(manifest.get("template"), dict):
        raise UserError(f"{paths.prepared_manifest} has no 'template': run 01_prepare.py with overwrite=true")
    from datasets import load_from_disk

    try:
        data = load_from_disk(str(paths.prepared_dataset))
    except (OSError, ValueError, FileNotFoundError) as err:
        raise UserError(f"cannot read {paths.prepared_dataset} ({err}): run 01_prepare.py with overwrite=true") from None
    for split in splits:
        if split not in data:
            raise UserError(f"{paths.prepared_dataset} has no '{split}' split: run 01_prepare.py with overwrite=true")
        missing = set(columns) - set(data[split].column_names)
        if missing:
            raise UserError(
                f"{paths.prepared_dataset} split '{split}' lacks column '{min(missing)}': "
                "run 01_prepare.py with overwrite=true"
            )
    return manifest, data


# --------------------------------------------------------------------------- pass 1: stream


def _key(seed: int, title: str, content: str) -> int:
    digest = hashlib.blake2b(
        f"{title}\x00{content}".encode(), digest_size=8, key=seed.to_bytes(8, "little", signed=True)
    ).digest()
    return int.from_bytes(digest, "little")


def stream_rows(cfg: Config, reader: RawReader, spill: Path, stats: PassStats) -> array:
    """Read, clean, filter and dedupe every row; write kept rows to ``spill`` (JSON Lines) and
    return their sampling keys in file order."""
    from tqdm.auto import tqdm

    data = cfg.data
    seen: set[int] = set()
    keys = array("Q")
    bar = tqdm(
        total=reader.info.bytes, unit="B", unit_scale=True, desc="01 prepare", mininterval=1.0,
        disable=None,
    )
    with open(spill, "w", encoding="utf-8") as out:
        for record in reader:
            stats.rows_read += 1
            if stats.rows_read % 20000 == 0:
                bar.update(reader.position() - bar.n)
            if stats.rows_read == EARLY_CHECK_ROWS:
                _check_malformed(cfg, reader, stats, final=False)
            reason = _reason_or_row(record, data)
            if isinstance(reason, str):
                stats.dropped[reason] += 1
                if reason in MALFORMED and not stats.first_error:
                    stats.first_error = f"line {record.line}: {record.detail}"
                continue
            uid, title, content = reason
            if data.dedup:
                pair = hash((title, content))
                if pair in seen:
                    stats.dropped["duplicate"] += 1
                    continue
                seen.add(pair)
            keys.append(_key(cfg.seed, title, content))
            out.write(json.dumps([uid, title, content], ensure_ascii=False))
            out.write("\n")
            stats.kept += 1
    bar.update(reader.info.bytes - bar.n)
    bar.close()
    return keys


def _reason_or_row(record, data) -> str | tuple[str, str, str]:
    if record.error:
        return record.error
    fields = row_fields(record.row)
    if isinstance(fields, str):
        return fields
    uid, title, content = fields
    title, content = clean_text(title), clean_text(content)
    if not content:
        return "empty_content"
    if len(title) < data.min_title_chars:
        return "title_too_short"
    if len(content) < data.min_content_chars:
        return "content_too_short"
    if data.max_content_chars and len(content) > data.max_content_chars:
        return "content_too_long"
    return uid, title, content


def _check_malformed(cfg: Config, reader: RawReader, stats: PassStats, final: bool) -> None:
    """Stop when too many lines are unreadable: at the end, or early for a hopeless file."""
    if not stats.rows_read:
        return
    share = stats.malformed / stats.rows_read
    limit = cfg.data.max_malformed_fraction if final else max(cfg.data.max_malformed_fraction, 0.5)
    if share > limit:
        kinds = ", ".join(f"{stats.dropped[r]} {r}" for r in MALFORMED if stats.dropped[r])
        hint = (
            "re-save it as UTF-8"
            if stats.dropped["not_utf8"] >= stats.malformed / 2
            else "check it is JSON Lines (one object per line) or a JSON array"
        )
        raise DataError(
            f"{reader.path}: {stats.malformed} of {stats.rows_read} rows unreadable ({kinds}; first at "
            f"{stats.first_error}): {hint}, or raise data.max_malformed_fraction (now "
            f"{cfg.data.max_malformed_fraction})"
        )


# --------------------------------------------------------------------------- pass 2: split


def split_counts(cfg: Config, available: int) -> dict[str, int]:
    """Rows per split from counts (>= 1) or fractions (< 1) of the rows available."""
    data = cfg.data
    sizes = {split: getattr(data, f"{split}_size") for split in SPLITS}
    counts = {split: int(size * available) if size < 1 else int(size) for split, size in sizes.items()}
    all_fractions = all(0 < size < 1 for size in sizes.values())
    if data.train_size == 0 or (all_fractions and abs(sum(sizes.values()) - 1) < 1e-9):
        counts["train"] = available - counts["validation"] - counts["test"]  # the rest
    total = sum(counts.values())
    if total > available or counts["train"] <= 0 or counts["test"] <= 0:
        raise DataError(
            f"the splits ask for {counts['train']} train + {counts['validation']} validation + "
            f"{counts['test']} test rows but only {available} usable rows remain: lower "
            "data.train_size / data.validation_size / data.test_size, or give fractions "
            "(e.g. data.train_size=0.8 data.validation_size=0.1 data.test_size=0.1)"
        )
    return counts


def assign_splits(keys: array, counts: dict[str, int]) -> tuple[Any, Any]:
    """The selected keys in sorted order and the rank boundaries: the ``sum(counts)`` smallest
    keys are selected; ranks [0, test) → test, then validation, then train."""
    import numpy as np

    all_keys = np.frombuffer(keys, dtype=np.uint64)
    total = sum(counts.values())
    selected = np.sort(np.partition(all_keys, total - 1)[:total]) if total < len(all_keys) else np.sort(all_keys)
    bounds = np.cumsum([counts["test"], counts["validation"], counts["train"]])
    return selected, bounds


def split_rows(spill: Path, keys: array, selected, bounds) -> Iterator[tuple[str, str, str, str]]:
    """(split, uid, title, content) for each selected row, in file order."""
    import numpy as np

    names = ("test", "validation", "train")
    with open(spill, encoding="utf-8") as fh:
        for line, key in zip(fh, keys):
            rank = int(np.searchsorted(selected, np.uint64(key)))
            if rank >= len(selected) or selected[rank] != key:
                continue
            split = names[int(np.searchsorted(bounds, rank, side="right"))]
            uid, title, content = json.loads(line)
            yield split, uid, title, content


def write_dataset(
    rows: Iterator[tuple[str, str, str, str]], template: PromptTemplate, out: Path, scratch: Path
) -> dict[str, int]:
    """Write the selected rows as a ``datasets.DatasetDict`` (Arrow) with prompt/completion
    columns formatted by ``template``; return the rows per split."""
    import datasets

    datasets.disable_progress_bars()
    writers = {s: open(scratch / f"{s}.jsonl", "w", encoding="utf-8") for s in SPLITS}
    counts = dict.fromkeys(SPLITS, 0)
    try:
        for split, uid, title, content in rows:
            record = {
                "uid": uid,
                "title": title,
                "content": content,
                "prompt": template.format_prompt(title),
                "completion": template.format_completion(content),
            }
            writers[split].write(json.dumps(record, ensure_ascii=False) + "\n")
            counts[split] += 1
    finally:
        for fh in writers.values():
            fh.close()
    features = dataset_features(template)
    parts = {
        split: datasets.Dataset.from_generator(
            _jsonl_rows,
            gen_kwargs={"path": str(scratch / f"{split}.jsonl")},
            features=features,
            cache_dir=str(scratch / "cache"),
        )
        for split in SPLITS
    }
    datasets.DatasetDict(parts).save_to_disk(str(out))
    return counts


def _jsonl_rows(path: str) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)


def dataset_features(template: PromptTemplate):
    from datasets import Features, List, Value

    text = Value("string")
    message = {"role": text, "content": text}
    turn = List(message) if template.kind == "chat" else text
    return Features({"uid": text, "title": text, "content": text, "prompt": turn, "completion": turn})


# --------------------------------------------------------------------------- the stage


def prepare(cfg: Config, paths: RunPaths) -> dict[str, Any]:
    """Build (or reuse) the prepared dataset for ``cfg``; return its manifest."""
    source = source_path(cfg, paths)
    template = template_for(cfg, paths)
    RawReader(source).close()  # fails fast, before any work, on a missing/empty/folder path
    ident = fingerprint(cfg, source, template)
    existing = read_manifest(paths.prepared_manifest)
    if existing and not cfg.overwrite:
        if existing.get("fingerprint") == ident:
            log(f"already prepared: {paths.prepared} (overwrite=true to redo)")
            return existing
        raise UserError(
            f"{paths.prepared} holds data prepared from another source or with other settings: "
            "pass overwrite=true to rebuild it, or set data.name=<new name>"
        )
    start = time.monotonic()
    log(f"reading {source}")
    with atomic.build_dir(paths.prepared, overwrite=True) as tmp:
        scratch = tmp / "scratch"
        scratch.mkdir()
        stats = PassStats()
        with RawReader(source) as reader:
            keys = stream_rows(cfg, reader, scratch / "kept.jsonl", stats)
            info = reader.info
        _check_malformed(cfg, reader, stats, final=True)
        if stats.kept == 0:
            raise DataError(_nothing_left(source, stats))
        available = min(cfg.data.subsample, stats.kept) if cfg.data.subsample else stats.kept
        if cfg.data.subsample > stats.kept:
            log(f"data.subsample={cfg.data.subsample} but only {stats.kept} usable rows: using all")
        counts = split_counts(cfg, available)
        selected, bounds = assign_splits(keys, counts)
        written = write_dataset(
            split_rows(scratch / "kept.jsonl", keys, selected, bounds), template, tmp / "dataset", scratch
        )
        assert written == counts, (written, counts)  # every selected key maps to one row
        manifest = {
            "complete": True,
            "format_version": FORMAT_VERSION,
            "fingerprint": ident,
            "source": {
                "path": str(source),
                "bytes": info.bytes,
                "compression": info.compression,
                "encoding": info.encoding,
                "layout": info.layout,
            },
            "rows_read": stats.rows_read,
            "dropped": stats.dropped,
            "kept": stats.kept,
            "not_selected": stats.kept - sum(counts.values()),
            "splits": counts,
            "template": template.to_dict(),
            "config": {"data": cfg.to_dict()["data"], "seed": cfg.seed},
            "first_malformed": stats.first_error,
            "duration_s": round(time.monotonic() - start, 2),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "prodesc_version": __version__,
        }
        shutil.rmtree(scratch, ignore_errors=True)
        atomic.write_json(tmp / "manifest.json", manifest)
    return manifest


def _nothing_left(source: Path, stats: PassStats) -> str:
    top = sorted(((n, r) for r, n in stats.dropped.items() if n), reverse=True)[:3]
    reasons = ", ".join(f"{n} {r}" for n, r in top)
    if top and top[0][1] in ("missing_title", "missing_content"):
        fix = "the rows need 'title' and 'content' fields as in trn.json"
    elif top and top[0][1] == "wrong_type":
        fix = "'title' and 'content' must be strings"
    else:
        fix = "check the file, or relax data.min_content_chars / data.max_content_chars / data.min_title_chars"
    return f"no usable rows in {source} ({stats.rows_read} read: {reasons}): {fix}"


def format_manifest(manifest: dict[str, Any]) -> str:
    """The manifest as the table printed at the end of the stage."""
    rows = [("rows read", manifest["rows_read"])]
    rows += [(f"  dropped: {r}", n) for r, n in manifest["dropped"].items() if n]
    rows += [("kept", manifest["kept"]), ("  not selected", manifest["not_selected"])]
    rows += [(f"  {s}", n) for s, n in manifest["splits"].items()]
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {value:>10,}" for label, value in rows]
    lines.append(f"template: {manifest['template']['name']}   took {manifest['duration_s']} s")
    return "\n".join(lines)


def _body(cfg: Config, paths: RunPaths) -> None:
    manifest = prepare(cfg, paths)
    print(format_manifest(manifest))
    print(f"prepared: {paths.prepared}")


def main(argv: list[str] | None = None) -> int:
    return run_stage("01_prepare.py", __doc__, argv, _body)
