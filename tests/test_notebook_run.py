"""colab/launcher.ipynb executed headless, the way a Colab user runs it: *Run all*, then *Run all*
again after a disconnect (a fresh runtime, the same Drive).

It runs on CPU with the `cpu` preset, QUICK ticked and tiny settings, set through the notebook's own
form fields as a user would set them. The runtime starts empty, as Colab's does: the code comes from
the archive `make colab-bundle` writes, uploaded to the Drive folder, and the data from the
dataset's zip archive (as distributed: trn.json.gz and tst.json.gz in a folder, next to label
files) in `data/raw/` on Drive. Only what exists solely in a Colab runtime is faked: the
`google.colab` package (tests/fakes/google/colab: `drive.mount` shows a temporary folder as "My
Drive", `files.download` records its calls; see tests/fakes/README.md). Everything else is real:
the kernel runs the numbered scripts with `!python`, which is this interpreter (its folder comes
first on the kernel's PATH), on the embedded SmolLM2 model.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, stage_env

NOTEBOOK = REPO / "colab" / "launcher.ipynb"
FAKES = REPO / "tests" / "fakes"
DRIVE_ENV = "PRODESC_FAKE_DRIVE"
DOWNLOADS_ENV = "PRODESC_FAKE_DOWNLOADS"
CELL_TIMEOUT_S = 600

TINY = (
    "data.source= train.max_steps=2 train.batch_size=1 train.grad_accum=1 train.save_steps=1 "
    "train.logging_steps=1 eval.rows=2 eval.batch_size=2 eval.max_new_tokens=8"
)
"""The EXTRA field: the file in data/raw/ (the cpu preset reads the bundled sample), 2 training
steps of 1 row (a checkpoint after each), 2 test rows, 8 new tokens; the rest is QUICK's."""
RUN = "cpu-quick"
DATA_ZIP = "LF-AmazonTitles-1.3M.zip"
DOWNLOADED = ("side_by_side.csv", "improved_examples.csv", "worst_regressions.csv", "report.html")
EXPORTED = ("cpu-quick-q8_0.gguf", "Modelfile")
"""The last cell's downloads: the smaller GGUF file (the one the Modelfile serves) and the Modelfile."""

pytestmark = pytest.mark.skipif(
    Path("/content").exists(), reason="a Colab-like /content exists here: the notebook would clone the code"
)


def set_fields(nb, values: dict[str, str | bool]) -> None:
    """Give the notebook's `NAME = "..."` / `NAME = False` settings new values, as a user fills in
    the form."""
    for name, value in values.items():
        pattern = re.compile(rf'^{name} = ("[^"\n]*"|True|False)', re.M)
        hits = [c for c in nb.cells if c.cell_type == "code" and pattern.search(c.source)]
        assert len(hits) == 1, f"the notebook should set {name} in exactly one cell"
        text = repr(value) if isinstance(value, bool) else json.dumps(value)
        hits[0].source = pattern.sub(lambda _: f"{name} = {text}", hits[0].source, count=1)


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
        "PRESET": "cpu", "QUICK": True, "EXTRA": TINY, "DRIVE_MOUNT": str(vm / "content" / "drive"),
        "TITLES": "Stainless Steel Garlic Press",
    })  # fmt: skip
    (vm / "content").mkdir(parents=True, exist_ok=True)  # the runtime's empty working folder
    env = stage_env()
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FAKES), os.environ.get("PYTHONPATH")]))
    env.update({DRIVE_ENV: str(drive), DOWNLOADS_ENV: str(downloads)})
    # one torch thread: on 2 cores shared with other busy processes, two threads were several times
    # slower (see test_merge.one_torch_thread)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(vm / "content")}})
    try:
        client.execute(env=env)
    except CellExecutionError:
        ran = [c for c in nb.cells if c.cell_type == "code" and c.get("outputs")]
        print("output of the failing cell:\n" + (cell_text(ran[-1])[-6000:] if ran else "(none)"))
        raise
    return nb


def upload_code_and_data(folder: Path) -> None:
    """What a user puts in the Drive folder before *Run all*: the code archive from
    `make colab-bundle` (made from this checkout) and the dataset's zip in data/raw/."""
    out = subprocess.run(["make", "-s", "colab-bundle"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    (folder / "data" / "raw").mkdir(parents=True)
    shutil.move(REPO / "prodesc-code.zip", folder / "prodesc-code.zip")
    rows = (REPO / "src" / "prodesc" / "data" / "sample_trn.jsonl").read_bytes()
    with zipfile.ZipFile(folder / "data" / "raw" / DATA_ZIP, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("LF-AmazonTitles-1.3M/trn.json.gz", gzip.compress(rows))
        archive.writestr("LF-AmazonTitles-1.3M/tst.json.gz", gzip.compress(rows[: len(rows) // 3]))
        archive.writestr("LF-AmazonTitles-1.3M/filter_labels_train.txt", "0 1\n")


def stage_output(nb, script: str) -> str:
    cell = next(c for c in nb.cells if c.cell_type == "code" and f"!python src/{script}" in c.source
                and "--inspect" not in c.source)  # the data cell runs 01 too
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
    upload_code_and_data(drive / "prodesc")
    nb = run_notebook(vm, drive, downloads)
    return nb, vm, drive, downloads


@pytest.mark.slow
def test_run_all_on_cpu_writes_to_drive_shows_results_and_offers_downloads(first_run):
    nb, vm, drive, downloads = first_run
    assert_every_cell_ran(nb)
    run = drive / "prodesc" / "runs" / RUN
    assert (vm / "content" / "drive" / "MyDrive").resolve() == drive.resolve()
    for name in (*DOWNLOADED, "metrics.json"):
        assert (run / "eval" / name).is_file(), name
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert (run / "logs" / "loss_curve.png").is_file()
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps"] == 2

    assert "already installed" in stage_output(nb, "00_install.py")  # the probe, no pip
    assert (vm / "content" / "prodesc" / "src" / "01_prepare.py").is_file()  # unpacked from Drive
    assert "unpacking the code from" in cell_text(next(c for c in nb.cells if "Get the code" in c.source))
    data = cell_text(next(c for c in nb.cells if c.source.startswith("# @title The data")))
    assert DATA_ZIP in data and "trn.json.gz" in data, data[-2000:]
    assert "s a step: this run ends its 2 steps" in stage_output(nb, "02_sft_qlora.py")
    training = [o for o in outputs_of(nb, "Training") if o.output_type == "display_data"]
    assert len(training) == 1 and "peak_rss_mb" in training[0].data["text/html"]
    assert "TensorBoard: tensorboard --logdir" in "".join(o.get("text", "") for o in outputs_of(nb, "TensorBoard"))
    report = [o for o in outputs_of(nb, "The report") if o.output_type == "display_data"]
    assert len(report) == 1 and "<table" in report[0].data["text/html"]
    assert "training smollm2-135m-instruct" in stage_output(nb, "02_sft_qlora.py")

    calls = read_downloads(downloads)
    assert [Path(c["path"]).name for c in calls] == [*DOWNLOADED, *EXPORTED]
    for call in calls:
        folder = "export" if Path(call["path"]).name in EXPORTED else "eval"
        assert Path(call["path"]).resolve() == (run / folder / Path(call["path"]).name).resolve()
        assert call["bytes"] > 0
    exported = stage_output(nb, "05_export.py")
    assert re.search(r"cpu-quick-f16\.gguf: [\d.]+ MiB in [\d.]+ s; round-trip passed: 2/2 greedy outputs equal", exported), exported[-3000:]
    assert json.loads((run / "export" / "export_check.json").read_text())["types"] == ["f16", "q8_0"]

    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    shown = [o for o in outputs_of(nb, "Metrics") if o.output_type == "display_data"]
    assert len(shown) == 2 and "image/png" in shown[1].data  # the table, then metrics.png
    html = shown[0].data["text/html"]
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
    run = drive / "prodesc" / "runs" / RUN
    parts = ("adapter", "checkpoints", "merged_fp16", "eval/generations", "export")
    kept = {part: snapshot(run / part) for part in parts}
    summary = (run / "train_summary.json").read_text()
    downloads = tmp_path / "downloads2.jsonl"

    nb = run_notebook(tmp_path / "vm2", drive, downloads)  # the code comes from Drive again

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
    assert "already exported" in stage_output(nb, "05_export.py")
    assert [Path(c["path"]).name for c in read_downloads(downloads)] == [*DOWNLOADED, *EXPORTED]
