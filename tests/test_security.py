"""Security defaults: no model code from a repository unless asked, safetensors only, the Hugging
Face token never written or printed, and config paths that cannot climb out of the root.

Fakes: ``google.colab.userdata`` (Colab's secrets) cannot run here, so a stand-in module is put in
``sys.modules`` for the token tests that need it; everything else runs the real stages.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from conftest import (
    EVAL_OVERRIDES, PYTHON, run_stage_subprocess, stage_env, stage_paths, synthetic_rows, tiny_overrides,
)
from prodesc import config as config_mod
from prodesc import hftoken, models, prepare, train
from prodesc.errors import ConfigError, UserError
from prodesc.paths import RunPaths

TOKEN = "hf_TESTTOKENprodesc0123456789abcdefXYZ"


# --------------------------------------------------------------------------- trust_remote_code

CUSTOM_CODE = '''
import os, pathlib
pathlib.Path(os.environ["PRODESC_MARKER"]).write_text("the repository's code ran")
from transformers import LlamaConfig, LlamaForCausalLM

class CustomConfig(LlamaConfig):
    model_type = "prodesc_custom"

class CustomModel(LlamaForCausalLM):
    config_class = CustomConfig
'''


def custom_code_model(tiny_model_dir: Path, target: Path) -> Path:
    """The tiny model, re-labelled as a model type transformers does not know, whose config.json
    points at Python code in the folder (``auto_map``) that leaves a marker file when it runs."""
    shutil.copytree(tiny_model_dir, target)
    cfg_file = target / "config.json"
    data = json.loads(cfg_file.read_text())
    data["model_type"] = "prodesc_custom"
    data["auto_map"] = {"AutoConfig": "custom_code.CustomConfig",
                        "AutoModelForCausalLM": "custom_code.CustomModel"}
    cfg_file.write_text(json.dumps(data))
    (target / "custom_code.py").write_text(CUSTOM_CODE)
    return target


def test_trust_remote_code_is_off_by_default_and_in_every_preset():
    assert config_mod.Config().model.trust_remote_code is False
    for preset in config_mod.preset_names():
        assert config_mod.load_config(preset).model.trust_remote_code is False, preset
    assert "trust" in config_mod.field_docs()["model.trust_remote_code"]


@pytest.mark.slow  # real processes, 10-17 s: in the full suite, not make test-fast
def test_repository_code_never_runs_unless_trusted(tiny_model_dir, tmp_path):
    folder = custom_code_model(tiny_model_dir, tmp_path / "custom")
    paths = RunPaths(root=tmp_path / "root", run_name="r", prepared_name="p")
    cfg = config_mod.load_config("cpu", [f"model.name={folder}"])
    with pytest.raises(UserError, match="needs the model's own Python code .* model.trust_remote_code=true"):
        models.resolve_model_path(cfg, paths)
    # Past that check, both loaders (02's and 03's) still refuse on their own, because they pass
    # the setting on; with model.trust_remote_code=true the code runs (the marker appears).
    script = (
        "import sys, os\n"
        "from pathlib import Path\n"
        "from prodesc import config, models\n"
        "trust = sys.argv[2]\n"
        "cfg = config.load_config('cpu', [f'model.name={sys.argv[1]}', f'model.trust_remote_code={trust}',"
        " 'model.backend=hf', 'lora.r=2', 'lora.alpha=4'])\n"
        "for name, load in (('merge', lambda: models.load_model(sys.argv[1], cfg)),\n"
        "                   ('train', lambda: models.load_for_training(cfg, sys.argv[1], 'hf'))):\n"
        "    try:\n"
        "        load()\n"
        "        print(name, 'loaded')\n"
        "    except Exception as err:\n"
        "        print(name, 'refused', type(err).__name__)\n"
    )
    for trust in ("false", "true"):
        marker = tmp_path / f"marker-{trust}"
        env = {**stage_env(), "PRODESC_MARKER": str(marker), "HF_MODULES_CACHE": str(tmp_path / f"mods-{trust}")}
        out = subprocess.run([PYTHON, "-c", script, str(folder), trust], env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        if trust == "false":
            assert "merge refused" in out.stdout and "train refused" in out.stdout, out.stdout
            assert not marker.exists()
        else:
            assert "merge loaded" in out.stdout and "train loaded" in out.stdout, (out.stdout, out.stderr[-2000:])
            assert marker.exists()


# --------------------------------------------------------------------------- safetensors only


class _Booby:
    """Unpickling this writes a file: what a malicious pytorch_model.bin can do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "unpickled"))


def test_pickle_only_model_folder_is_refused_and_never_unpickled(tiny_model_dir, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_model_dir / "config.json", folder / "config.json")
    marker = tmp_path / "unpickled"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Booby(marker)))
    assert not models.is_model_dir(folder)
    paths = RunPaths(root=tmp_path / "root", run_name="r", prepared_name="p")
    cfg = config_mod.load_config("cpu", [f"model.name={folder}"])
    with pytest.raises(UserError) as caught:
        models.resolve_model_path(cfg, paths)
    msg = str(caught.value)
    assert "\n" not in msg and "pytorch_model.bin" in msg and "safetensors only" in msg
    # the loaders themselves ask transformers for safetensors only
    with pytest.raises(UserError, match="cannot load model"):
        models.load_model(folder, cfg)
    assert not marker.exists()


def test_pickled_adapter_is_refused(tiny_model_dir, tmp_path):
    adapter = tmp_path / "ckpt"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    marker = tmp_path / "unpickled"
    (adapter / "adapter_model.bin").write_bytes(pickle.dumps(_Booby(marker)))
    cfg = config_mod.load_config("cpu", [f"model.name={tiny_model_dir}"])
    base = models.load_model(tiny_model_dir, cfg)
    with pytest.raises(UserError, match="has no adapter_model.safetensors: .* safetensors only"):
        models.with_adapter(base, adapter)
    assert not marker.exists()


# --------------------------------------------------------------------------- the HF token


def _fake_colab(monkeypatch, get):
    """A stand-in for google.colab.userdata (the real one exists only in Colab's kernel)."""
    colab = types.ModuleType("google.colab")
    userdata = types.ModuleType("google.colab.userdata")
    userdata.get = get
    colab.userdata = userdata
    google = sys.modules.get("google") or types.ModuleType("google")
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setattr(google, "colab", colab, raising=False)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.userdata", userdata)
    monkeypatch.setenv("COLAB_RELEASE_TAG", "test")


def test_token_from_the_environment_first(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    _fake_colab(monkeypatch, lambda name: "hf_fromcolab")
    assert hftoken.hf_token() == (TOKEN, "$HF_TOKEN")
    monkeypatch.delenv("HF_TOKEN")
    assert hftoken.hf_token() == ("hf_fromcolab", "Colab secrets")


def test_token_from_colab_secrets_is_exported_not_printed(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    asked = []
    _fake_colab(monkeypatch, lambda name: asked.append(name) or TOKEN)
    paths = RunPaths(root=tmp_path, run_name="r", prepared_name="p")
    cfg = config_mod.load_config("cpu", ["model.name=someone/gated-model"])
    assert models.resolve_model_path(cfg, paths) == "someone/gated-model"
    assert asked == ["HF_TOKEN"] and os.environ["HF_TOKEN"] == TOKEN
    captured = capsys.readouterr()
    assert "Hugging Face token: from Colab secrets" in captured.err
    assert TOKEN not in captured.out + captured.err


@pytest.mark.parametrize("failure", ["missing", "not_in_kernel"])
def test_colab_secret_failures_mean_no_token(monkeypatch, failure):
    monkeypatch.delenv("HF_TOKEN", raising=False)

    def get(name):
        if failure == "missing":
            raise KeyError(name)  # the real userdata raises SecretNotFoundError
        raise AttributeError("'NoneType' object has no attribute 'kernel'")  # a !python subprocess

    _fake_colab(monkeypatch, get)
    assert hftoken.hf_token() == (None, "none")
    assert "HF_TOKEN" not in os.environ


def test_no_colab_lookup_outside_colab(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    called = []
    _fake_colab(monkeypatch, lambda name: called.append(name) or TOKEN)
    monkeypatch.delenv("COLAB_RELEASE_TAG")
    assert hftoken.hf_token() == (None, "none") and not called


def test_no_config_key_can_hold_a_token():
    assert not [k for k in config_mod.field_docs() if "token" in k.lower() and "tokens" not in k.lower()]


@pytest.mark.slow  # real processes, 10-17 s: in the full suite, not make test-fast
def test_token_is_never_written_or_printed_by_the_pipeline(tiny_model_dir, tmp_path, monkeypatch):
    """01 → 02 → 03 on the tiny model with a token in the environment; then every byte under the
    root and everything printed is searched for it (and for its base64/UTF-16 forms)."""
    import base64

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    root = tmp_path / "root"
    raw = root / "data" / "raw" / "trn.jsonl"
    raw.parent.mkdir(parents=True)
    raw.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(64)))
    overrides = tiny_overrides(tiny_model_dir, root, *EVAL_OVERRIDES, "train.max_steps=4", "train.save_steps=2",
                               "data.source=trn.jsonl", "data.train_size=48", "data.validation_size=8",
                               "data.test_size=8", "data.dedup=false")
    printed = []
    for script in ("01_prepare.py", "02_sft_qlora.py", "03_merge_fp16.py"):
        out = run_stage_subprocess(script, overrides, timeout=600)
        assert out.returncode == 0, (script, out.stderr[-3000:])
        printed += [out.stdout, out.stderr]
    _, paths = stage_paths(overrides)
    assert (paths.eval / "side_by_side.csv").is_file() and (paths.adapter / "adapter_model.safetensors").is_file()

    forms = [TOKEN.encode(), TOKEN.encode("utf-16-le"), base64.b64encode(TOKEN.encode())[:24]]
    files = [p for p in root.rglob("*") if p.is_file()]
    assert len(files) > 20  # prepared data, config.yaml, checkpoints, adapter, merged model, eval, logs
    leaks = [str(p) for p in files for form in forms if form in p.read_bytes()]
    assert not leaks, leaks
    assert not [text for text in printed if TOKEN in text]

    # and the weights this run wrote are safetensors only. Checkpoints also hold the Trainer's own
    # torch files (optimizer, scheduler, RNG state: loaded with weights_only=True on resume;
    # training_args.bin: written, never loaded)
    trainer_files = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"}
    for folder in (paths.adapter, paths.merged, *paths.checkpoints.glob("checkpoint-*")):
        names = {p.name for p in folder.iterdir()}
        assert any(n.endswith(".safetensors") for n in names), folder
        pickles = {n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))}
        assert pickles <= (trainer_files if folder.parent == paths.checkpoints else set()), (folder, pickles)


# --------------------------------------------------------------------------- paths stay in the root


@pytest.mark.parametrize("override, key", [
    ("paths.run=../outside", "paths.run"),
    ("paths.run=a/b", "paths.run"),
    ("data.name=../../elsewhere", "data.name"),
    ("data.name=.hidden", "data.name"),
])
def test_folder_names_cannot_climb_out(override, key):
    with pytest.raises(ConfigError) as caught:
        config_mod.load_config("cpu", [override])
    assert f"'{key}'" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("override, key", [
    ("data.source=../../etc/passwd", "data.source"),
    ("data.source=data/raw/../../../x.jsonl", "data.source"),
    ("data.template=../evil.yaml", "data.template"),
])
def test_relative_paths_outside_the_root_stop_the_stage(tmp_path, capsys, override, key):
    root = tmp_path / "deep" / "root"
    rc = prepare.main(["--preset", "cpu", "--root", str(root), override])
    lines = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("[prodesc]")]
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {key} '") and "points outside the root" in lines[0]
    assert "absolute path" in lines[0]


def test_relative_resume_outside_the_root_is_refused(tmp_path):
    cfg, paths = stage_paths([f"paths.root={tmp_path / 'root'}", "resume=../../other/checkpoint-3"])
    from prodesc import checkpoints

    with pytest.raises(ConfigError, match="resume '../../other/checkpoint-3' points outside the root"):
        train.plan_start(cfg, paths, checkpoints.checkpoint_dirs(cfg, paths))


def test_explicit_absolute_paths_outside_the_root_are_used(tmp_path, capsys):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    raw = outside / "trn.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(40)))
    template = outside / "mine.yaml"
    template.write_text("kind: text\nprompt: 'Title: {title}\\nDescription: '\ncompletion: '{content}'\n")
    root = tmp_path / "root"
    rc = prepare.main(["--preset", "cpu", "--root", str(root), f"data.source={raw}", f"data.template={template}",
                       "data.dedup=false"])
    assert rc == 0, capsys.readouterr().err
    manifest = json.loads(next(root.glob("data/prepared/*/manifest.json")).read_text())
    assert manifest["source"]["path"] == str(raw) and manifest["template"]["name"] == "mine"
