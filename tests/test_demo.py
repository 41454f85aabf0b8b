"""04_quick_demo: titles from arguments, a file or stdin; streaming; decoding knobs; both model sources."""

from __future__ import annotations

import io
import re
import shutil
import sys

import pytest

from conftest import stage_paths, tiny_overrides, write_tiny_adapter
from prodesc import demo

TITLES = ["Acme Compact Water Bottle 500 ml", "Zen Soft Yoga Mat 200 ml"]
QUICK = ["eval.max_new_tokens=8"]
SAMPLE = ["eval.do_sample=true", "eval.temperature=1.5", "eval.top_k=0", "eval.max_new_tokens=12"]


def run(overrides: list[str], *args: str) -> int:
    return demo.main(["--preset", "cpu", *overrides, *args])


@pytest.fixture
def adapter_run(tiny_model_dir, tmp_path):
    """Overrides for a run that has an adapter (no merged model), no prepared data needed."""
    overrides = tiny_overrides(tiny_model_dir, tmp_path / "root", *QUICK)
    _, paths = stage_paths(overrides)
    write_tiny_adapter(tiny_model_dir, paths.adapter, seed=0)
    return overrides, paths


@pytest.fixture
def merged_run(adapter_run):
    """The same run with merged_fp16/ written from the adapter (what 03 writes)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    overrides, paths = adapter_run
    cfg, _ = stage_paths(overrides)
    base = AutoModelForCausalLM.from_pretrained(cfg.model.name)
    merged = PeftModel.from_pretrained(base, str(paths.adapter)).merge_and_unload()
    merged.save_pretrained(str(paths.merged))
    AutoTokenizer.from_pretrained(str(paths.adapter)).save_pretrained(str(paths.merged))
    return overrides, paths


def tuned_outputs(out: str) -> list[str]:
    """The fine-tuned column/section of every title (the narrow, one-after-the-other layout)."""
    return re.findall(r"--- fine-tuned ---\n(.*?)(?=\n=== |\Z)", out, re.S)


class GenerateSpy:
    """Records the keyword arguments of every model.generate call."""

    def __init__(self, monkeypatch):
        from transformers.generation.utils import GenerationMixin

        self.calls: list[dict] = []
        real = GenerationMixin.generate

        def spy(model_self, *a, **kw):
            self.calls.append(kw)
            return real(model_self, *a, **kw)

        monkeypatch.setattr(GenerationMixin, "generate", spy)


@pytest.fixture
def narrow(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")


# --------------------------------------------------------------------------- titles and output


def test_titles_from_arguments_stream_and_show_both_models(adapter_run, capsys, monkeypatch):
    overrides, _ = adapter_run
    monkeypatch.setenv("COLUMNS", "100")
    spy = GenerateSpy(monkeypatch)
    assert run(overrides, *TITLES) == 0
    out = capsys.readouterr().out
    for title in TITLES:
        assert f"=== {title}" in out
    assert out.count("fine-tuned (streaming):") == 2
    assert out.count("base model") == 2 and re.search(r"base model\s+\| fine-tuned", out)
    # per title: the tuned model streams, then the base model does not
    assert len(spy.calls) == 4
    assert [("streamer" in c) for c in spy.calls] == [True, False, True, False]
    # the streamed text appears before the summary: the line after the header is the tuned output
    streamed = out.split("fine-tuned (streaming):\n", 1)[1].split("\n", 1)[0].strip()
    assert streamed, out
    assert all(len(line) <= 100 for line in out.splitlines())


def test_titles_from_a_file_narrow_layout(adapter_run, capsys, tmp_path, narrow):
    overrides, _ = adapter_run
    titles = tmp_path / "titles.txt"
    titles.write_text(f"{TITLES[0]}\n\n  {TITLES[1]}  \n", encoding="utf-8")
    assert run(overrides, "--titles-file", str(titles)) == 0
    out = capsys.readouterr().out
    assert out.count("=== ") == 2 and f"=== {TITLES[1]}\n" in out
    assert out.count("--- base model ---") == 2 and out.count("--- fine-tuned ---") == 2
    assert all(len(line) <= 40 for line in out.splitlines() if not line.startswith("==="))
    # what was streamed is the description shown in the fine-tuned section (wrapped there)
    streamed = re.findall(r"fine-tuned \(streaming\):\n(.*?)\n--- base model", out, re.S)
    assert len(streamed) == 2 and all(s.strip() for s in streamed)
    squash = ["".join(text.split()) for text in streamed]
    assert squash == ["".join(text.split()) for text in tuned_outputs(out)]


def test_titles_from_stdin(adapter_run, capsys, monkeypatch):
    overrides, _ = adapter_run
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{TITLES[0]}\n{TITLES[1]}\n\n"))
    assert run(overrides, "--no-base") == 0
    out = capsys.readouterr().out
    assert all(f"=== {t}" in out for t in TITLES)
    assert "base model" not in out and out.count("--- fine-tuned ---") == 2


def test_interactive_prompt_when_stdin_is_a_terminal(adapter_run, capsys, monkeypatch):
    overrides, _ = adapter_run

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdin", Tty(f"{TITLES[0]}\n\n{TITLES[1]}\n"))
    assert run(overrides, "--no-base") == 0
    out = capsys.readouterr().out
    assert out.count(demo.PROMPT) == 2 and f"=== {TITLES[0]}" in out and TITLES[1] not in out


def test_no_titles_on_stdin_is_an_error(adapter_run, capsys, monkeypatch):
    overrides, _ = adapter_run
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    assert run(overrides) == 2
    assert "no titles given" in capsys.readouterr().err


def test_missing_adapter_is_one_line_and_exit_2(tiny_model_dir, tmp_path, capsys):
    overrides = tiny_overrides(tiny_model_dir, tmp_path / "root", *QUICK)
    assert run(overrides, TITLES[0]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "run 02_sft_qlora.py first" in err[-1]
    assert not any("Traceback" in line for line in err)


def test_missing_titles_file_is_a_user_error(adapter_run, capsys, tmp_path):
    overrides, _ = adapter_run
    assert run(overrides, "--titles-file", str(tmp_path / "nope.txt")) == 2
    assert "cannot read --titles-file" in capsys.readouterr().err


def test_titles_and_overrides_can_be_mixed(adapter_run, capsys):
    """Options between titles, and a title holding '=' that is not an override."""
    overrides, _ = adapter_run
    assert run(overrides, "2 m = 6 ft Cable", "--no-base", "seed=3", TITLES[0]) == 0
    out = capsys.readouterr().out
    assert "=== 2 m = 6 ft Cable" in out and f"=== {TITLES[0]}" in out


# --------------------------------------------------------------------------- decoding


def test_greedy_is_deterministic(adapter_run, capsys, narrow):
    overrides, _ = adapter_run
    assert run(overrides, *TITLES) == 0
    first = capsys.readouterr().out
    assert run(overrides, *TITLES) == 0
    assert capsys.readouterr().out == first


def test_seed_fixes_sampling(adapter_run, capsys, narrow):
    overrides, _ = adapter_run
    outs = {}
    for seed in (1, 1, 2):
        assert run([*overrides, *SAMPLE, f"seed={seed}"], "--no-base", *TITLES) == 0
        outs.setdefault(seed, []).append(tuned_outputs(capsys.readouterr().out))
    assert outs[1][0] == outs[1][1] and len(outs[1][0]) == 2
    assert outs[2][0] != outs[1][0]


def test_decoding_knobs_reach_generate(adapter_run, capsys, monkeypatch):
    overrides, _ = adapter_run
    spy = GenerateSpy(monkeypatch)
    knobs = ["eval.num_beams=2", "eval.no_repeat_ngram_size=2", "eval.repetition_penalty=1.3"]
    knobs.append("eval.max_new_tokens=5")
    assert run([*overrides, *knobs], "--no-base", TITLES[0]) == 0
    (call,) = spy.calls
    assert call["num_beams"] == 2 and call["no_repeat_ngram_size"] == 2
    assert call["repetition_penalty"] == 1.3 and call["max_new_tokens"] == 5
    assert "streamer" not in call  # beam search cannot stream
    assert "fine-tuned: generating" in capsys.readouterr().out
    spy.calls.clear()
    assert run([*overrides, *SAMPLE, "eval.top_p=0.9"], "--no-base", TITLES[0]) == 0
    (call,) = spy.calls
    assert call["do_sample"] is True and call["temperature"] == 1.5 and call["top_p"] == 0.9


# --------------------------------------------------------------------------- model sources


def test_adapter_and_merged_sources_agree(merged_run, capsys, narrow):
    """The merged model (--no-base) and base + adapter (shown with the base model) write the same
    fine-tuned descriptions, and the adapter switched off writes what the base model loaded on its
    own writes (float32 on CPU: exact)."""
    from dataclasses import replace

    from prodesc import models
    from prodesc.generate import GenSettings, describe, prepare_for_generation

    overrides, paths = merged_run
    overrides = [*overrides, "eval.repetition_penalty=2.0"]  # else the random base writes only newlines
    assert demo.tuned_source(paths) == "merged"
    assert run(overrides, "--no-base", *TITLES) == 0
    captured = capsys.readouterr()
    assert "fine-tuned model: " + str(paths.merged) in captured.err
    from_merged = tuned_outputs(captured.out)
    assert run(overrides, *TITLES) == 0
    captured = capsys.readouterr()
    assert "the adapter" in captured.err and "switched off" in captured.err
    assert tuned_outputs(captured.out) == from_merged and len(from_merged) == 2
    base = re.findall(r"--- base model ---\n(.*?)\n--- fine-tuned", captured.out, re.S)
    cfg, _ = stage_paths(overrides)
    tokenizer = prepare_for_generation(models.load_tokenizer(paths.adapter, cfg))
    alone = models.load_model(models.base_model_path(cfg, paths), cfg)
    settings = replace(GenSettings.from_eval(cfg.eval), batch_size=1)
    template = models.adapter_template(paths)
    want = [describe(alone, tokenizer, template, [t], settings, progress=False)[0] for t in TITLES]
    assert ["".join(b.split()) for b in base] == ["".join(w.split()) for w in want] and all(want)
    assert base != from_merged


def test_base_and_fine_tuned_hold_one_copy_of_the_weights(merged_run, monkeypatch):
    """With merged_fp16/ written and the base model shown, the demo loads the weights once (the
    merged and the base model together are 2 x 16 GB for an 8B model, more than an L4 holds): one
    load, of the base model, and the two models' parameters are the same tensors plus the adapter."""
    from dataclasses import replace

    from prodesc import merge, models
    from prodesc.generate import GenSettings

    overrides, paths = merged_run
    cfg, _ = stage_paths(overrides)
    loads: list[str] = []
    real = models.load_model
    monkeypatch.setattr(models, "load_model", lambda path, c: loads.append(str(path)) or real(path, c))
    base_path = models.base_model_path(cfg, paths)
    settings = replace(GenSettings.from_eval(cfg.eval), batch_size=1)
    shown = demo.Demo(cfg, paths, base_path, models.adapter_template(paths), settings, with_base=True)
    assert loads == [base_path]
    tensors = {p.data_ptr(): p.numel() * p.element_size()
               for model in (shown.base, shown.tuned) for p in model.parameters()}
    one_copy = merge.estimated_bytes_on_disk(paths.merged, 4)
    assert one_copy < sum(tensors.values()) < 1.5 * one_copy  # the weights once + the LoRA matrices
    loads.clear()
    alone = demo.Demo(cfg, paths, base_path, models.adapter_template(paths), settings, with_base=False)
    assert loads == [str(paths.merged)] and alone.base is None  # --no-base: the merged model only


def test_stale_merged_model_is_not_used(merged_run):
    import os
    import time

    _, paths = merged_run
    later = time.time() + 10
    os.utime(paths.adapter / "adapter_model.safetensors", (later, later))
    assert demo.tuned_source(paths) == "adapter"


def test_layout_columns_and_wrapping():
    text = "word " * 40
    wide = demo.layout(text, "short base", 80)
    lines = wide.splitlines()
    assert lines[0].startswith("base model") and "| fine-tuned" in lines[0]
    assert all(len(line) <= 80 for line in lines) and len(lines) > 4
    narrow_out = demo.layout(text, "", 30)
    assert narrow_out.startswith("--- base model ---\n(empty)\n--- fine-tuned ---")
    assert demo.layout("x", None, 80) == "--- fine-tuned ---\nx"
