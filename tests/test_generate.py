"""prodesc.generate: batched generation (left padding, order, decoding knobs) and the resumable cache."""

from __future__ import annotations

import dataclasses
import json

import pytest

from conftest import write_tiny_adapter
from prodesc.config import DecodingConfig, EvalConfig
from prodesc.generate import (
    GenerationCache,
    GenSettings,
    OutputRepetitionPenalty,
    cache_key,
    cached_describe,
    describe,
    generate_kwargs,
    render_prompts,
    turn_token_ids,
)
from prodesc.templates import BUILTIN

TITLES = [
    "Acme Compact Kettle 100 ml",
    "Nordic Premium Stainless Water Bottle With A Much Longer Title For Padding 900 ml",
    "Zen Mug",
    "Atlas Soft Yoga Mat 300 ml",
    "Kiva Portable Desk Lamp That Is Long Enough To Need Padding 200 ml",
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, tmp_path_factory):
    """The tiny model with a random LoRA merged in (the bare random model stops at once)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = write_tiny_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter"), seed=0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()
    return model, AutoTokenizer.from_pretrained(str(tiny_model_dir))


class CountingModel:
    """Wraps a model; counts generate calls and rows, keeps each call's kwargs and new token ids,
    and can fail on a given call."""

    def __init__(self, model, fail_on_call: int | None = None):
        self.model, self.fail_on_call = model, fail_on_call
        self.calls = self.rows = 0
        self.kwargs: list[dict] = []
        self.new_ids: list[list[list[int]]] = []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def generate(self, **kw):
        self.calls += 1
        if self.fail_on_call == self.calls:
            raise KeyboardInterrupt
        self.rows += kw["input_ids"].shape[0]
        self.kwargs.append(kw)
        out = self.model.generate(**kw)
        self.new_ids.append(out[:, kw["input_ids"].shape[1]:].tolist())
        return out


def test_settings_come_from_eval_config():
    ev = EvalConfig(
        max_new_tokens=7,
        num_beams=2,
        do_sample=True,
        temperature=0.7,
        top_p=0.9,
        top_k=5,
        repetition_penalty=1.2,
        no_repeat_ngram_size=3,
        batch_size=3,
    )
    s = GenSettings.from_eval(ev)
    assert (s.max_new_tokens, s.num_beams, s.top_k, s.batch_size) == (7, 2, 5, 3)
    assert "batch_size" not in s.decoding()


def test_sampling_knobs_key_only_sampled_outputs():
    """Without sampling, temperature/top_p/top_k change nothing, so a greedy cache is reused
    whatever they say (keyed with the defaults); with sampling each of them is part of the key."""
    greedy = GenSettings()
    for knob in ({"temperature": 0.3}, {"top_p": 0.5}, {"top_k": 7}):
        assert GenSettings(**knob).decoding() == greedy.decoding()
        assert GenSettings(num_beams=2, **knob).decoding() == GenSettings(num_beams=2).decoding()
        assert GenSettings(do_sample=True, **knob).decoding() != GenSettings(do_sample=True).decoding()
    assert {k: greedy.decoding()[k] for k in ("temperature", "top_p", "top_k")} == {
        "temperature": EvalConfig.temperature, "top_p": EvalConfig.top_p, "top_k": EvalConfig.top_k}


def test_every_knob_reaches_generate(tiny):
    model, tok = tiny
    wrapped = CountingModel(model)
    s = GenSettings(
        max_new_tokens=3,
        min_new_tokens=2,
        do_sample=True,
        temperature=0.5,
        top_p=0.8,
        top_k=4,
        repetition_penalty=1.3,
        no_repeat_ngram_size=2,
        num_beams=1,
        batch_size=8,
    )
    describe(wrapped, tok, BUILTIN["chat"], TITLES[:2], s, progress=False)
    kw = wrapped.kwargs[0]
    checked = [
        ("max_new_tokens", 3),
        ("min_new_tokens", 2),
        ("do_sample", True),
        ("temperature", 0.5),
        ("top_p", 0.8),
        ("top_k", 4),
        ("repetition_penalty", 1.3),
        ("no_repeat_ngram_size", 2),
        ("num_beams", 1),
    ]
    for key, value in checked:
        assert kw[key] == value, key
    # a knob declared in DecodingConfig needs a check here or a test of its own (named here)
    own_tests = {"repetition_scope": test_repetition_scope_decides_whether_the_title_counts,
                 "stop_at_turn": test_turn_tokens_end_the_text_and_wait_for_min_new_tokens}
    assert {k for k, _ in checked} | set(own_tests) == {f.name for f in dataclasses.fields(DecodingConfig)}
    assert kw["pad_token_id"] == tok.pad_token_id and tok.eos_token_id in kw["eos_token_id"]
    greedy = generate_kwargs(GenSettings(), tok, model)
    assert greedy["do_sample"] is False and greedy["temperature"] is None
    assert "min_new_tokens" not in greedy and "num_return_sequences" not in greedy  # off: left to the model


def test_length_knobs_on_a_model_that_stops_at_once(tiny_model_dir):
    """A tiny model whose output layer always prefers the end token (+100) stops at its first
    token; min_new_tokens blocks the end token, so every row gets exactly that many tokens, then
    ends."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.get_output_embeddings().weight)
        head.bias.zero_()
        head.bias[tok.eos_token_id] = 100.0
    model.lm_head = head
    wrapped = CountingModel(model)
    calls = wrapped.new_ids
    stops = describe(wrapped, tok, BUILTIN["chat"], TITLES, GenSettings(max_new_tokens=12), progress=False)
    assert stops == [""] * len(TITLES) and calls[-1] == [[tok.eos_token_id]] * len(TITLES)
    describe(wrapped, tok, BUILTIN["chat"], TITLES, GenSettings(max_new_tokens=12, min_new_tokens=6), progress=False)
    for row in calls[-1]:
        assert len(row) == 7 and tok.eos_token_id not in row[:6] and row[6] == tok.eos_token_id, row


def test_turn_tokens_end_the_text_and_wait_for_min_new_tokens(tiny_model_dir):
    """eval.stop_at_turn: a tiny model that prefers the end token (+100), then ChatML's turn start
    <|im_start|> (+90). With min_new_tokens holding the end back and the setting off, it writes the
    turn start (what SmolLM2 does before a made-up "user" turn); on, the turn start is held back
    too, so the first tokens are text, and after them the end comes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    turn = tok.convert_tokens_to_ids("<|im_start|>")
    assert turn_token_ids(tok) == [turn] and turn != tok.eos_token_id
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.get_output_embeddings().weight)
        head.bias.zero_()
        head.bias[tok.eos_token_id] = 100.0
        head.bias[turn] = 90.0
    model.lm_head = head
    wrapped = CountingModel(model)
    off = GenSettings(max_new_tokens=12, min_new_tokens=4, stop_at_turn=False)
    describe(wrapped, tok, BUILTIN["chat"], TITLES, off, progress=False)
    assert wrapped.kwargs[-1]["eos_token_id"] == [tok.eos_token_id]
    assert all(row[:4] == [turn] * 4 for row in wrapped.new_ids[-1]), wrapped.new_ids[-1]
    describe(wrapped, tok, BUILTIN["chat"], TITLES, GenSettings(max_new_tokens=12, min_new_tokens=4), progress=False)
    assert wrapped.kwargs[-1]["eos_token_id"] == [tok.eos_token_id, turn]
    for row in wrapped.new_ids[-1]:
        assert len(row) == 5 and not {turn, tok.eos_token_id} & set(row[:4]) and row[4] == tok.eos_token_id, row


def test_turn_tokens_of_other_chat_formats_and_none_without_one(tiny_model_dir):
    """The chat format's own special tokens, EOS left out; nothing for a tokenizer without a chat
    template (FLAN-T5) or with the setting off; the setting keys cached outputs only when on."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tok.chat_template = (  # Llama-3-like: a turn is <|im_start|>role<|endoftext|>…<|im_end|>
        "{% for m in messages %}<|im_start|>{{ m['role'] }}<|endoftext|>{{ m['content'] }}<|im_end|>{% endfor %}"
    )
    ids = tok.convert_tokens_to_ids(["<|im_start|>", "<|endoftext|>"])
    assert turn_token_ids(tok) == ids
    tok.chat_template = None
    assert turn_token_ids(tok) == [] and generate_kwargs(GenSettings(), tok)["eos_token_id"] == [tok.eos_token_id]
    assert GenSettings().decoding()["stop_at_turn"] is True
    assert GenSettings(stop_at_turn=False).decoding()["stop_at_turn"] is False


def test_output_scope_penalty_uses_the_built_in_arithmetic():
    """OutputRepetitionPenalty counting the whole sequence equals transformers' own processor;
    counting from the prompt's end, a token seen only in the prompt is left alone unless kept."""
    import torch
    from transformers import RepetitionPenaltyLogitsProcessor

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (3, 9), generator=gen)
    scores = torch.randn(3, 50, generator=gen) * 4
    want = RepetitionPenaltyLogitsProcessor(1.3)(ids, scores.clone())
    assert torch.equal(OutputRepetitionPenalty(1.3, 0, [])(ids, scores.clone()), want)
    penalised = torch.where(scores < 0, scores * 1.3, scores / 1.3)
    got = OutputRepetitionPenalty(1.3, 6, [int(ids[0, 0])])(ids, scores.clone())
    for row in range(3):
        for token in range(50):
            counted = token in ids[row, 6:].tolist() or token == int(ids[0, 0])
            assert got[row, token] == (penalised if counted else scores)[row, token], (row, token)
    prompt_only = OutputRepetitionPenalty(1.3, 9, [])  # nothing generated yet: nothing counted
    assert torch.equal(prompt_only(ids, scores.clone()), scores)


def test_repetition_scope_decides_whether_the_title_counts(tiny_model_dir):
    """A tiny model whose logits are fixed: a title token T 10, another token O 8, the end token
    9.5, with repetition_penalty 1.5. `all` counts T (in the prompt) from the start: 10 / 1.5 < 8,
    so it writes O first. `output` writes T first, then O. The end token is in the chat prompt and
    stays counted under both (9.5 / 1.5 < 8), so neither stops early."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    title = TITLES[0]
    prompt_ids = set(tok(render_prompts(tok, BUILTIN["chat"], [title])[0])["input_ids"])
    title_token = next(i for i in tok(" " + title)["input_ids"] if i in prompt_ids)
    assert tok.eos_token_id in prompt_ids
    other = next(i for i in range(100, tok.vocab_size) if i not in prompt_ids)
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-5.0)
        head.bias[title_token], head.bias[other], head.bias[tok.eos_token_id] = 10.0, 8.0, 9.5
    model.lm_head = head
    wrapped = CountingModel(model)
    for scope, first in (("all", [other, title_token]), ("output", [title_token, other])):
        s = GenSettings(max_new_tokens=4, repetition_penalty=1.5, repetition_scope=scope)
        describe(wrapped, tok, BUILTIN["chat"], [title], s, progress=False)
        assert wrapped.new_ids[-1][0][:2] == first, scope
        assert tok.eos_token_id not in wrapped.new_ids[-1][0][:2], scope
    assert wrapped.kwargs[-1]["repetition_penalty"] == 1.0  # replaced, not applied twice
    assert GenSettings(repetition_scope="output").decoding() != GenSettings().decoding()


def test_length_knobs_are_checked():
    from prodesc.config import ConfigError

    for bad in (-1, 160, 500):
        with pytest.raises(ConfigError, match="eval.min_new_tokens"):
            EvalConfig(max_new_tokens=160, min_new_tokens=bad)
    assert EvalConfig(max_new_tokens=160, min_new_tokens=159).min_new_tokens == 159


def test_left_padding_and_chat_prompt(tiny):
    model, tok = tiny
    wrapped = CountingModel(model)
    describe(
        wrapped, tok, BUILTIN["chat"], TITLES, GenSettings(max_new_tokens=2, batch_size=5), progress=False
    )
    assert tok.padding_side == "left"
    mask = wrapped.kwargs[0]["attention_mask"]
    assert (mask[:, -1] == 1).all() and (mask[:, 0] == 0).any()  # padding on the left only
    prompt = render_prompts(tok, BUILTIN["chat"], ["X"])[0]
    assert prompt.rstrip().endswith("<|im_start|>assistant") and "Product title: X" in prompt
    assert render_prompts(tok, BUILTIN["descfmt"], ["X"])[0] == BUILTIN["descfmt"].format_prompt("X")


@pytest.mark.parametrize("template", ["chat", "descfmt"])
def test_batched_equals_one_at_a_time_in_input_order(tiny, template):
    model, tok = tiny
    t = BUILTIN[template]
    batched = describe(model, tok, t, TITLES, GenSettings(max_new_tokens=12, batch_size=4), progress=False)
    single = [
        describe(model, tok, t, [x], GenSettings(max_new_tokens=12, batch_size=1), progress=False)[0]
        for x in TITLES
    ]
    assert batched == single
    assert len(set(batched)) > 1  # different titles give different outputs: the order matters


def test_only_new_tokens_are_decoded_and_prefix_stripped(tiny, monkeypatch):
    model, tok = tiny
    t = BUILTIN["descfmt"]
    import torch

    def fake_generate(**kw):  # the prompt, then "Description: hello" and EOS
        new = tok("Description: hello", add_special_tokens=False, return_tensors="pt")["input_ids"]
        new = torch.cat([new, torch.tensor([[tok.eos_token_id]])], dim=1).repeat(kw["input_ids"].shape[0], 1)
        return torch.cat([kw["input_ids"], new], dim=1)

    wrapped = CountingModel(model)
    monkeypatch.setattr(wrapped, "generate", fake_generate)
    assert describe(wrapped, tok, t, TITLES[:2], GenSettings(batch_size=2), progress=False) == [
        "hello",
        "hello",
    ]


def _rows(titles):
    return [{"row": i, "uid": f"U{i}", "title": x} for i, x in enumerate(titles)]


def test_interrupted_generation_resumes_with_missing_rows_only(tiny, tmp_path):
    model, tok = tiny
    t, s = BUILTIN["chat"], GenSettings(max_new_tokens=6, batch_size=2)
    key = cache_key({"name": "tiny"}, s, t)
    first = CountingModel(model, fail_on_call=2)
    with pytest.raises(KeyboardInterrupt):
        cached_describe(first, tok, t, _rows(TITLES), s, GenerationCache(tmp_path, "m", key), progress=False)
    assert first.rows == 2
    with open(tmp_path / "m.jsonl", "a") as fh:
        fh.write('{"row": 4, "uid": "U4", "ti')  # a line cut short by the interruption
    again = CountingModel(model)
    out = cached_describe(
        again, tok, t, _rows(TITLES), s, GenerationCache(tmp_path, "m", key), progress=False
    )
    assert again.rows == len(TITLES) - 2
    full = describe(model, tok, t, TITLES, s, progress=False)
    assert out == full
    third = CountingModel(model)
    cached_describe(third, tok, t, _rows(TITLES), s, GenerationCache(tmp_path, "m", key), progress=False)
    assert third.calls == 0


def test_changed_setting_starts_a_new_cache_and_old_one_comes_back(tmp_path):
    t = BUILTIN["chat"]
    k1 = cache_key({"name": "m"}, GenSettings(max_new_tokens=5), t)
    k2 = cache_key({"name": "m"}, GenSettings(max_new_tokens=6), t)
    assert k1 != k2
    assert k1 == cache_key({"name": "m"}, GenSettings(max_new_tokens=5, batch_size=99), t)
    assert k1 != cache_key({"name": "m"}, GenSettings(max_new_tokens=5, min_new_tokens=2), t)
    assert k1 != cache_key({"name": "m"}, GenSettings(max_new_tokens=5), BUILTIN["descfmt"])
    c1 = GenerationCache(tmp_path, "m", k1)
    c1.add([{"row": 0, "uid": "U0", "title": "a", "output": "one", "raw": "one"}])
    c2 = GenerationCache(tmp_path, "m", k2)
    assert c2.get(0, "a") is None
    c2.add([{"row": 0, "uid": "U0", "title": "a", "output": "two", "raw": "two"}])
    assert GenerationCache(tmp_path, "m", k1).get(0, "a") == "one"
    assert GenerationCache(tmp_path, "m", k2).get(0, "a") == "two"
    header = json.loads((tmp_path / "m.jsonl").read_text().splitlines()[0])
    assert header["cache_key"] == k2
    assert GenerationCache(tmp_path, "m", k2).get(0, "another title") is None  # data changed: regenerate


def test_only_beam_search_cannot_stream():
    assert GenSettings().streams and GenSettings(do_sample=True).streams
    assert not GenSettings(num_beams=2).streams


def test_sampling_seed_repeats_a_run_and_keys_the_cache(tiny):
    model, tok = tiny
    s = GenSettings(max_new_tokens=8, do_sample=True, batch_size=4)
    first = describe(model, tok, BUILTIN["chat"], TITLES, s, progress=False, seed=3)
    assert describe(model, tok, BUILTIN["chat"], TITLES, s, progress=False, seed=3) == first
    assert describe(model, tok, BUILTIN["chat"], TITLES, s, progress=False, seed=4) != first
    t, ident = BUILTIN["chat"], {"name": "m"}
    assert cache_key(ident, s, t, seed=3) != cache_key(ident, s, t, seed=4)
    greedy = GenSettings(max_new_tokens=8)
    assert cache_key(ident, greedy, t, seed=3) == cache_key(ident, greedy, t, seed=4)
    assert cache_key(ident, greedy, t, seed=3) == cache_key(ident, greedy, t)  # greedy: seed unused


def test_resumed_sampling_continues_the_interrupted_runs_random_stream(tiny, tmp_path):
    """An interrupted 03 that samples, run again, writes what one uninterrupted run
    writes: each batch's last cache line keeps torch's random state, and the resume starts there."""
    model, tok = tiny
    t, s = BUILTIN["chat"], GenSettings(max_new_tokens=8, do_sample=True, batch_size=1)  # 1 title a batch
    key = cache_key({"name": "tiny"}, s, t, seed=5)
    whole = cached_describe(model, tok, t, _rows(TITLES), s, GenerationCache(tmp_path / "a", "m", key),
                            progress=False, seed=5)

    def interrupted(folder):
        with pytest.raises(KeyboardInterrupt):
            cached_describe(CountingModel(model, fail_on_call=3), tok, t, _rows(TITLES), s,
                            GenerationCache(folder, "m", key), progress=False, seed=5)
        cache = GenerationCache(folder, "m", key)
        assert len(cache.rows) == 2 and cache.resume_state["rows"] == 2
        return cache

    again = CountingModel(model)
    out = cached_describe(again, tok, t, _rows(TITLES), s, interrupted(tmp_path / "b"), progress=False, seed=5)
    assert again.rows == len(TITLES) - 2  # only the missing titles
    assert out == whole
    # without the saved state the resume would reseed and sample other texts: the state is what counts
    interrupted(tmp_path / "c")
    lines = (tmp_path / "c" / "m.jsonl").read_text().splitlines()
    stripped = [json.dumps({k: v for k, v in json.loads(x).items() if k != "rng"}) for x in lines[1:]]
    (tmp_path / "c" / "m.jsonl").write_text("\n".join([lines[0], *stripped]) + "\n")
    cache = GenerationCache(tmp_path / "c", "m", key)
    assert cache.resume_state is None
    kept = sorted(cache.rows)  # the two longest titles: generation runs longest first
    reseeded = cached_describe(model, tok, t, _rows(TITLES), s, cache, progress=False, seed=5)
    assert [reseeded[i] for i in kept] == [whole[i] for i in kept] and reseeded != whole


def test_a_batch_cut_short_leaves_the_saved_random_state_unused(tmp_path):
    cache = GenerationCache(tmp_path, "m", "k")
    row = {"uid": "U", "title": "a", "output": "o", "raw": "o"}
    cache.add([{**row, "row": 0}, {**row, "row": 1}], rng={"cpu": "AAAA"})
    assert GenerationCache(tmp_path, "m", "k").resume_state == {"cpu": "AAAA", "rows": 2}
    cache.add([{**row, "row": 2}])  # a batch whose last line (with its state) never reached the disk
    assert GenerationCache(tmp_path, "m", "k").resume_state is None
    cache.add([{**row, "row": 3}], rng={"cpu": "BBBB"})
    assert GenerationCache(tmp_path, "m", "k").resume_state == {"cpu": "BBBB", "rows": 4}


