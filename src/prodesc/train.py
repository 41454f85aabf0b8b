"""python src/02_sft_qlora.py [--preset NAME] [--root DIR] [key=value ...]

Training: not built yet (issue #3). --help, --print-config and --list-keys already work.
"""

from __future__ import annotations

from prodesc.cli import run_stage
from prodesc.config import Config
from prodesc.errors import UserError
from prodesc.paths import RunPaths


def _body(cfg: Config, paths: RunPaths) -> None:
    raise UserError("Training is not built yet (issue #3): run 01_prepare.py for now")


def main(argv: list[str] | None = None) -> int:
    return run_stage("02_sft_qlora.py", __doc__, argv, _body)
