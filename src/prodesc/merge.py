"""python src/03_merge_fp16.py [--preset NAME] [--root DIR] [key=value ...]

Merging and evaluation: not built yet (issue #4). --help, --print-config and --list-keys already work.
"""

from __future__ import annotations

from prodesc.cli import run_stage
from prodesc.config import Config
from prodesc.errors import UserError
from prodesc.paths import RunPaths


def _body(cfg: Config, paths: RunPaths) -> None:
    raise UserError("Merging and evaluation is not built yet (issue #4): run 01_prepare.py for now")


def main(argv: list[str] | None = None) -> int:
    return run_stage("03_merge_fp16.py", __doc__, argv, _body)
