"""python src/04_quick_demo.py [--preset NAME] [--root DIR] [key=value ...]

The demo: not built yet (issue #5). --help, --print-config and --list-keys already work.
"""

from __future__ import annotations

from prodesc.cli import run_stage
from prodesc.config import Config
from prodesc.errors import UserError
from prodesc.paths import RunPaths


def _body(cfg: Config, paths: RunPaths) -> None:
    raise UserError("The demo is not built yet (issue #5): run 01_prepare.py for now")


def main(argv: list[str] | None = None) -> int:
    return run_stage("04_quick_demo.py", __doc__, argv, _body)
