"""colab/launcher.ipynb executed headless, the way a Colab user runs it: *Run all*, then *Run all*
again after a disconnect (a fresh runtime, the same Drive).

It runs on CPU with the `cpu` preset and tiny settings, set through the notebook's own form fields
as a user would set them. Only what exists solely in a Colab runtime is faked: the `google.colab`
package (tests/fakes/google/colab: `drive.mount` shows a temporary folder as "My Drive",
`files.download` records its calls; see tests/fakes/README.md). Everything else is real: the
kernel runs the numbered scripts with `!python`, which is this interpreter (its folder comes first
on the kernel's PATH), from this checkout (the kernel's working folder, so "Get the code" uses it
instead of cloning), on the embedded SmolLM2 model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from conftest import REPO, stage_env

NOTEBOOK = REPO / "colab" / "launcher.ipynb"
FAKES = REPO / "tests" / "fakes"
DRIVE_ENV = "PRODESC_FAKE_DRIVE"
DOWNLOADS_ENV = "PRODESC_FAKE_DOWNLOADS"
CELL_TIMEOUT_S = 600

TINY = (
    "train.max_steps=2 train.batch_size=1 train.grad_accum=1 train.save_steps=1 train.eval_steps=0 "
    "train.logging_steps=1 model.max_length=128 data.validation_size=0.03 "
    "eval.rows=2 eval.batch_size=2 eval.max_new_tokens=8"
)
"""The EXTRA field: 2 training steps of 1 row (a checkpoint after each), a small validation split,
2 test rows, 8 new tokens."""
DOWNLOADED = ("side_by_side.csv", "improved_examples.csv", "worst_regressions.csv", "report.html")

pytestmark = pytest.mark.skipif(
    Path("/content").exists(), reason="a Colab-like /content exists here: the notebook would clone the code"
)


def set_fields(nb, values: dict[str, str]) -> None:
    """Give the notebook's `NAME = "..."` settings new values, as a user fills in the form."""
    for name, value in values.items():
        pattern = re.compile(rf'^{name} = "[^"\n]*"', re.M)
        hits = [c for c in nb.cells if c.cell_type == "code" and pattern.search(c.source)]
        assert len(hits) == 1, f"the notebook should set {name} in exactly one cell"
        hits[0].source = pattern.sub(lambda _: f"{name} = {json.dumps(value)}", hits[0].source, count=1)


def cell_text(cell) -> str:
    """Everything a code cell printed (the scripts' stdout and stderr come as stream outputs)."""
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")


def run_notebook(vm: Path, drive: Path, downloads: Path):
    """Execute the notebook once in a fresh kernel; return the executed notebook.

    ``vm`` plays the Colab VM (Drive is mounted under it), ``drive`` the user's My Drive.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(NOTEBOOK, as_version=4)
    set_fields(nb, {
        "PRESET": "cpu", "EXTRA": TINY, "DRIVE_MOUNT": str(vm / "content" / "drive"),
        "TITLES": "Stainless Steel Garlic Press",
    })  # fmt: skip
    env = stage_env()
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FAKES), os.environ.get("PYTHONPATH")]))
    env.update({DRIVE_ENV: str(drive), DOWNLOADS_ENV: str(downloads)})
    # one torch thread: on 2 cores shared with other busy processes, two threads were several times
    # slower (see test_merge.one_torch_thread)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO)}})
    try:
        client.execute(env=env)
    except CellExecutionError:
        ran = [c for c in nb.cells if c.cell_type == "code" and c.get("outputs")]
        print("output of the failing cell:\n" + (cell_text(ran[-1])[-6000:] if ran else "(none)"))
        raise
    return nb


def stage_output(nb, script: str) -> str:
    cell = next(c for c in nb.cells if c.cell_type == "code" and f"!python src/{script}" in c.source)
    return cell_text(cell)


def outputs_of(nb, title: str) -> list:
    cell = next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith(f"# @title {title}"))
    return cell.outputs


def assert_every_cell_ran(nb) -> None:
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.execution_count is not None, cell.source[:80]
            assert not [o for o in cell.outputs if o.output_type == "error"], cell.source[:80]


def read_downloads(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def snapshot(folder: Path) -> dict[str, int]:
    """relative path -> mtime (ns) of every file under ``folder``."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in files}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    from prodesc import install

    requirements = install.detect_machine().requirements
    missing = install.install(Path(sys.executable), requirements, check=True)
    if missing:  # the notebook's 00 cell would run pip: a test must not install anything
        pytest.fail(f"not installed here: {install.listing(missing)}; run `python src/00_install.py` first")
    base = tmp_path_factory.mktemp("notebook")
    vm, drive, downloads = base / "vm1", base / "MyDrive", base / "downloads1.jsonl"
    nb = run_notebook(vm, drive, downloads)
    return nb, vm, drive, downloads


@pytest.mark.slow
def test_run_all_on_cpu_writes_to_drive_shows_results_and_offers_downloads(first_run):
    nb, vm, drive, downloads = first_run
    assert_every_cell_ran(nb)
    run = drive / "prodesc" / "runs" / "cpu"
    assert (vm / "content" / "drive" / "MyDrive").resolve() == drive.resolve()
    for name in (*DOWNLOADED, "metrics.json"):
        assert (run / "eval" / name).is_file(), name
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert (run / "logs" / "loss_curve.png").is_file()
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps"] == 2

    assert "already installed" in stage_output(nb, "00_install.py")  # the probe, no pip
    assert "training smollm2-135m-instruct" in stage_output(nb, "02_sft_qlora.py")

    calls = read_downloads(downloads)
    assert [Path(c["path"]).name for c in calls] == list(DOWNLOADED)
    for call in calls:
        assert Path(call["path"]).resolve() == (run / "eval" / Path(call["path"]).name).resolve()
        assert call["bytes"] > 0

    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    table = [o for o in outputs_of(nb, "Metrics") if o.output_type == "display_data"]
    assert len(table) == 1
    html = table[0].data["text/html"]
    assert "<table" in html and all(f"<th>{m}</th>" in html for m in metrics["models"])
    assert "rougeL" in html
    assert any("image/png" in o.get("data", {}) for o in outputs_of(nb, "Loss curve"))
    sample = [o for o in outputs_of(nb, "A sample") if o.output_type == "display_data"]
    assert len(sample) == 1
    assert all(f"<th>{c}</th>" in sample[0].data["text/html"] for c in ("uid", "title", "reference"))
    demo = stage_output(nb, "04_quick_demo.py")
    assert "=== Stainless Steel Garlic Press" in demo and "fine-tuned" in demo


@pytest.mark.slow
def test_run_all_again_after_a_disconnect_resumes_instead_of_starting_over(first_run, tmp_path):
    _, vm, drive, _ = first_run
    shutil.rmtree(vm)  # a new runtime: the old VM's disk (and its mount point) is gone, Drive stays
    run = drive / "prodesc" / "runs" / "cpu"
    parts = ("adapter", "checkpoints", "merged_fp16", "eval/generations")
    kept = {part: snapshot(run / part) for part in parts}
    summary = (run / "train_summary.json").read_text()
    downloads = tmp_path / "downloads2.jsonl"

    nb = run_notebook(tmp_path / "vm2", drive, downloads)

    assert_every_cell_ran(nb)
    assert "already prepared" in stage_output(nb, "01_prepare.py")
    trained = stage_output(nb, "02_sft_qlora.py")
    assert "already trained" in trained and "from scratch" not in trained
    merged = stage_output(nb, "03_merge_fp16.py")
    assert "already merged" in merged
    assert re.search(r"base: all 2 generations cached", merged), merged[-3000:]
    assert re.search(r"tuned: all 2 generations cached", merged), merged[-3000:]
    assert {part: snapshot(run / part) for part in kept} == kept
    assert (run / "train_summary.json").read_text() == summary
    assert [Path(c["path"]).name for c in read_downloads(downloads)] == list(DOWNLOADED)
