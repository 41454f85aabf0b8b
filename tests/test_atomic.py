"""prodesc.atomic: directories appear complete or not at all, and a killed writer's leftovers are swept."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from prodesc import atomic


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_build_dir_is_all_or_nothing(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic.build_dir(final) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("killed")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with atomic.build_dir(final) as tmp:
        (tmp / "whole").write_text("y")
    assert [p.name for p in final.iterdir()] == ["whole"]


def test_leftovers_of_a_dead_writer_are_removed_and_a_live_ones_kept(tmp_path):
    final = tmp_path / "merged_fp16"
    final.mkdir()
    dead = tmp_path / f".merged_fp16.tmp-{dead_pid()}"
    live = tmp_path / f".merged_fp16.tmp-{os.getppid()}"  # the process that runs pytest: alive
    other = tmp_path / ".merged_fp16_notes.tmp-1"  # another artifact's name: not ours
    for folder in (dead, live, other):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"0" * 100)
    with atomic.build_dir(final, overwrite=True) as tmp:
        (tmp / "config.json").write_text("{}")
    assert not dead.exists() and live.exists() and other.exists()
    assert (final / "config.json").is_file()


def test_a_kill_between_the_two_renames_restores_the_previous_version(tmp_path):
    final = tmp_path / "dataset"
    old = tmp_path / f".dataset.old-{dead_pid()}"  # final was moved aside, the new one never arrived
    old.mkdir()
    (old / "data.arrow").write_text("previous")
    assert atomic.sweep_leftovers(final) == []
    assert (final / "data.arrow").read_text() == "previous" and not old.exists()


def test_a_second_writer_without_overwrite_gets_a_named_error_and_leaves_no_temp(tmp_path):
    final = tmp_path / "model"
    with atomic.build_dir(final) as tmp:
        (tmp / "config.json").write_text("first")
    with pytest.raises(FileExistsError) as err:
        with atomic.build_dir(final) as tmp:
            (tmp / "config.json").write_text("second")
    assert err.value.filename == str(final) and "already exists" in err.value.strerror
    assert (final / "config.json").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_folder_renamed_into_place_after_the_check_wins(tmp_path, monkeypatch):
    """Another process's complete folder lands between the existence check and the rename."""
    real_replace = os.replace

    def replace_after_the_other_writer(src, dst):
        if str(src).endswith(f".tmp-{os.getpid()}") and not os.path.exists(dst):
            os.mkdir(dst)
            with open(os.path.join(dst, "weights"), "w") as f:
                f.write("theirs")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace_after_the_other_writer)
    for overwrite in (False, True):
        final = tmp_path / f"out-{overwrite}"
        with pytest.raises(FileExistsError) as err:
            with atomic.build_dir(final, overwrite=overwrite) as tmp:
                (tmp / "weights").write_text("mine")
        assert err.value.filename == str(final)
        assert (final / "weights").read_text() == "theirs"
        assert not list(tmp_path.glob(f".{final.name}.*"))
