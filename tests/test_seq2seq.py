"""The encoder-decoder family (FLAN-T5) through the same pipeline, on a tiny random T5 built offline.

prepare → train → SIGKILL + resume (same adapter as an uninterrupted run) → merge → evaluation CSV →
demo, then a causal run and a seq2seq run compared in one CSV. The T5 has FLAN-T5's layout (gated
FFN: wi_0, wi_1, wo) at toy size, and a byte-level BPE tokenizer that, like T5's, appends </s> to
every input and has no chat template (pad 0, </s> 1, decoder start = pad).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import (
    EVAL_OVERRIDES, run_stage_subprocess, stage_paths, synthetic_rows, tiny_overrides,
    write_prepared, write_tiny_adapter,
)
from prodesc import checkpoints, config, evaluation, family, generate, merge, models, train, trainlog
from prodesc.errors import ConfigError, UserError
from test_train import adapter_tensors, kill_02_after, max_abs_diff

T5_LORA = "lora.target_modules=q,k,v,o,wi_0,wi_1,wo"


def build_tiny_t5(target: Path) -> Path:
    """A random 2+2-layer T5 (d_model 32, gated-gelu like FLAN-T5) + a ~800-token BPE tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models as tok_models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    from prodesc.templates import BUILTIN

    specials = ["<pad>", "</s>", "<unk>"]  # T5's ids: pad 0, eos 1, unk 2
    corpus = [f"{r['title']}\n{r['content']}" for r in synthetic_rows(300, seed=1)]
    corpus += [t.prompt + t.completion + t.system for t in BUILTIN.values()] * 5
    tok = Tokenizer(tok_models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=800, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(  # like T5: every input ends with </s>
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    config_ = T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
        num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    model = T5ForConditionalGeneration(config_)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    return target


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory) -> Path:
    return build_tiny_t5(tmp_path_factory.mktemp("tiny") / "tiny-t5")


def t5_overrides(model_dir: Path, root: Path, *extra: str) -> list[str]:
    """The tiny 12-step run of conftest, on the T5 with the ptbr_qa text template; family auto."""
    return tiny_overrides(model_dir, root, "paths.run=t5", "data.template=ptbr_qa", T5_LORA, *extra)


def prepared_t5_run(model_dir: Path, root: Path, *extra: str):
    overrides = t5_overrides(model_dir, root, *extra)
    cfg, paths = stage_paths(overrides)
    write_prepared(paths, template_name="ptbr_qa")
    return overrides, cfg, paths


# --------------------------------------------------------------------------- family and config


def test_family_comes_from_config_json_or_the_config(tiny_t5_dir, tiny_model_dir, capsys):
    assert family.detect(str(tiny_t5_dir)) is family.SEQ2SEQ
    assert family.detect(str(tiny_model_dir)) is family.CAUSAL
    cfg = config.load_config("cpu", [f"model.name={tiny_t5_dir}"])
    assert cfg.model.family == "auto" and family.for_config(cfg) is family.SEQ2SEQ
    forced = config.load_config("cpu", [f"model.name={tiny_t5_dir}", "model.family=causal"])
    assert family.for_config(forced) is family.CAUSAL  # an explicit value is not second-guessed
    assert family.for_config(config.load_config("cpu")) is family.CAUSAL  # the embedded model
    # a config.json without is_encoder_decoder: the model_type decides
    assert family.is_seq2seq_config({"model_type": "t5"}) and not family.is_seq2seq_config({"model_type": "llama"})
    assert family.SEQ2SEQ.auto_class().__name__ == "AutoModelForSeq2SeqLM"
    assert (family.SEQ2SEQ.task_type, family.CAUSAL.task_type) == ("SEQ_2_SEQ_LM", "CAUSAL_LM")


def test_unreadable_config_falls_back_to_causal_and_says_how_to_set_it(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True, raising=False)
    cfg = config.load_config("cpu", ["model.name=someorg/not-a-cached-model"])
    assert family.for_config(cfg) is family.CAUSAL
    assert "model.family=seq2seq" in capsys.readouterr().err


@pytest.mark.parametrize("overrides, message", [
    (["model.family=encoder"], "must be one of auto, causal, seq2seq"),
    (["model.family=seq2seq", "model.backend=unsloth"], "cannot load encoder-decoder models"),
    (["model.load_in_4bit=true", "model.load_in_8bit=true"], "cannot be combined with model.load_in_4bit"),
    (["eval.compare_runs=../other"], "is not a run name"),
])
def test_config_rejects_bad_family_settings(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config.load_config("cpu", overrides)


def test_flan_t5_preset(tmp_path):
    cfg = config.load_config("flan-t5-base")
    assert (cfg.model.name, cfg.model.family, cfg.model.backend) == ("google/flan-t5-base", "seq2seq", "hf")
    assert cfg.lora.target_modules == family.T5_TARGETS
    assert cfg.train.learning_rate == 1e-3
    # no half precision for T5 on a T4: fp32 weights and fp32 training
    assert cfg.model.dtype == "float32" and cfg.train.precision == "fp32"
    assert cfg.data.template in ("ptbr_qa", "descfmt")
    text = (config.PRESETS_DIR / "flan-t5-base.yaml").read_text()
    assert "fp16" in text and "overflow" in text


def test_unsloth_is_never_chosen_for_seq2seq(monkeypatch, tiny_t5_dir):
    # Stand-in for a CUDA machine with Unsloth installed (no GPU here): auto must still pick hf.
    monkeypatch.setattr(models, "cuda_available", lambda: True)
    monkeypatch.setattr(models, "unsloth_installed", lambda: True)
    cfg = config.load_config("cpu", [f"model.name={tiny_t5_dir}", "model.backend=auto"])
    assert models.select_backend(cfg, family.for_config(cfg)) == "hf"
    forced = config.load_config("cpu", [f"model.name={tiny_t5_dir}", "model.backend=unsloth"])
    with pytest.raises(UserError, match="cannot load .* encoder-decoder"):
        models.select_backend(forced, family.for_config(forced))


# --------------------------------------------------------------------------- model, data, generation


@pytest.mark.parametrize("targets", [T5_LORA, "lora.target_modules=all-linear"])
def test_lora_on_every_t5_projection(tiny_t5_dir, targets):
    from peft import PeftModelForSeq2SeqLM

    cfg = config.load_config("cpu", [f"model.name={tiny_t5_dir}", targets, "lora.r=4", "lora.alpha=8"])
    model, tok, backend = models.load_for_training(cfg, str(tiny_t5_dir), "hf")
    assert isinstance(model, PeftModelForSeq2SeqLM) and backend == "hf"
    assert model.peft_config["default"].task_type == "SEQ_2_SEQ_LM"
    adapted = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if hasattr(mod, "lora_A")}
    assert adapted == set(family.T5_TARGETS)  # and not lm_head
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert tok.padding_side == "right"


def test_prompt_to_the_encoder_completion_to_the_decoder(tiny_t5_dir):
    """Labels are the completion + </s>; the collator pads labels with -100 and leaves the decoder
    inputs to the model, so a padded batch has the same loss as its rows one at a time."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from prodesc.templates import BUILTIN

    tok = models.prepare_tokenizer(AutoTokenizer.from_pretrained(str(tiny_t5_dir)))
    template = BUILTIN["ptbr_qa"]
    rows = synthetic_rows(3, seed=5)
    examples = [{"prompt": template.format_prompt(r["title"]), "completion": template.format_completion(r["content"])}
                for r in rows]
    encoded = [family.SEQ2SEQ.encode(ex, tok) for ex in examples]
    for ex, enc in zip(examples, encoded):
        assert enc["input_ids"][-1] == tok.eos_token_id and enc["labels"][-1] == tok.eos_token_id
        assert tok.decode(enc["input_ids"], skip_special_tokens=True) == ex["prompt"]
        assert tok.decode(enc["labels"], skip_special_tokens=True) == ex["completion"]
        assert family.SEQ2SEQ.example_length(ex, tok) == max(len(enc["input_ids"]), len(enc["labels"]))
    batch = family.SEQ2SEQ.collator(tok)(encoded)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}  # no decoder_input_ids, no length
    longest = max(len(e["labels"]) for e in encoded)
    for i, enc in enumerate(encoded):
        n, m = len(enc["input_ids"]), len(enc["labels"])
        assert batch["input_ids"][i, :n].tolist() == enc["input_ids"]  # right padding
        assert (batch["input_ids"][i, n:] == tok.pad_token_id).all() and batch["attention_mask"][i, n:].sum() == 0
        assert batch["labels"][i, :m].tolist() == enc["labels"] and (batch["labels"][i, m:] == -100).all()
    assert (batch["labels"] == -100).any() and batch["labels"].shape[1] == longest

    model = AutoModelForSeq2SeqLM.from_pretrained(str(tiny_t5_dir)).eval()
    with torch.no_grad():
        batched = model(**batch).loss
        singles = [model(**family.SEQ2SEQ.collator(tok)([e])).loss for e in encoded]
    weights = torch.tensor([len(e["labels"]) for e in encoded], dtype=torch.float32)
    assert torch.allclose(batched, (torch.stack(singles) * weights).sum() / weights.sum(), atol=1e-5)


def test_generation_returns_only_the_decoder_text_in_any_batching(tiny_t5_dir):
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from prodesc.generate import GenSettings, generate_raw

    tok = AutoTokenizer.from_pretrained(str(tiny_t5_dir))
    model = AutoModelForSeq2SeqLM.from_pretrained(str(tiny_t5_dir)).eval()
    prompts = ["Acme kettle", "Zen Soft Yoga Mat 300 ml with a long title here", "Orbit Classic Backpack"]
    one = generate_raw(model, tok, prompts, GenSettings(max_new_tokens=6, batch_size=1), add_special_tokens=True,
                       progress=False)
    three = generate_raw(model, tok, prompts, GenSettings(max_new_tokens=6, batch_size=3), add_special_tokens=True,
                         progress=False)
    assert one == three and tok.padding_side == "right"
    for prompt, got in zip(prompts, one):
        ids = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            want = model.generate(**ids, max_new_tokens=6, do_sample=False)
        assert got == tok.decode(want[0], skip_special_tokens=True)
        assert want[0, 0] == model.config.decoder_start_token_id  # the decoder's, not the prompt


def test_chat_template_is_refused_for_a_tokenizer_without_one(tiny_t5_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    from prodesc.templates import BUILTIN

    tok = AutoTokenizer.from_pretrained(str(tiny_t5_dir))
    with pytest.raises(UserError, match="has no chat template|has none"):
        generate.render_prompts(tok, BUILTIN["chat"], ["Acme kettle"])
    overrides = tiny_overrides(tiny_t5_dir, tmp_path, "data.template=chat", "paths.run=chat")
    _, paths = stage_paths(overrides)
    write_prepared(paths, template_name="chat")
    assert train.main(["--preset", "cpu", *overrides]) == 2
    err = capsys.readouterr().err
    assert "has no chat template" in err and "data.template=ptbr_qa" in err
    assert not paths.adapter.exists()


# --------------------------------------------------------------------------- the pipeline


@pytest.fixture(scope="module")
def t5_run(tiny_t5_dir, tmp_path_factory):
    """A complete 12-step tiny T5 run, merged and evaluated by 03 (reused read-only)."""
    root = tmp_path_factory.mktemp("t5") / "root"
    overrides, _, paths = prepared_t5_run(tiny_t5_dir, root)
    assert train.main(["--preset", "cpu", *overrides]) == 0
    assert merge.main(["--preset", "cpu", *overrides, *EVAL_OVERRIDES]) == 0
    return overrides, paths


def test_training_writes_the_same_artifacts_as_the_causal_path(t5_run):
    _, paths = t5_run
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "prompt_template.json"):
        assert (paths.adapter / name).is_file(), name
    adapter_cfg = json.loads((paths.adapter / "adapter_config.json").read_text())
    assert adapter_cfg["task_type"] == "SEQ_2_SEQ_LM" and set(adapter_cfg["target_modules"]) == set(family.T5_TARGETS)
    summary = json.loads((paths.run / "train_summary.json").read_text())
    assert summary["family"] == "seq2seq" and summary["steps"] == 12 and summary["backend"] == "hf"
    assert summary["train_tokens_seen"] > 0 and summary["final_eval_loss"] is not None
    rows = trainlog.read_history(paths.logs / "loss_history.csv")
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert [r["step"] for r in rows if r["eval_loss"] is not None] == [6, 12]
    assert [p.name for p in checkpoints.list_checkpoints(paths.checkpoints)] == [
        "checkpoint-3", "checkpoint-6", "checkpoint-9", "checkpoint-12"]


@pytest.mark.slow  # real processes, 10-17 s: in the full suite, not make test-fast
def test_sigkill_then_rerun_resumes_to_the_same_t5_adapter(t5_run, tiny_t5_dir, tmp_path):
    _, reference = t5_run
    killed, _, paths = prepared_t5_run(tiny_t5_dir, tmp_path / "root")
    kill_02_after(paths.checkpoints / "checkpoint-3", killed)
    assert not paths.adapter.exists()

    out = run_stage_subprocess("02_sft_qlora.py", killed, timeout=300)  # the same command again
    assert out.returncode == 0, out.stderr[-3000:]
    assert "(seq2seq, hf, fp32) from " in out.stderr
    summary = json.loads((paths.run / "train_summary.json").read_text())
    assert summary["resumed_from"] and summary["steps"] == 12
    ref_summary = json.loads((reference.run / "train_summary.json").read_text())
    assert summary["train_tokens_seen"] == ref_summary["train_tokens_seen"]
    assert max_abs_diff(adapter_tensors(paths.adapter), adapter_tensors(reference.adapter)) <= 1e-6
    got = trainlog.read_history(paths.logs / "loss_history.csv")
    want = trainlog.read_history(reference.logs / "loss_history.csv")
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for g, w in zip(got, want):
        for key in ("train_loss", "eval_loss"):
            assert (g[key] is None) == (w[key] is None)
            if g[key] is not None:
                assert abs(g[key] - w[key]) <= 1e-5, (g, w)


def test_merge_and_evaluation_csv(t5_run):
    import csv
    import io

    _, paths = t5_run
    merged_cfg = json.loads((paths.merged / "config.json").read_text())
    assert merged_cfg["is_encoder_decoder"] and merged_cfg["architectures"] == ["T5ForConditionalGeneration"]
    check = json.loads((paths.merged / merge.MERGE_CHECK).read_text())
    assert check["passed"] and check["equal"] == check["checked"] > 0
    metrics = json.loads((paths.eval / "metrics.json").read_text())
    assert metrics["family"] == "seq2seq" and set(metrics["models"]) == {"base", "tuned"}
    table = list(csv.DictReader(io.StringIO((paths.eval / "side_by_side.csv").read_text(encoding="utf-8-sig"))))
    assert len(table) == 6
    assert {"uid", "title", "reference", "base_output", "tuned_output", "rougeL_delta"} <= set(table[0])
    outputs = json.loads((paths.eval / evaluation.OUTPUTS_FILE).read_text())
    assert outputs["family"] == "seq2seq" and [r["tuned_output"] for r in table] == outputs["outputs"]["tuned"]
    # seq2seq outputs never start by repeating the prompt (a causal slicing bug would)
    for row in table:
        assert not row["tuned_output"].startswith("Pergunta")
    assert (paths.eval / "report.html").read_text().count("seq2seq") >= 1


def test_demo_prints_the_merged_models_description(t5_run, capsys):
    """04 on the T5 run: its fine-tuned text equals a greedy generation of the merged model."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from prodesc import demo
    from prodesc.generate import GenSettings, describe

    overrides, paths = t5_run
    title = "Acme Stainless Kettle 500 ml"
    assert demo.main(["--preset", "cpu", *overrides, "eval.max_new_tokens=8", title]) == 0
    out = capsys.readouterr().out
    assert f"=== {title}" in out and "base model" in out and "fine-tuned" in out
    model = AutoModelForSeq2SeqLM.from_pretrained(str(paths.merged)).eval()
    tok = AutoTokenizer.from_pretrained(str(paths.merged))
    template = models.adapter_template(paths)
    want = describe(model, tok, template, [title], GenSettings(max_new_tokens=8, batch_size=1), progress=False)[0]
    assert want.strip() and want in out  # streamed as generated, then laid out beside the base's


# --------------------------------------------------------------------------- causal vs seq2seq in one CSV


def test_causal_and_seq2seq_runs_side_by_side_in_one_csv(t5_run, tiny_model_dir, capsys):
    import csv
    import io

    t5_overrides_, t5_paths = t5_run
    root = t5_paths.root
    # a causal run in the same root, on the same rows, with another template (chat)
    causal = tiny_overrides(tiny_model_dir, root, *EVAL_OVERRIDES, "paths.run=llama", "data.template=chat")
    _, paths = stage_paths(causal)
    assert paths.prepared_name != t5_paths.prepared_name
    write_prepared(paths, template_name="chat")
    write_tiny_adapter(tiny_model_dir, paths.adapter, seed=0)
    assert merge.main(["--preset", "cpu", *causal, "eval.compare_runs=t5"]) == 0
    assert "comparing with run 't5'" in capsys.readouterr().err

    table = list(csv.DictReader(io.StringIO((paths.eval / "side_by_side.csv").read_text(encoding="utf-8-sig"))))
    t5_table = list(csv.DictReader(io.StringIO((t5_paths.eval / "side_by_side.csv").read_text(encoding="utf-8-sig"))))
    assert [(r["row"], r["uid"]) for r in table] == [(r["row"], r["uid"]) for r in t5_table] and len(table) == 6
    assert list(table[0])[:7] == ["row", "uid", "title", "reference", "base_output", "tuned_output", "t5_tuned_output"]
    assert [r["t5_tuned_output"] for r in table] == [r["tuned_output"] for r in t5_table]
    assert [r["rougeL_t5_tuned"] for r in table] == [r["rougeL_tuned"] for r in t5_table]
    metrics = json.loads((paths.eval / "metrics.json").read_text())
    t5_metrics = json.loads((t5_paths.eval / "metrics.json").read_text())
    assert list(metrics["models"]) == ["base", "tuned", "t5_tuned"]
    assert metrics["models"]["t5_tuned"]["rougeL"] == pytest.approx(t5_metrics["models"]["tuned"]["rougeL"])
    assert metrics["family"] == "causal" and metrics["compared_runs"]["t5_tuned"]["family"] == "seq2seq"
    assert "t5_tuned: " in (paths.eval / "report.html").read_text()
    # the run's own outputs.json holds only its own models (no chains of comparisons)
    assert set(json.loads((paths.eval / evaluation.OUTPUTS_FILE).read_text())["outputs"]) == {"base", "tuned"}

    # other test rows (another eval.rows) → a clear error before any work
    assert merge.main(["--preset", "cpu", *causal, "eval.rows=4", "eval.compare_runs=t5"]) == 2
    err = capsys.readouterr().err
    assert "run 't5' was evaluated on other test rows" in err and "eval.rows" in err
    assert merge.main(["--preset", "cpu", *causal, "eval.compare_runs=nothing"]) == 2
    assert "run 'nothing' has no evaluation outputs" in capsys.readouterr().err
    assert merge.main(["--preset", "cpu", *causal, "eval.compare_runs=llama"]) == 2
    assert "itself" in capsys.readouterr().err
