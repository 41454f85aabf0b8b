"""The numbered scripts: thin, documented, and --help/--print-config never import torch."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from rawfiles import REPO

SCRIPTS = sorted(p.name for p in (REPO / "src").glob("0[0-5]_*.py"))
HEAVY = ("torch", "transformers", "trl", "peft", "unsloth", "bitsandbytes", "accelerate", "datasets", "gradio")

# Runs a script with the heavy libraries made unimportable, then proves none was loaded: the
# same as an environment where they are not installed.
NO_HEAVY = f"""
import runpy, sys
HEAVY = {HEAVY!r}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in HEAVY:
            raise ImportError('blocked for this test: ' + name)
sys.meta_path.insert(0, Block())
sys.argv = sys.argv[1:]
sys.path.insert(0, 'src')  # what `python src/NN.py` does for the script's folder
try:
    runpy.run_path(sys.argv[0], run_name='__main__')
finally:
    loaded = sorted(m for m in sys.modules if m.split('.')[0] in HEAVY)
    assert not loaded, loaded
"""


def run(args, env=None, **kw):
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, **(env or {})}, timeout=120, **kw,
    )


def test_all_six_scripts_exist():
    assert SCRIPTS == ["00_install.py", "01_prepare.py", "02_sft_qlora.py", "03_merge_fp16.py", "04_quick_demo.py", "05_export.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_is_thin_and_its_docstring_starts_with_its_command(script):
    text = (REPO / "src" / script).read_text()
    assert len(text.splitlines()) <= 15
    assert re.match(rf'"""python src/{re.escape(script)}\b', text)
    assert re.search(r"^from prodesc import \w+$", text, re.M)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_runs_without_torch(script):
    res = run(["-c", NO_HEAVY, f"src/{script}", "--help"])
    assert res.returncode == 0, res.stderr
    assert "usage:" in res.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_print_config_runs_without_torch(script, tmp_path):
    res = run(["-c", NO_HEAVY, f"src/{script}", "--preset", "cpu", "--print-config", "train.max_steps=3"])
    assert res.returncode == 0, res.stderr
    assert "max_steps: 3" in res.stdout and "name: smollm2-135m-instruct" in res.stdout


def test_print_config_without_preset_reports_the_hardware_choice():
    res = run(["src/02_sft_qlora.py", "--print-config"], env={"PATH": "/usr/bin:/bin"})  # no nvidia-smi
    assert res.returncode == 0, res.stderr
    assert "using preset 'cpu'" in res.stderr and "preset: cpu" in res.stdout


def test_list_keys_documents_every_section():
    res = run(["src/01_prepare.py", "--list-keys"])
    assert res.returncode == 0
    for section in ("model.", "lora.", "data.", "train.", "eval.", "paths."):
        assert section in res.stdout


def test_bad_key_is_one_line_on_stderr_and_exit_2(tmp_path):
    res = run(["src/01_prepare.py", "--preset", "cpu", "--root", str(tmp_path), "train.lr=1"])
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == "error: unknown config key 'train.lr'; did you mean 'train.learning_rate'?"
    assert "Traceback" not in res.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_debug_shows_the_traceback(tmp_path):
    res = run(["src/01_prepare.py", "--preset", "cpu", "--root", str(tmp_path), "--debug", "train.lr=1"])
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_nothing_imports_a_numbered_script():
    pattern = re.compile(r"^\s*(from\s+\S*0[0-5]_\w*\s+import|import\s+\S*0[0-5]_)|import_module\([^)]*0[0-5]_", re.M)
    offenders = [
        str(p.relative_to(REPO)) for p in list((REPO / "src").rglob("*.py")) + list((REPO / "tests").rglob("*.py"))
        if pattern.search(p.read_text()) and not p.name.startswith("0")
    ]
    assert offenders == []
