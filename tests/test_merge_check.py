"""03's merge check in 16 bits: right for a correct bfloat16 merge, wrong for a wrong adapter.

A bfloat16 merge rounds every merged weight, so the merged model's greedy outputs can differ from
the unmerged adapter's (measured on the tiny model with a random adapter: 97.5% argmax agreement
over 316 tokens). The check compares each merged weight with base + the adapter file's update
computed in float32: a correct merge is within half a unit in the last place.
"""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import EVAL_OVERRIDES, stage_paths, tiny_overrides, write_prepared, write_tiny_adapter
from prodesc import merge


def bf16_adapter_model(model_dir, adapter):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16)
    return PeftModel.from_pretrained(base, str(adapter)).eval()


def corrupted_copy(adapter, target, change):
    """``adapter`` copied to ``target`` with ``change(tensors)`` applied to its weights file."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(adapter, target)
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    change(tensors)
    save_file(tensors, str(target / "adapter_model.safetensors"))
    return target


ONE_B = "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"


def scale(key, factor):
    def change(tensors):
        tensors[key] = tensors[key] * factor
    return change


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    return write_tiny_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "adapter", seed=0)


def test_a_correct_bfloat16_merge_passes_within_half_a_unit(tiny_model_dir, adapter):
    import torch

    merged, check = merge.merge_checked(bf16_adapter_model(tiny_model_dir, adapter), adapter)
    assert check["ok"] and check["problems"] == []
    assert check["layers"] == 14  # 2 layers x 7 projections
    assert check["worst_ulp"] <= 0.5 < merge.CHECK_TOLERANCE_ULP
    assert 0 < check["delta_lost"] < merge.DELTA_LOST_WARNING
    assert not hasattr(merged, "peft_config") and merged.dtype == torch.bfloat16
    # the merged weights are PEFT's own merge: equal to merge_and_unload's
    reference = bf16_adapter_model(tiny_model_dir, adapter).merge_and_unload()
    for (name, got), (_, want) in zip(merged.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(got, want), name


@pytest.mark.parametrize(
    "change",
    [scale(ONE_B, 0.0), scale(ONE_B, 2.0), scale(ONE_B, 1.01)],
    ids=["one-B-zeroed", "one-B-doubled", "one-B-times-1.01"],
)
def test_the_check_fails_for_a_wrong_adapter(tiny_model_dir, adapter, tmp_path, change):
    """The model merged from ``adapter``, checked against a copy with one LoRA matrix changed."""
    wrong = corrupted_copy(adapter, tmp_path / "wrong", change)
    _, check = merge.merge_checked(bf16_adapter_model(tiny_model_dir, adapter), wrong)
    assert not check["ok"] and check["layers"] == 14
    assert check["worst_ulp"] is None or check["worst_ulp"] > 100 * merge.CHECK_TOLERANCE_ULP


def test_a_layer_missing_from_the_adapter_file_fails(tiny_model_dir, adapter, tmp_path):
    def drop(tensors):
        del tensors[ONE_B], tensors[ONE_B.replace("lora_B", "lora_A")]

    wrong = corrupted_copy(adapter, tmp_path / "wrong", drop)
    _, check = merge.merge_checked(bf16_adapter_model(tiny_model_dir, adapter), wrong)
    assert not check["ok"] and check["layers"] == 13
    assert any("layers.1.mlp.down_proj has no update" in p for p in check["problems"])


@pytest.mark.parametrize("update", [1.0, 1e-4], ids=["trained", "tiny-updates"])
def test_03_in_bfloat16_passes_its_merge_check(tiny_model_dir, tmp_path, capsys, update):
    """The stage on a bfloat16 base: merged_fp16/ in bfloat16, the check passed in the report. With
    tiny updates (the adapter's B scaled by 1e-4, like a short run: SmolLM2-135M after 5 steps lost
    93% of its update to bfloat16 rounding) the weights are still right, and the log says how much
    of the update the rounding lost."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    overrides = tiny_overrides(tiny_model_dir, tmp_path / "root", *EVAL_OVERRIDES, "model.dtype=bfloat16")
    _, paths = stage_paths(overrides)
    write_prepared(paths)
    write_tiny_adapter(tiny_model_dir, paths.adapter, seed=0)
    weights = paths.adapter / "adapter_model.safetensors"
    save_file({k: v * update if "lora_B" in k else v for k, v in load_file(str(weights)).items()}, str(weights))
    assert merge.main(["--preset", "cpu", *overrides]) == 0
    check = json.loads((paths.merged / merge.MERGE_CHECK).read_text())
    assert check["passed"] and check["dtype"] == "bfloat16"
    assert check["weights"]["layers"] == 14 and check["weights"]["worst_ulp"] <= 0.5
    assert check["checked"] == 3 and len(check["examples"]) == 3
    with safe_open(str(paths.merged / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    err = capsys.readouterr().err
    assert "merge check passed: 14 merged layers within 0.5 units" in err
    lost = check["weights"]["delta_lost"]
    if update == 1.0:
        assert lost < merge.DELTA_LOST_WARNING and "warning: rounding" not in err
    else:
        assert lost > merge.DELTA_LOST_WARNING and f"warning: rounding the merged weights to bfloat16 lost {lost:.0%}" in err
    metrics = json.loads((paths.eval / "metrics.json").read_text())
    assert metrics["merge_check"]["passed"] is True
    assert "FAILED" not in (paths.eval / "report.html").read_text()
