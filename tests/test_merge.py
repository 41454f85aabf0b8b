"""03_merge_fp16: merge on the tiny model, merge check, evaluation outputs, resume, refusals."""

from __future__ import annotations

import csv
import json
import subprocess
import time

import pytest

from conftest import (
    EVAL_OVERRIDES,
    PYTHON,
    SRC,
    stage_env,
    stage_paths,
    tiny_overrides,
    write_embedded_adapter,
    write_prepared,
    write_tiny_adapter,
)
from prodesc import evaluation, merge, models
from prodesc.errors import UserError

XSS = "<script>alert(1)</script>"


def run(overrides: list[str]) -> int:
    return merge.main(["--preset", "cpu", *overrides])


def add_awkward_test_rows(paths) -> None:
    """Put a script tag in a test title and reference, and a newline in another reference."""
    import shutil

    from datasets import load_from_disk

    dd = load_from_disk(str(paths.prepared_dataset))

    def edit(row, i):
        if i == 0:
            row["title"] += f" {XSS}"
            row["content"] += f" {XSS}"
        if i == 1:
            row["content"] = 'First line, "quoted"\nsecond line – ünïcödé'
        return row

    dd["test"] = dd["test"].map(edit, with_indices=True)
    tmp = paths.prepared_dataset.with_name("dataset.new")
    dd.save_to_disk(str(tmp))
    shutil.rmtree(paths.prepared_dataset)
    tmp.rename(paths.prepared_dataset)


class GenerateCounter:
    """Counts rows passed to model.generate (all models) and can interrupt on the n-th call."""

    def __init__(self, monkeypatch, fail_on_call: int | None = None):
        from transformers.generation.utils import GenerationMixin

        self.calls = self.rows = 0
        real = GenerationMixin.generate

        def counting(model_self, *a, **kw):
            self.calls += 1
            if fail_on_call == self.calls:
                raise KeyboardInterrupt
            self.rows += kw["input_ids"].shape[0]
            return real(model_self, *a, **kw)

        monkeypatch.setattr(GenerationMixin, "generate", counting)


@pytest.fixture(scope="module")
def evaluated(tiny_model_dir, tmp_path_factory):
    """One full stage run (merge + evaluation of base, tuned and checkpoint-2), shared by the checks."""
    root = tmp_path_factory.mktemp("merge") / "root"
    overrides = tiny_overrides(tiny_model_dir, root, *EVAL_OVERRIDES, "eval.checkpoints=checkpoint-2")
    _, paths = stage_paths(overrides)
    write_prepared(paths)
    add_awkward_test_rows(paths)
    write_tiny_adapter(tiny_model_dir, paths.adapter, seed=0)
    write_tiny_adapter(tiny_model_dir, paths.checkpoints / "checkpoint-2", seed=1)
    start = time.monotonic()
    assert run(overrides) == 0
    return overrides, paths, time.monotonic() - start


# --------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize(
    "name, expected",
    [
        ("unsloth/llama-3-8b-Instruct-bnb-4bit", "unsloth/llama-3-8b-Instruct"),
        ("unsloth/Qwen2.5-7B-Instruct-unsloth-bnb-4bit", "unsloth/Qwen2.5-7B-Instruct"),
        ("unsloth/mistral-7b-v0.3-BNB-4BIT", "unsloth/mistral-7b-v0.3"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
        ("smollm2-135m-instruct", "smollm2-135m-instruct"),
    ],
)
def test_bnb_4bit_names_map_to_16bit(name, expected):
    assert models.base_16bit_name(name) == expected


def test_same_base_check():
    models.check_same_base("unsloth/llama-3-8b-bnb-4bit", "unsloth/llama-3-8b", "unsloth/llama-3-8b")
    models.check_same_base(
        "/old/root/models/smollm2-135m-instruct",
        "/new/root/models/smollm2-135m-instruct",
        "smollm2-135m-instruct",
    )
    with pytest.raises(UserError, match="trained on 'org/other-model'"):
        models.check_same_base("org/other-model", "/x/models/smollm2-135m-instruct", "smollm2-135m-instruct")


def test_size_estimate_from_safetensors_headers(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    assert merge.estimated_bytes_on_disk(tiny_model_dir, 4) == merge.estimated_bytes(model)
    assert merge.estimated_bytes_on_disk(tiny_model_dir, 2) == merge.estimated_bytes(model) // 2
    assert merge.estimated_bytes_on_disk("org/hub-id", 2) is None


def test_select_rows_is_seeded():
    assert evaluation.select_rows(10, "all", 1) == list(range(10)) == evaluation.select_rows(10, 50, 1)
    a = evaluation.select_rows(1000, 20, 42)
    assert a == evaluation.select_rows(1000, 20, 42) != evaluation.select_rows(1000, 20, 43) and a == sorted(a)


def test_help_and_print_config_do_not_import_torch():
    code = (
        "import sys; from prodesc import merge\n"
        "for argv in (['--print-config', '--preset', 'cpu'], ['--list-keys']):\n"
        "    assert merge.main(argv) == 0\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
    )
    out = subprocess.run(
        [PYTHON, "-c", code], env=stage_env(), capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    help_out = subprocess.run(
        [PYTHON, str(SRC / "03_merge_fp16.py"), "--help"],
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert help_out.returncode == 0 and "merge" in help_out.stdout.lower()


# --------------------------------------------------------------------------- refusals


def test_missing_adapter_says_run_training_first(tiny_model_dir, tmp_path, capsys):
    overrides = tiny_overrides(tiny_model_dir, tmp_path / "root", *EVAL_OVERRIDES)
    _, paths = stage_paths(overrides)
    write_prepared(paths)
    assert run(overrides) == 2
    assert "run 02_sft_qlora.py first" in capsys.readouterr().err


def test_adapter_from_another_base_is_refused(tiny_model_dir, tmp_path, capsys):
    overrides = tiny_overrides(tiny_model_dir, tmp_path / "root", *EVAL_OVERRIDES)
    _, paths = stage_paths(overrides)
    write_prepared(paths)
    write_tiny_adapter(tiny_model_dir, paths.adapter, base_name="HuggingFaceTB/SmolLM2-360M-Instruct")
    assert run(overrides) == 2
    err = capsys.readouterr().err
    assert "HuggingFaceTB/SmolLM2-360M-Instruct" in err and "model.name" in err
    assert not paths.merged.exists()


def test_not_enough_disk_space_is_refused(eval_run, monkeypatch, capsys):
    import shutil

    overrides, paths = eval_run
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the disk check")

    monkeypatch.setattr(models, "load_model", no_loading)
    assert run(overrides) == 2
    assert "not enough disk space" in capsys.readouterr().err
    assert not paths.merged.exists() and not any(paths.run.glob(".merged_fp16*"))


HUB_8B = "unsloth/Meta-Llama-3.1-8B-Instruct"
PARAMS_8B = 8_030_261_248
"""The l4/a100 presets' base model and its parameter count (what the Hub reports for it)."""


def fake_hub_metadata(asked: list[str]):
    """A stand-in for ``huggingface_hub.get_safetensors_metadata`` (nothing may reach the network in
    tests): the real classes it returns, filled with Llama-3.1-8B's tensor shapes in bf16, four shards."""
    from huggingface_hub.utils._safetensors import SafetensorsFileMetadata, SafetensorsRepoMetadata, TensorInfo

    d, kv, ffn, vocab = 4096, 1024, 14336, 128256
    shapes = {"model.embed_tokens.weight": [vocab, d], "lm_head.weight": [vocab, d], "model.norm.weight": [d]}
    for i in range(32):
        for name, shape in (("q_proj", [d, d]), ("k_proj", [kv, d]), ("v_proj", [kv, d]), ("o_proj", [d, d])):
            shapes[f"model.layers.{i}.self_attn.{name}.weight"] = shape
        for name, shape in (("gate_proj", [ffn, d]), ("up_proj", [ffn, d]), ("down_proj", [d, ffn])):
            shapes[f"model.layers.{i}.mlp.{name}.weight"] = shape
        for name in ("input_layernorm", "post_attention_layernorm"):
            shapes[f"model.layers.{i}.{name}.weight"] = [d]
    shards: dict[str, dict] = {}
    for n, (name, shape) in enumerate(shapes.items()):
        shards.setdefault(f"model-0000{n % 4 + 1}-of-00004.safetensors", {})[name] = TensorInfo("BF16", shape, (0, 0))

    def metadata(repo_id, **kwargs):
        asked.append(repo_id)
        files = {f: SafetensorsFileMetadata(metadata={}, tensors=t) for f, t in shards.items()}
        return SafetensorsRepoMetadata(metadata=None, sharded=True, files_metadata=files,
                                       weight_map={k: f for f, t in shards.items() for k in t})

    return metadata


def test_merged_size_of_a_hub_model_comes_from_the_hub_headers(monkeypatch, tmp_path, capsys):
    import huggingface_hub
    from huggingface_hub.errors import OfflineModeIsEnabled

    asked: list[str] = []
    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", fake_hub_metadata(asked))
    assert merge.merged_size_estimate(HUB_8B, 2) == PARAMS_8B * 2 and asked == [HUB_8B]
    assert merge.merged_size_estimate(str(tmp_path), 2) is None and asked == [HUB_8B]  # a folder: never the Hub

    def offline(repo_id, **kwargs):
        raise OfflineModeIsEnabled("offline mode is enabled")

    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", offline)
    assert merge.merged_size_estimate(HUB_8B, 2) is None
    assert "unknown before loading (offline mode is enabled)" in capsys.readouterr().err


@pytest.fixture
def hub_8b_run(tiny_model_dir, tmp_path, monkeypatch):
    """03 of an l4-like run (model.name the 8B hub id, bf16) with the Hub's answers from the stand-in
    above and load_model replaced: nothing is downloaded or loaded. Returns (overrides, paths, asked)."""
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # and if anything did try the network: offline
    asked: list[str] = []
    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", fake_hub_metadata(asked))

    def no_loading(path, cfg):
        raise UserError(f"stand-in: {path} was about to be loaded")

    monkeypatch.setattr(models, "load_model", no_loading)
    overrides = tiny_overrides(tiny_model_dir, tmp_path / "root", *EVAL_OVERRIDES, f"model.name={HUB_8B}",
                               "model.dtype=bfloat16")
    _, paths = stage_paths(overrides)
    write_prepared(paths)
    write_tiny_adapter(tiny_model_dir, paths.adapter, base_name=HUB_8B)
    return overrides, paths, asked


def fake_free_space(monkeypatch, gib: float) -> None:
    import shutil

    free = int(gib * 2**30)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**13, 10**13 - free, free))


def test_hub_model_too_big_for_the_disk_is_refused_before_any_download(hub_8b_run, monkeypatch, capsys):
    """An 8B model merged in bf16 (~15 GiB) on a 15 GB Drive with 14 GiB free: one line before
    anything is downloaded or loaded; with room, the stage goes on to load the model."""
    overrides, paths, asked = hub_8b_run
    fake_free_space(monkeypatch, 14)
    assert run(overrides) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: not enough disk space") and "needs about 14.96 GiB" in err[-1]
    assert "stand-in" not in "".join(err) and asked == [HUB_8B]
    assert not paths.merged.exists() and not any(paths.run.glob(".merged_fp16*"))
    assert "set eval.tuned=adapter" in err[-1]
    fake_free_space(monkeypatch, 100)
    assert run(overrides) == 2
    assert f"stand-in: {HUB_8B} was about to be loaded" in capsys.readouterr().err
    # the 8B presets' way: no merged model, so 14 GiB free is enough and the Hub is not asked
    fake_free_space(monkeypatch, 14)
    assert run([*overrides, "eval.tuned=adapter"]) == 2
    err = capsys.readouterr().err
    assert f"stand-in: {HUB_8B} was about to be loaded" in err and "disk space" not in err
    assert asked == [HUB_8B] * 2 and not paths.merged.exists()


def test_tuned_adapter_evaluates_without_a_merged_model(eval_run, monkeypatch):
    """eval.tuned=adapter (the 8B presets): no merged_fp16/, the fine-tuned model is the base model
    + the adapter, and its outputs equal the merged model's (float32 on CPU: exact)."""
    from prodesc.config import load_config

    assert load_config("l4").eval.tuned == load_config("a100").eval.tuned == "adapter"
    assert load_config("t4").eval.tuned == "merged"
    overrides, paths = eval_run
    loads: list[str] = []
    real = models.load_model
    monkeypatch.setattr(models, "load_model", lambda path, cfg: loads.append(str(path)) or real(path, cfg))
    assert run([*overrides, "eval.tuned=adapter"]) == 0
    assert not paths.merged.exists() and not any(paths.run.glob(".merged_fp16*"))
    assert str(paths.merged) not in loads and len(loads) == 3  # base, base + adapter, base + checkpoint-2
    m = json.loads((paths.eval / "metrics.json").read_text())
    assert m["merge_check"] == {"skipped": merge.NOT_MERGED}
    tuned = m["identities"]["tuned"]
    assert tuned["path"] == m["identities"]["base"]["path"] and tuned["adapter"] == str(paths.adapter)
    assert "not merged (eval.tuned=adapter)" in (paths.eval / "report.html").read_text(encoding="utf-8")
    from_adapter = json.loads((paths.eval / "outputs.json").read_text())["outputs"]
    assert run(overrides) == 0  # eval.tuned=merged: merges, and generates the tuned rows anew
    assert (paths.merged / "merge_check.json").is_file()
    from_merged = json.loads((paths.eval / "outputs.json").read_text())["outputs"]
    assert from_merged["tuned"] == from_adapter["tuned"] and any(from_adapter["tuned"])
    assert json.loads((paths.eval / "metrics.json").read_text())["identities"]["tuned"]["path"] == str(paths.merged)


def test_unknown_checkpoint_lists_the_ones_found(eval_run, capsys):
    overrides, _ = eval_run
    assert run([*overrides, "eval.checkpoints=checkpoint-99"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint-99" in err and "found: checkpoint-2" in err


# --------------------------------------------------------------------------- the full stage


def test_merged_model_is_saved_and_equals_the_adapter(evaluated):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prodesc.generate import GenSettings, describe
    from prodesc.templates import BUILTIN

    overrides, paths, _ = evaluated
    names = {p.name for p in paths.merged.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "prompt_template.json",
        "merge_check.json",
    } <= names
    tok = AutoTokenizer.from_pretrained(str(paths.merged))
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    gen = json.loads((paths.merged / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.eos_token_id and gen["pad_token_id"] == tok.pad_token_id
    check = json.loads((paths.merged / "merge_check.json").read_text())
    assert check["passed"] and check["checked"] == 3
    # independent of the stage's own check: the unmerged adapter vs the saved merged model
    base_dir = overrides[0].split("=", 1)[1]
    adapter = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), str(paths.adapter)
    ).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(paths.merged), dtype=torch.float32).eval()
    titles = ["Acme Compact Kettle 100 ml", "Zen Soft Yoga Mat 200 ml", "Orbit Classic Backpack 900 ml"]
    s = GenSettings(max_new_tokens=12, batch_size=3)
    a = describe(adapter, tok, BUILTIN["chat"], titles, s, progress=False)
    assert a == describe(merged, tok, BUILTIN["chat"], titles, s, progress=False)
    assert any(a)
    with torch.no_grad():
        ids = tok(["hello"], return_tensors="pt")
        assert torch.allclose(adapter(**ids).logits, merged(**ids).logits, atol=1e-5)


def test_metrics_json_records_everything(evaluated):
    _, paths, _ = evaluated
    m = json.loads((paths.eval / "metrics.json").read_text())
    assert list(m["models"]) == ["base", "tuned", "checkpoint-2"]
    assert m["rows"] == 6 and m["seed"] == 42 and m["merge_check"]["passed"] is True
    assert m["generation"]["max_new_tokens"] == 8 and m["generation"]["num_beams"] == 1
    assert m["identities"]["checkpoint-2"]["checkpoint"] == "checkpoint-2"
    assert m["identities"]["tuned"]["path"] == str(paths.merged)
    for s in m["models"].values():
        assert {
            "rouge1",
            "rouge2",
            "rougeL",
            "bleu",
            "chrf",
            "words_mean",
            "words_median",
            "empty_rate",
            "title_echo_rate",
            "semantic_similarity",
        } <= set(s)


def test_side_by_side_csv_and_recomputed_metrics(evaluated):
    import pandas as pd
    import sacrebleu
    from rouge_score import rouge_scorer

    _, paths, _ = evaluated
    path = paths.eval / "side_by_side.csv"
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    df = pd.read_csv(path, encoding="utf-8-sig", keep_default_na=False)
    assert list(df.columns) == [
        "row",
        "uid",
        "title",
        "reference",
        "base_output",
        "tuned_output",
        "checkpoint-2_output",
        "rougeL_base",
        "rougeL_tuned",
        "rougeL_checkpoint-2",
        "rougeL_delta",
    ]
    assert len(df) == 6
    doc = json.loads((paths.eval / "outputs.json").read_text())
    assert df["row"].tolist() == doc["rows"] and len(set(doc["rows"])) == 6  # the rows' indices in the split
    with open(path, encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert (
        len(rows) == 6 and any("\n" in r["reference"] for r in rows) and any(XSS in r["title"] for r in rows)
    )
    m = json.loads((paths.eval / "metrics.json").read_text())["models"]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    refs = [r["reference"] for r in rows]
    for label in ("base", "tuned", "checkpoint-2"):
        outs = [r[f"{label}_output"] for r in rows]
        for key in ("rouge1", "rouge2", "rougeL"):
            expected = sum(scorer.score(ref, o)[key].fmeasure for o, ref in zip(outs, refs)) / len(outs)
            assert m[label][key] == pytest.approx(expected, abs=1e-12), (label, key)
        assert m[label]["bleu"] == pytest.approx(sacrebleu.corpus_bleu(outs, [refs]).score)
        assert m[label]["chrf"] == pytest.approx(sacrebleu.corpus_chrf(outs, [refs]).score)
    assert df["rougeL_delta"].tolist() == pytest.approx(
        (df["rougeL_tuned"] - df["rougeL_base"]).tolist(), abs=1e-5
    )


def test_report_files_and_html_escaping(evaluated):
    import pandas as pd

    _, paths, _ = evaluated
    for name in ("improved_examples.csv", "worst_regressions.csv", "metrics.png", "report.html"):
        assert (paths.eval / name).is_file(), name
    long = pd.read_csv(paths.eval / "row_metrics.csv", encoding="utf-8-sig", keep_default_na=False)
    assert len(long) == 3 * 6 and {"row", "uid", "model", "rouge1", "rouge2", "rougeL", "words", "empty"} <= set(
        long.columns
    )
    page = (paths.eval / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page.lower() and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_rerun_skips_merge_and_generation(evaluated, monkeypatch):
    overrides, paths, _ = evaluated
    before = (paths.merged / "model.safetensors").stat().st_mtime_ns
    counter = GenerateCounter(monkeypatch)
    assert run(overrides) == 0
    assert counter.calls == 0 and (paths.merged / "model.safetensors").stat().st_mtime_ns == before


def test_interrupted_evaluation_resumes_without_regenerating(eval_run, monkeypatch):
    overrides, paths = eval_run
    # calls 1-2: merge check (adapter, merged; 3 rows each); 3: base rows 1-4; 4: interrupted
    first = GenerateCounter(monkeypatch, fail_on_call=4)
    assert run(overrides) == 130
    assert first.rows == 3 + 3 + 4 and paths.merged.is_dir() and not (paths.eval / "metrics.json").exists()
    again = GenerateCounter(monkeypatch)
    assert run(overrides) == 0
    assert again.rows == 2 + 6 + 6  # the 2 missing base rows, then tuned and checkpoint-2
    lines = (paths.eval / "generations" / "base.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 6
    # a changed decoding setting starts new caches for every model
    third = GenerateCounter(monkeypatch)
    assert run([*overrides, "eval.max_new_tokens=5"]) == 0
    assert third.rows == 18
    assert len(list((paths.eval / "generations").glob("base*.jsonl"))) == 2


def test_sampled_evaluation_is_seeded_and_recorded(eval_run, monkeypatch):
    """eval.do_sample in 03: the settings in metrics.json, and the same outputs again from the
    same seed once the cached generations are deleted (sampling starts from `seed` for every model)."""
    import json
    import shutil

    overrides, paths = eval_run
    sampled = [*overrides, "eval.do_sample=true", "eval.temperature=1.5"]
    counter = GenerateCounter(monkeypatch)
    assert run(sampled) == 0
    assert counter.rows == 3 + 3 + 3 * 6  # merge check (greedy), then base, tuned, checkpoint-2
    doc = json.loads((paths.eval / "metrics.json").read_text())
    assert doc["generation"]["do_sample"] is True and doc["generation"]["temperature"] == 1.5
    first = json.loads((paths.eval / "outputs.json").read_text())["outputs"]
    shutil.rmtree(paths.eval / "generations")
    assert run(sampled) == 0
    assert json.loads((paths.eval / "outputs.json").read_text())["outputs"] == first


def test_overwrite_redoes_the_merge(eval_run):
    overrides, paths = eval_run
    assert run([*overrides, "eval.rows=2"]) == 0
    before = (paths.merged / "merge_check.json").stat().st_mtime_ns
    assert run([*overrides, "eval.rows=2", "overwrite=true"]) == 0
    assert (paths.merged / "merge_check.json").stat().st_mtime_ns > before


def test_after_the_real_training_stage(tiny_model_dir, tmp_path):
    """02's own adapter/ and checkpoint-N/ folders are what 03 reads."""
    from prodesc import train

    overrides = tiny_overrides(tiny_model_dir, tmp_path / "root", "train.max_steps=3", *EVAL_OVERRIDES)
    _, paths = stage_paths(overrides)
    write_prepared(paths)
    assert train.main(["--preset", "cpu", *overrides]) == 0
    assert run([*overrides, "eval.checkpoints=3"]) == 0
    m = json.loads((paths.eval / "metrics.json").read_text())
    assert list(m["models"]) == ["base", "tuned", "checkpoint-3"] and m["merge_check"]["passed"]


# --------------------------------------------------------------------------- slow: the embedded model


@pytest.fixture
def one_torch_thread():
    """One torch thread: on a 2-core machine shared with another busy process, two threads made
    generation ~25x slower (measured); one thread keeps this test under 2 minutes either way."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_embedded_model_end_to_end(tmp_path, one_torch_thread):
    """01 on the bundled sample, a small random LoRA on SmolLM2-135M, then 03 (< 2 min on 2 cores)."""
    from prodesc import prepare

    overrides = [
        f"paths.root={tmp_path}",
        "paths.run=e2e",
        "eval.rows=3",
        "eval.max_new_tokens=16",
        "eval.batch_size=4",
    ]
    assert prepare.main(["--preset", "cpu", *overrides]) == 0
    cfg, paths = stage_paths(overrides)
    write_embedded_adapter(cfg, paths)
    assert run(overrides) == 0
    m = json.loads((paths.eval / "metrics.json").read_text())
    assert m["merge_check"]["passed"] and m["rows"] == 3
    assert m["models"]["base"]["empty_rate"] < 1 and m["models"]["tuned"]["words_mean"] > 0
