"""Chat prompts never depend on the day: Llama 3.x chat templates write today's date into the
system header unless ``date_string`` is given (issue #42, item 5)."""

from __future__ import annotations

from datetime import datetime

import pytest

from conftest import CHATML, stage_paths, tiny_overrides, write_prepared
from prodesc import checkpoints, family, generate, models, templates, train

LLAMA3_LIKE = (
    # the date logic of the Llama 3.1/3.2 Instruct templates, in front of the tiny model's ChatML turns
    "{%- if not date_string is defined %}{%- if strftime_now is defined %}"
    "{%- set date_string = strftime_now('%d %b %Y') %}{%- else %}{%- set date_string = '26 Jul 2024' %}"
    "{%- endif %}{%- endif %}"
    "{{ '<|im_start|>system\nCutting Knowledge Date: December 2023\nToday Date: ' + date_string + '<|im_end|>\n' }}"
    + CHATML
)


def on_day(monkeypatch, day: datetime) -> None:
    """Make transformers' ``strftime_now`` (the templates' clock) read ``day``."""
    from transformers.utils import chat_template_utils

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return day

    monkeypatch.setattr(chat_template_utils, "datetime", Frozen)


DAYS = (datetime(2026, 12, 6), datetime(2027, 3, 1))


@pytest.fixture
def llama3_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tok.chat_template = LLAMA3_LIKE
    return tok


def test_the_fake_clock_moves_a_plain_render(llama3_tokenizer, monkeypatch):
    """The trap itself: without a date_string the template renders the (faked) day."""
    messages = [{"role": "user", "content": "hi"}]
    seen = []
    for day in DAYS:
        on_day(monkeypatch, day)
        seen.append(llama3_tokenizer.apply_chat_template(messages, tokenize=False))
    assert "06 Dec 2026" in seen[0] and "01 Mar 2027" in seen[1]


def test_03_and_04_prompts_do_not_depend_on_the_day(llama3_tokenizer, monkeypatch):
    template = templates.BUILTIN["chat"]
    rendered = []
    for day in DAYS:
        on_day(monkeypatch, day)
        rendered.append(generate.render_prompts(llama3_tokenizer, template, ["Acme Kettle 500 ml"]))
        rendered.append(family.SEQ2SEQ.texts(
            {"prompt": template.format_prompt("Acme Kettle"), "completion": template.format_completion("x")},
            llama3_tokenizer)[0])
        rendered.append(generate.turn_token_ids(llama3_tokenizer))
    assert rendered[:3] == rendered[3:]
    assert f"Today Date: {templates.CHAT_DATE}" in rendered[0][0]


def test_02_trains_on_the_same_tokens_whatever_the_day(tiny_model_dir, llama3_tokenizer, tmp_path, monkeypatch):
    """TRL renders the conversational rows itself: the trainer's tokenized rows, and the lengths
    02 checks against model.max_length, are the same on two days and show the fixed date."""
    overrides = tiny_overrides(tiny_model_dir, tmp_path, "train.max_steps=1", "model.max_length=512")
    cfg, paths = stage_paths(overrides)
    write_prepared(paths, n_train=8, n_val=4, n_test=4)
    _, data = train.load_prepared(cfg, paths)
    dirs = checkpoints.checkpoint_dirs(cfg, paths)
    model, _, _ = models.load_for_training(cfg, str(tiny_model_dir), "hf")
    tok = models.prepare_tokenizer(llama3_tokenizer)
    rows, lengths = [], []
    for day in DAYS:
        on_day(monkeypatch, day)
        args = train.training_args(cfg, paths, dirs, "hf")
        trainer = train.build_trainer(cfg, paths, dirs, args, model, tok, data)
        rows.append([r["input_ids"] for r in trainer.train_dataset])
        lengths.append([family.CAUSAL.example_length(ex, tok) for ex in data["train"]])
    assert rows[0] == rows[1] and lengths[0] == lengths[1]
    assert [len(r) for r in rows[0]] == lengths[0]  # 02's length check counts what TRL trains on
    assert f"Today Date: {templates.CHAT_DATE}" in tok.decode(rows[0][0])
