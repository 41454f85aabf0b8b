"""The one reader of prepared data (01's output), for every later stage: 02 trains on its train and
validation splits, 03 evaluates its test split, 04 and the web page take example titles and each
title's example from it.

:func:`open_prepared` checks that the data is complete (its manifest says so) and holds the splits
and columns the stage needs, and says in one line what to run when it does not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prodesc.errors import UserError
from prodesc.paths import RunPaths


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
