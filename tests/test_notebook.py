"""colab/launcher.ipynb: valid notebook JSON, code that parses, and only calls to existing scripts."""

from __future__ import annotations

import ast
import json
import re

from rawfiles import REPO

NOTEBOOK = REPO / "colab" / "launcher.ipynb"


def cells(kind: str) -> list[str]:
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == kind]


def python_only(source: str) -> str:
    """The cell with IPython's `!shell` and `%magic` lines blanked (kept as `pass` for indentation)."""
    return "\n".join(
        re.sub(r"^(\s*)[!%].*$", r"\1pass", line) for line in source.splitlines()
    )


def test_every_code_cell_parses_once_shell_and_magic_lines_are_stripped():
    for source in cells("code"):
        ast.parse(python_only(source))


def test_the_notebook_runs_each_stage_script_that_exists_in_order():
    called = re.findall(r"!python (src/\d\d_\w+\.py)", "\n".join(cells("code")))
    assert called == sorted(called) and called[0] == "src/00_install.py"
    for script in called:
        assert (REPO / script).is_file(), script


def test_settings_cell_is_a_colab_form_and_drive_is_mounted_before_any_stage():
    code = cells("code")
    assert code[0].startswith("# @title Settings")
    mount = next(i for i, c in enumerate(code) if "drive.mount(" in c)
    first_stage = next(i for i, c in enumerate(code) if "!python src/01_prepare.py" in c)
    assert mount < first_stage
    assert cells("markdown")[0].startswith("# ")
