"""The artifact root is decided in one place; RunPaths builds the documented layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from prodesc import paths as P
from prodesc.config import load_config
from prodesc.errors import ConfigError, UserError

COLAB = {"COLAB_RELEASE_TAG": "release-colab-test"}  # stand-in for the variables Colab sets


def test_cli_root_beats_environment(tmp_path):
    root, origin = P.resolve_root(str(tmp_path / "a"), environ={P.ROOT_ENV: str(tmp_path / "b"), **COLAB})
    assert root == tmp_path / "a" and origin == "--root"


def test_environment_beats_colab(tmp_path):
    root, origin = P.resolve_root(None, environ={P.ROOT_ENV: str(tmp_path / "b"), **COLAB})
    assert root == tmp_path / "b" and origin == f"${P.ROOT_ENV}"


def test_local_default_is_artifacts_under_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root, origin = P.resolve_root(None, environ={})
    assert root == tmp_path / "artifacts" and origin == "local default"


def test_colab_without_drive_is_an_error_not_a_silent_local_write(tmp_path, monkeypatch):
    # Colab and its Drive cannot run here: the env markers and the mount check are faked.
    fake_mount = tmp_path / "content" / "drive"
    (fake_mount / "MyDrive").mkdir(parents=True)  # the folder exists but nothing is mounted on it
    monkeypatch.setattr(P, "is_mounted", lambda path: False)
    with pytest.raises(UserError, match=r"Google Drive is not mounted.*drive\.mount"):
        P.resolve_root(None, environ=COLAB, drive_mount=fake_mount)


def test_colab_with_drive_mounted_uses_a_folder_in_my_drive(tmp_path, monkeypatch):
    fake_mount = tmp_path / "content" / "drive"
    (fake_mount / "MyDrive").mkdir(parents=True)
    monkeypatch.setattr(P, "is_mounted", lambda path: path == fake_mount)  # stand-in for the FUSE mount
    root, origin = P.resolve_root(None, environ=COLAB, drive_mount=fake_mount)
    assert root == fake_mount / "MyDrive" / "prodesc" and origin == "Colab Drive"


def test_in_colab_reads_the_runtime_markers():
    assert P.in_colab(COLAB) and not P.in_colab({})


def test_run_paths_layout(tmp_path):
    cfg = load_config("cpu", ["paths.run=exp1", "data.name=mydata"])
    rp = P.RunPaths.from_config(cfg, tmp_path)
    assert rp.raw_dir == tmp_path / "data" / "raw"
    assert rp.prepared == tmp_path / "data" / "prepared" / "mydata"
    assert rp.prepared_manifest == rp.prepared / "manifest.json"
    assert rp.models == tmp_path / "models"
    assert rp.run == tmp_path / "runs" / "exp1"
    for name in ("checkpoints", "adapter", "eval", "logs"):
        assert getattr(rp, name) == rp.run / name
    assert rp.merged == rp.run / "merged_fp16"
    assert rp.config_file == rp.run / "config.yaml"
    assert rp.data_record == rp.run / "prepared_data.json"


def test_default_run_name_is_the_preset_and_prepared_name_tracks_settings(tmp_path):
    a = P.RunPaths.from_config(load_config("cpu"), tmp_path)
    b = P.RunPaths.from_config(load_config("cpu", ["data.min_content_chars=50"]), tmp_path)
    c = P.RunPaths.from_config(load_config("cpu", ["seed=1"]), tmp_path)
    assert a.run_name == "cpu"
    assert a.prepared_name.startswith("bundled-chat-")
    assert len({a.prepared_name, b.prepared_name, c.prepared_name}) == 3


def test_relative_paths_stay_inside_the_root(tmp_path):
    rp = P.RunPaths.from_config(load_config("cpu"), tmp_path)
    assert rp.inside_root("data/raw/x.json", "data.source") == tmp_path / "data" / "raw" / "x.json"
    assert rp.inside_root("/abs/x.json", "data.source") == Path("/abs/x.json")
    with pytest.raises(ConfigError, match="points outside the root"):
        rp.inside_root("../../etc/passwd", "data.source")


def test_raw_source_finds_the_one_file_in_data_raw(tmp_path):
    rp = P.RunPaths.from_config(load_config("cpu"), tmp_path)
    with pytest.raises(UserError, match="no raw data in"):
        rp.raw_source("")
    rp.raw_dir.mkdir(parents=True)
    (rp.raw_dir / "trn.json.gz").write_bytes(b"x")
    (rp.raw_dir / "notes.txt").write_text("ignored")
    assert rp.raw_source("") == rp.raw_dir / "trn.json.gz"
    (rp.raw_dir / "tst.json.gz").write_bytes(b"x")  # the release unpacked: its training file wins
    assert rp.raw_source("") == rp.raw_dir / "trn.json.gz"
    (rp.raw_dir / "trn.json").write_text("{}")  # two training files: the user chooses
    with pytest.raises(UserError, match="several raw files"):
        rp.raw_source("")
    (rp.raw_dir / "trn.json").unlink()
    (rp.raw_dir / "trn.json.gz").unlink()
    (rp.raw_dir / "other.jsonl").write_text("{}")
    with pytest.raises(UserError, match="several raw files"):
        rp.raw_source("")


def test_a_bare_file_name_is_also_looked_up_in_data_raw(tmp_path):
    rp = P.RunPaths.from_config(load_config("cpu"), tmp_path)
    rp.raw_dir.mkdir(parents=True)
    (rp.raw_dir / "trn.json.gz").write_bytes(b"x")
    assert rp.raw_source("trn.json.gz") == rp.raw_dir / "trn.json.gz"
    (tmp_path / "trn.json.gz").write_bytes(b"y")  # a file of that name in the root itself wins
    assert rp.raw_source("trn.json.gz") == tmp_path / "trn.json.gz"
