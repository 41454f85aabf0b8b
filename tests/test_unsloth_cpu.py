"""02 and 03 under Unsloth's patches, on CPU (docs/unsloth-cpu.md).

Unsloth cannot load or train a model without a GPU, but in its CPU mode (UNSLOTH_ALLOW_CPU=1, the
mode of Unsloth's own CI) ``import unsloth`` works and patches transformers, TRL, PEFT and datasets
as it does on Colab. Here 02 imports it where it does on a GPU, then trains with the hf backend
and 03 merges and evaluates, all in one process under the patches; the same stages without
Unsloth give the reference. Each run is a subprocess, so the patches never reach other tests.
Unsloth's own loader (FastLanguageModel) still has only its stand-in (tests/test_models.py).

Needs unsloth, unsloth_zoo and triton, which 00_install installs on Linux (install.UNSLOTH_CPU);
without them the test skips, except under CI (`CI` set), where a skip would hide a gap.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import (
    EVAL_OVERRIDES, PYTHON, build_tiny_model, stage_env, stage_paths, tiny_overrides, write_prepared,
)

HERE = Path(__file__).resolve().parent
WANTED = ("unsloth", "unsloth_zoo", "triton")


def needs_unsloth() -> None:
    missing = [name for name in WANTED if importlib.util.find_spec(name) is None]
    if missing:
        message = f"not installed: {', '.join(missing)} (python src/00_install.py installs them on Linux)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def run_stages(mode: str, overrides: list[str], folder: Path) -> dict:
    """tests/unsloth_stages.py in a subprocess (its working folder: ``folder``, where Unsloth
    writes unsloth_compiled_cache/); its JSON report."""
    env = stage_env()
    env.pop("UNSLOTH_ALLOW_CPU", None)
    if mode == "unsloth":
        env["UNSLOTH_ALLOW_CPU"] = "1"
        # Unsloth torch.compiles transformers' causal mask; on CPU the compiled code trips torch's
        # custom-op aliasing check (inductor::_alloc_from_pool), a deprecation warning that torch
        # 2.13 makes an error when CI is set (torch/_functorch/config.py). Keep the warning, as a
        # user's run has it: docs/unsloth-cpu.md.
        env["TORCHINDUCTOR_ERROR_ON_CUSTOM_OP_ALIASING"] = "0"
    report = folder / f"{mode}.json"
    out = subprocess.run(
        [PYTHON, str(HERE / "unsloth_stages.py"), mode, str(report), *overrides],
        cwd=folder, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0 and report.is_file(), out.stderr[-4000:]
    info = json.loads(report.read_text())
    assert (info["train_rc"], info["merge_rc"]) == (0, 0), out.stderr[-4000:]
    return info


def adapter_config(folder: Path) -> dict:
    """adapter_config.json; its target_modules come from a set, in an order that varies per process."""
    config = json.loads((folder / "adapter_config.json").read_text())
    config["target_modules"] = sorted(config["target_modules"])
    return config


def tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_same_tensors(a: Path, b: Path) -> None:
    import torch

    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{a.name}: {len(different)} tensors differ, e.g. {different[:3]}"


@pytest.mark.slow
def test_training_and_merge_under_unsloths_patches_equal_the_plain_run(tmp_path):
    needs_unsloth()
    # init_std 0.2: the tiny model writes text, so the merge check and the evaluation compare outputs
    model = build_tiny_model(tmp_path / "tiny", init_std=0.2)
    runs = {}
    for mode in ("plain", "unsloth"):
        folder = tmp_path / mode
        steps = ("train.max_steps=4", "train.save_steps=2", "train.eval_steps=4")
        overrides = tiny_overrides(model, folder / "root", *steps, *EVAL_OVERRIDES)
        _, paths = stage_paths(overrides)
        write_prepared(paths)
        runs[mode] = (run_stages(mode, overrides, folder), paths)
    (plain, p), (under, u) = runs["plain"], runs["unsloth"]

    # Unsloth was imported the way 02 imports it, before the libraries it patches, and it did patch
    # functions our path calls (the list is in docs/unsloth-cpu.md)
    assert under["version"] and under["imported_before"] == []
    assert under["replaced"], "Unsloth replaced none of the functions 02 and 03 call: the test proves nothing"
    # installed but not asked for: on CPU the stages never import it, and it refuses without its CPU mode
    assert plain["unsloth_imported"] is False
    assert plain["import_error"].startswith("NotImplementedError")

    # 02: the same losses and a bit-identical adapter, in a folder 03 reads the same way
    assert (u.logs / "loss_history.csv").read_text() == (p.logs / "loss_history.csv").read_text()
    assert_same_tensors(u.adapter / "adapter_model.safetensors", p.adapter / "adapter_model.safetensors")
    assert sorted(f.name for f in u.adapter.iterdir()) == sorted(f.name for f in p.adapter.iterdir())
    assert adapter_config(u.adapter) == adapter_config(p.adapter)
    for name in ("prompt_template.json", "tokenizer.json", "tokenizer_config.json"):
        assert (u.adapter / name).read_text() == (p.adapter / name).read_text(), name
    assert_same_tensors(u.checkpoints / "checkpoint-2" / "adapter_model.safetensors",
                        p.checkpoints / "checkpoint-2" / "adapter_model.safetensors")

    # 03: a bit-identical merged model, the merge check passed on real text, the same evaluation
    assert_same_tensors(u.merged / "model.safetensors", p.merged / "model.safetensors")
    check = json.loads((u.merged / "merge_check.json").read_text())
    assert check["passed"] and all(e["merged"] for e in check["examples"])
    outputs = [json.loads((r.eval / "outputs.json").read_text())["outputs"] for r in (u, p)]
    assert outputs[0] == outputs[1] and all(outputs[0]["tuned"])
    assert outputs[0]["tuned"] != outputs[0]["base"]  # the trained adapter changed what the model writes
