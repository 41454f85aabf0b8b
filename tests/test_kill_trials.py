"""Kill trials, small: SIGKILL 02 three times in one chain, 01 once and 03 once (sampling, so its
re-run must go on sampling where the killed run stopped), with the same
code as ``bench/kill_trials.py`` (which runs >= 20 kills of 02). Real stage processes, real SIGKILLs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from conftest import REPO


def load_bench():
    """bench/ is not a package: load kill_trials.py from its path (once per session)."""
    if "kill_trials" in sys.modules:
        return sys.modules["kill_trials"]
    spec = importlib.util.spec_from_file_location("kill_trials", REPO / "bench" / "kill_trials.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["kill_trials"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_killed_stages_resume_to_the_uninterrupted_result(tiny_model_dir, tmp_path):
    kill_trials = load_bench()
    lines: list[str] = []
    report = kill_trials.run_trials(tmp_path, n02=3, n01=1, n03=1, seed=1, model_dir=tiny_model_dir,
                                    say=lines.append, sample_03=True)
    table = report.table()
    stages = sorted(t.stage for t in report.trials)
    assert stages == ["01", "02", "02", "02", "03"], table
    assert report.ok, table
    assert report.finals and all(ok for *_, ok in report.finals), table
    assert all("adapter max|diff| 0" in what for _, what, _ in report.finals), table
    # a SIGKILL leaves the run's lock behind; the re-run sees its pid is dead and takes it over
    assert any("stale lock taken over" in t.notes for t in report.trials if t.stage == "02"), table
    assert table.splitlines()[-1].startswith("5 trials, 5 passed")


def test_the_checks_catch_half_written_artifacts(tmp_path):
    """The trial's checks are not blind: a truncated adapter, a checkpoint that passes 02's quick
    check but does not load, a cut CSV and a cut report are all reported."""
    kill_trials = load_bench()
    from prodesc.paths import RunPaths

    paths = RunPaths(root=tmp_path, run_name="r", prepared_name="p")
    ckpt = paths.checkpoints / "checkpoint-2"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text('{"global_step": 2}')
    _write_safetensors(ckpt / "adapter_model.safetensors")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        _write_zip(ckpt / name)  # a valid zip, but not a torch file
    paths.adapter.mkdir(parents=True)
    for name in ("adapter_config.json", "prompt_template.json", "tokenizer.json"):
        (paths.adapter / name).write_text("{}")
    _write_safetensors(paths.adapter / "adapter_model.safetensors", cut=True)
    _, problems, _ = kill_trials.check_after_kill_02(paths)
    assert any("checkpoint-2 passes the completeness check but" in p for p in problems), problems
    assert any(p.startswith("adapter/ exists but adapter_model.safetensors") for p in problems), problems

    paths.eval.mkdir(parents=True)
    (paths.eval / "side_by_side.csv").write_text("uid,title\r\nB1,a\r\n")
    (paths.eval / "report.html").write_text("<html><body><table>")
    _, problems, _ = kill_trials.check_after_kill_03(paths, rows=8)
    assert "side_by_side.csv has 1 rows, not 8" in problems and "report.html is cut short" in problems


def _write_safetensors(path: Path, cut: bool = False) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.ones(4, 4)}, str(path))
    if cut:
        path.write_bytes(path.read_bytes()[:-8])


def _write_zip(path: Path) -> None:
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data.txt", "not a torch file")
