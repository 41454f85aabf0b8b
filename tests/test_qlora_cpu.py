"""The GPU presets' QLoRA path, run for real on CPU: bitsandbytes 0.50.2 runs its NF4 (4-bit) and
LLM.int8 (8-bit) layers on the CPU, so model.load_in_4bit / load_in_8bit are honoured here too.

01 → 02 in 4-bit (killed at a checkpoint, resumed, the same adapter as an uninterrupted run) →
03 merged into the 16-bit (bfloat16) base → 04, on a tiny random Llama; and an 8-bit tiny T5 that
trains and merges. Each test prints its stage times and peak RSS (pytest -s shows them).
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import replace

import pytest

from conftest import (
    EVAL_OVERRIDES, run_stage_subprocess, stage_paths, tiny_overrides,
    write_prepared,
)
from prodesc import checkpoints, demo, merge, models, train
from test_seq2seq import build_tiny_t5, t5_overrides
from test_train import adapter_tensors, kill_02_after, max_abs_diff

QLORA = [
    "model.load_in_4bit=true", "model.dtype=bfloat16",  # the a100/l4 presets' settings
    "train.max_steps=6", "train.save_steps=2", "train.eval_steps=3",
]
"""A 6-step QLoRA run on the tiny model (a checkpoint every 2 steps), bfloat16 like the GPU presets."""

TITLE = "Acme Stainless Kettle 500 ml"
QUANTIZED = {"Linear4bit", "Params4bit", "Linear8bitLt", "Int8Params"}


def peak_rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def layer_types(model) -> set[str]:
    return {type(m).__name__ for m in model.modules()} | {type(p).__name__ for p in model.parameters()}


def report(times: dict[str, float], subprocesses: bool = False) -> None:
    rss = f"pytest {peak_rss_mb(resource.RUSAGE_SELF):.0f} MB"
    if subprocesses:
        rss += f", stage subprocesses {peak_rss_mb(resource.RUSAGE_CHILDREN):.0f} MB"
    print("\n" + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()) + f"; peak RSS: {rss}")


def assert_plain_16bit(folder, auto_class):
    """A merged model folder with no trace of quantization: config, tensors and loaded layers."""
    import torch
    from safetensors import safe_open

    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    dtypes = set()
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            dtypes |= {f.get_slice(k).get_dtype() for k in f.keys()}
            assert not any("absmax" in k or "quant_" in k or k.endswith(".SCB") for k in f.keys())
    assert dtypes <= {"BF16", "F32"} and "BF16" in dtypes  # (T5 keeps `wo` in float32)
    model = auto_class.from_pretrained(str(folder))
    assert not layer_types(model) & QUANTIZED
    assert all(m.weight.dtype in (torch.bfloat16, torch.float32) for m in model.modules()
               if isinstance(m, torch.nn.Linear))


@pytest.mark.slow
def test_4bit_path_end_to_end_on_cpu(tiny64_model_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prodesc.generate import GenSettings, describe

    times: dict[str, float] = {}
    start = time.monotonic()
    # 01: the real prepare stage on synthetic rows, for two runs
    reference = tiny_overrides(tiny64_model_dir, tmp_path / "reference", *QLORA)
    killed = tiny_overrides(tiny64_model_dir, tmp_path / "killed", *QLORA)
    (cfg, ref_paths), (_, paths) = stage_paths(reference), stage_paths(killed)
    write_prepared(ref_paths)
    write_prepared(paths)
    times["01 x2"] = time.monotonic() - start

    # the base 02 loads is NF4: bitsandbytes' Linear4bit layers under LoRA
    model, _, _ = models.load_for_training(cfg, str(tiny64_model_dir), backend="hf")
    assert "Linear4bit" in layer_types(model.get_base_model())
    del model

    # 02 uninterrupted (the reference)
    start = time.monotonic()
    assert train.main(["--preset", "cpu", *reference]) == 0
    times["02 uninterrupted"] = time.monotonic() - start
    assert "bitsandbytes' 4-bit layers run on the CPU" in capsys.readouterr().err

    # 02 killed with SIGKILL after its first checkpoint, then the same command again
    start = time.monotonic()
    kill_02_after(paths.checkpoints / "checkpoint-2", killed)
    assert not paths.adapter.exists()
    assert [p.name for p in checkpoints.list_checkpoints(paths.checkpoints)][0] == "checkpoint-2"
    out = run_stage_subprocess("02_sft_qlora.py", killed, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    times["02 killed + resumed"] = time.monotonic() - start
    assert "bitsandbytes' 4-bit layers run on the CPU" in out.stderr and "from " in out.stderr
    summary = json.loads((paths.run / "train_summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["steps"] == 6
    ref_summary = json.loads((ref_paths.run / "train_summary.json").read_text())
    assert summary["train_tokens_seen"] == ref_summary["train_tokens_seen"]
    assert max_abs_diff(adapter_tensors(paths.adapter), adapter_tensors(ref_paths.adapter)) <= 1e-6

    # 03: merged into the bfloat16 base (never the 4-bit weights); the merge check passes
    start = time.monotonic()
    assert merge.main(["--preset", "cpu", *killed, *EVAL_OVERRIDES]) == 0
    times["03"] = time.monotonic() - start
    assert_plain_16bit(paths.merged, AutoModelForCausalLM)
    check = json.loads((paths.merged / merge.MERGE_CHECK).read_text())
    assert check["passed"] and check["dtype"] == "bfloat16" and check["weights"]["layers"] == 14
    metrics = json.loads((paths.eval / "metrics.json").read_text())
    assert set(metrics["models"]) == {"base", "tuned"} and metrics["merge_check"]["passed"]

    # 04: the demo writes a description for a title with the merged model
    capsys.readouterr()
    decoding = ["eval.max_new_tokens=8", "eval.no_repeat_ngram_size=1"]  # the random model repeats "\n"
    start = time.monotonic()
    assert demo.main(["--preset", "cpu", *killed, *decoding, TITLE]) == 0
    times["04"] = time.monotonic() - start
    shown = capsys.readouterr().out
    cfg, _ = stage_paths([*killed, *decoding])
    merged = models.load_model(paths.merged, cfg)
    want = describe(merged, AutoTokenizer.from_pretrained(str(paths.merged)), models.adapter_template(paths),
                    [TITLE], replace(GenSettings.from_eval(cfg.eval), batch_size=1), progress=False)[0]
    assert f"=== {TITLE}" in shown and want.strip() and want in shown
    with capsys.disabled():
        report(times, subprocesses=True)


@pytest.mark.slow
def test_8bit_seq2seq_trains_and_merges(tmp_path, capsys):
    from transformers import AutoModelForSeq2SeqLM

    times: dict[str, float] = {}
    t5 = build_tiny_t5(tmp_path / "tiny-t5")
    overrides = t5_overrides(t5, tmp_path / "root", "model.load_in_8bit=true", "model.dtype=bfloat16",
                             "train.max_steps=3", "train.save_steps=3", "train.eval_steps=3")
    cfg, paths = stage_paths(overrides)
    write_prepared(paths, template_name="ptbr_qa")

    model, _, _ = models.load_for_training(cfg, str(t5), backend="hf")
    assert "Linear8bitLt" in layer_types(model.get_base_model())
    del model

    start = time.monotonic()
    assert train.main(["--preset", "cpu", *overrides]) == 0
    times["02"] = time.monotonic() - start
    assert "bitsandbytes' 8-bit layers run on the CPU" in capsys.readouterr().err
    summary = json.loads((paths.run / "train_summary.json").read_text())
    assert summary["steps"] == 3 and summary["family"] == "seq2seq"
    assert summary["final_train_loss"] is not None and summary["final_eval_loss"] is not None

    start = time.monotonic()
    assert merge.main(["--preset", "cpu", *overrides, *EVAL_OVERRIDES]) == 0
    times["03"] = time.monotonic() - start
    assert_plain_16bit(paths.merged, AutoModelForSeq2SeqLM)
    check = json.loads((paths.merged / merge.MERGE_CHECK).read_text())
    # 2 encoder blocks x 7 projections + 2 decoder blocks x 11 (self- and cross-attention)
    assert check["passed"] and check["weights"]["layers"] == 36
    with capsys.disabled():
        report(times)
