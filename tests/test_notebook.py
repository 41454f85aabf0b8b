"""colab/launcher.ipynb: valid notebook JSON, code that parses, and only calls to existing scripts."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from prodesc.config import preset_names
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


def test_the_notebook_is_valid_nbformat():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    ids = [cell.get("id") for cell in json.loads(NOTEBOOK.read_text())["cells"]]
    assert all(ids) and len(set(ids)) == len(ids), "every cell needs its own id (nbformat ≥ 4.5)"


def test_drive_is_mounted_where_the_settings_say_and_the_root_is_on_it():
    settings, mount = cells("code")[0], next(c for c in cells("code") if "drive.mount(" in c)
    assert re.search(r'^DRIVE_MOUNT = "/content/drive"', settings, re.M)
    assert "drive.mount(DRIVE_MOUNT)" in mount and 'ROOT = f"{DRIVE_MOUNT}/MyDrive/{DRIVE_FOLDER}"' in mount


def test_every_stage_cell_stops_run_all_when_its_script_fails():
    code = cells("code")
    helper = next(i for i, c in enumerate(code) if "def stop_if_failed(" in c)
    stages = [(i, c) for i, c in enumerate(code) if re.search(r"^!python src/\d\d_", c, re.M)]
    assert len({re.search(r"src/(\d\d)_", c).group(1) for _, c in stages}) == 6 and helper < stages[0][0]
    for _, source in stages:
        script = re.search(r"^!python src/(\d\d_\w+)\.py", source, re.M).group(1)
        assert source.rstrip().endswith(f'stop_if_failed("{script}")'), script


def test_stop_if_failed_raises_on_a_nonzero_exit_code_only():
    """The helper reads IPython's `_exit_code` (Colab's shell sets it too) after `!python`."""
    source = python_only(next(c for c in cells("code") if "def stop_if_failed(" in c))
    tree = ast.parse(source)
    func = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "stop_if_failed")
    namespace: dict = {}
    exec(compile(ast.Module([func], []), "launcher.ipynb", "exec"), namespace)
    namespace["_exit_code"] = 0
    namespace["stop_if_failed"]("01_prepare")
    namespace["_exit_code"] = 2
    with pytest.raises(RuntimeError, match="01_prepare failed \\(exit 2\\)"):
        namespace["stop_if_failed"]("01_prepare")


def test_the_notebook_holds_no_test_hooks():
    text = NOTEBOOK.read_text(encoding="utf-8")
    for word in ("PRODESC_FAKE", "pytest", "tests/"):
        assert word not in text, word


def test_the_preset_dropdown_offers_every_shipped_preset():
    found = re.search(r"^PRESET = .*# @param (\[.*\])$", "\n".join(cells("code")), re.M)
    assert found, "no `# @param` dropdown for PRESET"
    offered = json.loads(found.group(1))
    assert offered[0] == ""  # empty: chosen from the GPU
    assert sorted(offered[1:]) == preset_names()


def cell(title: str) -> str:
    return next(c for c in cells("code") if c.startswith(f"# @title {title}"))


def test_every_code_cell_has_a_title():
    for source in cells("code"):
        assert source.startswith("# @title "), source[:60]


def test_the_gpu_is_checked_before_anything_else_and_a_gpu_preset_on_a_cpu_runtime_stops(monkeypatch, tmp_path):
    code = cells("code")
    assert code[1].startswith("# @title Check the GPU")
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi: a CPU runtime
    for preset in preset_names():
        namespace = {"PRESET": preset}
        if preset.startswith("cpu"):
            exec(cell("Check the GPU"), namespace)
        else:
            with pytest.raises(RuntimeError, match=f"preset {preset} needs a GPU .* Change runtime type"):
                exec(cell("Check the GPU"), namespace)
    exec(cell("Check the GPU"), {"PRESET": ""})  # chosen from the hardware: cpu here
    # nvidia-smi answers: the cell shows what it prints (name, memory, driver and CUDA versions)
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'Tesla T4  15360MiB  CUDA Version: 12.8'\n")  # stands in for the driver's tool
    smi.chmod(0o755)
    namespace = {"PRESET": "t4"}
    exec(cell("Check the GPU"), namespace)
    assert "Tesla T4" in namespace["SMI"]


def get_code(tmp_path, monkeypatch, repo_url: str = "") -> dict:
    """Run the "Get the code" cell (its `!git` and `%cd` lines blanked) on a fake VM."""
    vm = tmp_path / "content"
    vm.mkdir(exist_ok=True)
    monkeypatch.chdir(vm)
    root = tmp_path / "MyDrive" / "prodesc"
    root.mkdir(parents=True, exist_ok=True)
    namespace = {"ROOT": str(root), "DRIVE_MOUNT": str(vm / "drive"), "REPO_URL": repo_url, "shlex": __import__("shlex")}
    exec("import os, shutil\n" + python_only(cell("Get the code")), namespace)
    return namespace


def test_without_code_on_the_vm_or_drive_and_no_repo_url_the_code_cell_says_what_to_upload(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match=r"no prodesc code found: upload prodesc-code.zip \(`make colab-bundle`\)"):
        get_code(tmp_path, monkeypatch)


@pytest.mark.parametrize("folder", ["prodesc/", "prodesc-main/", ""])
def test_the_code_comes_from_an_archive_in_the_drive_folder(tmp_path, monkeypatch, folder):
    import zipfile

    root = tmp_path / "MyDrive" / "prodesc"
    root.mkdir(parents=True)
    with zipfile.ZipFile(root / "prodesc-code.zip", "w") as archive:  # as `make colab-bundle` or GitHub makes it
        archive.writestr(f"{folder}src/01_prepare.py", "# stage 01\n")
        archive.writestr(f"{folder}configs/cpu.yaml", "model: {}\n")
    namespace = get_code(tmp_path, monkeypatch)
    code = Path(namespace["CODE"])
    assert code == tmp_path / "content" / "prodesc"
    assert (code / "src" / "01_prepare.py").read_text() == "# stage 01\n" and (code / "configs" / "cpu.yaml").is_file()
    assert not list((tmp_path / "content").glob("tmp*")), "the unpacking folder is removed"


def test_the_code_already_on_the_vm_wins(tmp_path, monkeypatch):
    here = tmp_path / "content" / "prodesc" / "src"
    here.mkdir(parents=True)
    (here / "01_prepare.py").write_text("# already here\n")
    assert get_code(tmp_path, monkeypatch)["CODE"] == str(here.parent)


def test_make_colab_bundle_packs_what_the_notebook_needs(tmp_path):
    import subprocess
    import zipfile

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    out = subprocess.run(["make", "-s", "colab-bundle"], cwd=clone, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    names = set(zipfile.ZipFile(clone / "prodesc-code.zip").namelist())
    for needed in ("src/01_prepare.py", "src/prodesc/config.py", "configs/t4.yaml", "configs/_gpu.yaml", "requirements-colab.txt",
                   "colab/launcher.ipynb", "src/prodesc/data/sample_trn.jsonl"):
        assert f"prodesc/{needed}" in names, needed
    assert not [n for n in names if n.startswith(("prodesc/tests/", "prodesc/bench/")) or "__pycache__" in n]
    assert "MyDrive/prodesc/" in out.stdout


def test_the_export_cell_pushes_to_the_hub_only_when_hub_repo_is_set():
    source = cell("05 export")
    assert "!python src/05_export.py {ARGS} {HUB}" in source
    for repo, expected in (("", ""), ("me/kettle-writer", "hub.repo=me/kettle-writer"), ("a b/c", "hub.repo='a b/c'")):
        namespace = {"HUB_REPO": repo, "shlex": __import__("shlex")}
        exec(python_only(source).replace("stop_if_failed", "print"), namespace)
        assert namespace["HUB"] == expected
    assert re.search(r'^HUB_REPO = "" {2}# @param \{type:"string"\}$', cells("code")[0], re.M)


def test_the_gguf_download_offers_the_file_the_modelfile_serves(tmp_path, monkeypatch):
    import sys
    import types

    export = tmp_path / "run" / "export"
    export.mkdir(parents=True)
    (export / "Modelfile").write_text("# comment\nFROM ./run-q8_0.gguf\nTEMPLATE \"\"\"{{ .Prompt }}\"\"\"\n")
    downloaded = []
    colab = types.ModuleType("google.colab")  # stands in for Colab's files.download (a browser download)
    colab.files = types.SimpleNamespace(download=downloaded.append)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    exec("import os\n" + cell("Download the GGUF"), {"RUN_DIR": str(tmp_path / "run")})
    assert downloaded == [f"{export}/run-q8_0.gguf", f"{export}/Modelfile"]
