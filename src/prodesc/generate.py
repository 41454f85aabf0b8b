"""Batched generation of product descriptions, shared by evaluation (03) and the demo (04).

- :class:`GenSettings`: the decoding knobs (``prodesc.config.DecodingConfig``) and a batch size.
- :func:`render_prompts` turns titles into prompt strings with the template the model was trained
  with (chat: the tokenizer's chat template with the assistant turn opened; text: the prompt).
- :func:`generate_raw` runs ``model.generate`` over prompts in batches: padded as the model's family
  needs (causal: left; seq2seq: right, :mod:`prodesc.family`), prompts sorted by length to waste
  little padding (outputs come back in the input order), only the new tokens decoded (a causal
  model's output repeats the prompt, a seq2seq model's does not), special tokens skipped.
- :func:`describe` = the two above + ``template.extract``: titles in, descriptions out (with an
  optional streamer that prints the tokens as they are generated: the demo).
- :class:`GenerationCache` keeps generations in a JSON Lines file, one line per row, appended and
  flushed per batch, so an interrupted evaluation resumes with only the missing rows; the file's
  header holds a hash of (model identity, settings, template) and a change starts a new file. When
  decoding samples, each batch's last line also keeps torch's random state after that batch, and a
  resumed run continues from it: it samples the same texts as a run that was never interrupted.

torch and transformers are imported inside the functions only.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prodesc import family
from prodesc.config import DecodingConfig, EvalConfig
from prodesc.errors import UserError
from prodesc.models import prepare_tokenizer
from prodesc.retrieval import Example
from prodesc.templates import PromptTemplate, render_chat

CACHE_FORMAT = 2
"""Part of every cache key: raised when the key's contents change, so an older cache is
regenerated (2: 2026-12-06, MBR decoding and eval.eos_bias retired)."""


@dataclass
class GenSettings(DecodingConfig):
    """The decoding knobs (:class:`~prodesc.config.DecodingConfig`: the ``eval.*`` keys, checked as
    there) and the batch size, which changes speed only, so it is not in the cache key."""

    batch_size: int = EvalConfig.batch_size

    @classmethod
    def from_eval(cls, section: Any) -> GenSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{n: getattr(section, n) for n in names})

    def decoding(self) -> dict[str, Any]:
        """What changes the output (the cache key): everything but the batch size; without sampling
        the sampling knobs count as their defaults (greedy and beam search ignore them)."""
        out = dataclasses.asdict(self)
        out.pop("batch_size")
        if not self.do_sample:
            for knob in ("temperature", "top_p", "top_k"):
                out[knob] = getattr(DecodingConfig, knob)
        return out

    @property
    def samples(self) -> bool:
        """Whether decoding samples (eval.do_sample)."""
        return self.do_sample

    @property
    def streams(self) -> bool:
        """Whether tokens can be shown as they come: no beam search."""
        return self.num_beams == 1


def generate_kwargs(settings: GenSettings, tokenizer: Any, model: Any = None) -> dict[str, Any]:
    """Keyword arguments for ``model.generate``; sampling knobs only when sampling."""
    kwargs: dict[str, Any] = {
        "max_new_tokens": settings.max_new_tokens,
        "num_beams": settings.num_beams,
        "do_sample": settings.samples,
        "repetition_penalty": settings.repetition_penalty,
        "no_repeat_ngram_size": settings.no_repeat_ngram_size,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": stop_ids(settings, tokenizer, model),
    }
    if settings.min_new_tokens:
        kwargs["min_new_tokens"] = settings.min_new_tokens
    if settings.samples:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
    else:  # neutralise sampling defaults a generation_config may carry (avoids warnings)
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


class OutputRepetitionPenalty:
    """``repetition_penalty`` over the generated tokens only, plus ``keep`` (the end tokens the
    prompt holds, which the built-in penalty would have counted): ``eval.repetition_scope=output``.
    The same arithmetic as transformers' own: a positive logit is divided by the penalty, a
    negative one multiplied, once per distinct token."""

    def __init__(self, penalty: float, prompt_length: int, keep: Sequence[int]) -> None:
        self.penalty = penalty
        self.prompt_length = prompt_length
        self.keep = list(keep)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        seen = input_ids[:, self.prompt_length :]
        if self.keep:
            kept = torch.tensor(self.keep, device=seen.device, dtype=seen.dtype).expand(len(seen), -1)
            seen = torch.cat([seen, kept], dim=1)
        if seen.shape[1] == 0:
            return scores
        picked = scores.gather(1, seen)
        picked = torch.where(picked < 0, picked * self.penalty, picked / self.penalty)
        return scores.scatter(1, seen, picked)


def scoped_penalty(settings: GenSettings, fam: family.Family, enc: Any, end_ids: list[int]) -> dict[str, Any]:
    """Extra ``generate`` arguments for one batch: with ``repetition_scope=output`` on a
    decoder-only model, :class:`OutputRepetitionPenalty` replaces the built-in penalty (which
    counts the prompt); nothing otherwise (an encoder-decoder model never counts its prompt)."""
    if settings.repetition_scope == "all" or settings.repetition_penalty == 1.0 or fam is not family.CAUSAL:
        return {}
    from transformers import LogitsProcessorList

    prompt = enc["input_ids"]
    present = set(prompt[enc["attention_mask"].bool()].tolist())
    keep = [i for i in end_ids if i in present]
    penalty = OutputRepetitionPenalty(settings.repetition_penalty, prompt.shape[1], keep)
    return {"repetition_penalty": 1.0, "logits_processor": LogitsProcessorList([penalty])}


def eos_ids(tokenizer: Any, model: Any = None) -> list[int]:
    """The tokenizer's EOS first, then any other end token the model's generation config names."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in extra if isinstance(extra, (list, tuple)) else [extra]:
        if value is not None and int(value) not in ids:
            ids.append(int(value))
    return ids


def stop_ids(settings: GenSettings, tokenizer: Any, model: Any = None) -> list[int]:
    """The tokens that end a description: EOS (:func:`eos_ids`), and with eval.stop_at_turn the
    chat format's other special tokens (:func:`turn_token_ids`)."""
    ids = eos_ids(tokenizer, model)
    if settings.stop_at_turn:
        ids += [i for i in turn_token_ids(tokenizer) if i not in ids]
    return ids


def turn_token_ids(tokenizer: Any) -> list[int]:
    """The special tokens of the tokenizer's chat format that are not EOS (eval.stop_at_turn):
    those a rendered two-turn conversation holds, e.g. <|im_start|> for ChatML, <|start_header_id|>
    and <|eot_id|> for Llama 3. Empty without a chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return []
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    text = render_chat(tokenizer, turns, tokenize=False)
    special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    found = dict.fromkeys(i for i in tokenizer(text, add_special_tokens=False)["input_ids"] if i in special)
    return [i for i in found if i != tokenizer.eos_token_id]


def prepare_for_generation(tokenizer: Any, fam: family.Family = family.CAUSAL) -> Any:
    """Padding for generation (causal: left, so every row continues at its right end; seq2seq:
    right, the encoder's usual side); pad with EOS if unset."""
    return prepare_tokenizer(tokenizer, padding_side=fam.generation_padding_side)


def render_prompts(
    tokenizer: Any,
    template: PromptTemplate,
    titles: Iterable[str],
    examples: Sequence[Sequence[Example]] | None = None,
) -> list[str]:
    """Prompt strings for ``titles`` (with data.example_words, ``examples[i]`` are title i's
    examples, :mod:`prodesc.retrieval`), as the model saw them in training."""
    titles = list(titles)
    examples = list(examples) if examples is not None else [()] * len(titles)
    if len(examples) != len(titles):
        raise ValueError(f"{len(titles)} titles but {len(examples)} examples")
    if template.kind == "text":
        return [template.format_prompt(t, e) for t, e in zip(titles, examples)]
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"prompt template '{template.name}' is a chat template but this model's tokenizer has none "
            "(e.g. FLAN-T5): train with a text template such as data.template=ptbr_qa or descfmt"
        )
    return [
        render_chat(tokenizer, template.format_prompt(t, e), add_generation_prompt=True, tokenize=False)
        for t, e in zip(titles, examples)
    ]


def _batches(order: list[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(order), size):
        yield order[start : start + size]


def generate_raw(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    settings: GenSettings,
    add_special_tokens: bool = False,
    desc: str = "generating",
    on_batch: Callable[[list[int], list[str]], None] | None = None,
    progress: bool = True,
    streamer: Any = None,
    seed: int | None = None,
    resume_from: dict[str, Any] | None = None,
) -> list[str]:
    """Generate for every prompt in batches of ``settings.batch_size``; return the new text.

    Prompts are tokenized once and sorted longest first within the run (less padding, and the
    longest batch runs first, so an out-of-memory shows up at once); results are returned in the
    order of ``prompts``. ``on_batch(indices, texts)`` is called after each batch (the cache).
    ``streamer`` (a transformers ``TextStreamer``, batches of one, no beam search) is passed to
    ``model.generate`` to show the tokens as they come (the demo). ``seed``: set once before the
    first batch when sampling, so a whole run samples the same text again; ``resume_from`` (from
    :func:`rng_state`, saved after a batch of an interrupted run) then replaces that start, so the
    run goes on sampling where the interrupted one stopped.

    """
    if not prompts:
        return []
    from tqdm.auto import tqdm

    fam = family.of_model(model)
    prepare_for_generation(tokenizer, fam)
    lengths = [
        len(ids) for ids in tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    ]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    kwargs = generate_kwargs(settings, tokenizer, model)
    if streamer is not None:
        kwargs["streamer"] = streamer
    if seed is not None and settings.samples:
        from transformers import set_seed

        set_seed(seed)
        if resume_from is not None:
            set_rng_state(resume_from)
    out: list[str | None] = [None] * len(prompts)
    device = next(model.parameters()).device
    model.eval()
    bar = tqdm(total=len(prompts), desc=desc, unit="row", disable=not progress)
    try:
        for idx in _batches(order, settings.batch_size):
            enc = tokenizer(
                [prompts[i] for i in idx],
                return_tensors="pt",
                padding=True,
                add_special_tokens=add_special_tokens,
            ).to(device)
            batch_kwargs = {**kwargs, **scoped_penalty(settings, fam, enc, kwargs["eos_token_id"])}
            texts = _generate_texts(model, tokenizer, fam, enc, batch_kwargs)
            for i, text in zip(idx, texts):
                out[i] = text
            if on_batch is not None:
                on_batch(idx, texts)
            bar.update(len(idx))
    finally:
        bar.close()
    return [t if t is not None else "" for t in out]


def _generate_texts(model: Any, tokenizer: Any, fam: family.Family, enc: Any, kwargs: dict[str, Any]) -> list[str]:
    """One ``model.generate`` call on a tokenized batch: the new text of every returned sequence."""
    import torch

    with torch.inference_mode():
        gen = model.generate(**enc, **kwargs)
    return tokenizer.batch_decode(fam.new_tokens(gen, enc["input_ids"].shape[1]), skip_special_tokens=True)


def rng_state() -> dict[str, Any]:
    """torch's random state now (the CPU generator and each initialised CUDA device's), as text
    that JSON can hold; :func:`set_rng_state` puts it back."""
    import torch

    def text(state: Any) -> str:
        return base64.b64encode(state.numpy().tobytes()).decode("ascii")

    state: dict[str, Any] = {"cpu": text(torch.get_rng_state())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [text(s.cpu()) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a state from :func:`rng_state` (CUDA's only where there are as many devices)."""
    import torch

    def tensor(text: str) -> Any:
        return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)

    torch.set_rng_state(tensor(state["cpu"]))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all([tensor(s) for s in cuda])


def describe(
    model: Any,
    tokenizer: Any,
    template: PromptTemplate,
    titles: Sequence[str],
    settings: GenSettings,
    examples: Sequence[Sequence[Example]] | None = None,
    **kw: Any,
) -> list[str]:
    """Descriptions for ``titles`` (the completion prefix such as "Description:" stripped);
    ``examples``: each title's examples with data.example_words."""
    prompts = render_prompts(tokenizer, template, titles, examples)
    raw = generate_raw(model, tokenizer, prompts, settings, add_special_tokens=template.kind == "text", **kw)
    return [template.extract(r) for r in raw]


# --------------------------------------------------------------------------- cache


def cache_key(
    identity: dict[str, Any],
    settings: GenSettings,
    template: PromptTemplate,
    seed: int | None = None,
) -> str:
    """Hash of what decides the outputs; the seed counts only when sampling."""
    parts = {
        "format": CACHE_FORMAT,
        "model": identity,
        "settings": settings.decoding(),
        "template": template.to_dict(),
    }
    if settings.samples and seed is not None:
        parts["seed"] = seed
    blob = json.dumps(
        parts,
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def weights_fingerprint(folder: Path) -> str:
    """A cheap identity of the weights in ``folder``: names, sizes and modification times."""
    folder = Path(folder)
    if not folder.is_dir():
        return str(folder)  # a hub id
    parts = [
        f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
        for p in sorted(folder.iterdir())
        if p.suffix in (".safetensors", ".bin", ".gguf") or p.name == "config.json"
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


class GenerationCache:
    """``<label>.jsonl``: a header line ``{"cache_key": ...}``, then ``{"row", "uid", "title",
    "output", "raw"}`` per generated row. A file with another key is set aside as
    ``<label>.<key[:8]>.jsonl`` (and restored when that key comes back).

    ``add(items, rng=...)`` stores a random state with the batch's last line, together with how many
    rows the file held then; :attr:`resume_state` gives the latest one back only while the file
    still holds exactly those rows (a batch cut short by an interruption leaves it unused)."""

    def __init__(self, folder: Path, label: str, key: str, meta: dict[str, Any] | None = None) -> None:
        self.path = Path(folder) / f"{label}.jsonl"
        self.label = label
        self.key = key
        self.meta = meta or {}
        self.rows: dict[int, dict[str, Any]] = {}
        self._rng: dict[str, Any] | None = None
        self._open()

    def _aside(self, key: str) -> Path:
        return self.path.with_name(f"{self.label}.{key[:8]}.jsonl")

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        current = _header_key(self.path)
        if current is not None and current != self.key:
            os.replace(self.path, self._aside(current))
        if current != self.key and _header_key(self._aside(self.key)) == self.key:
            os.replace(self._aside(self.key), self.path)
        if _header_key(self.path) != self.key:
            with open(self.path, "w", encoding="utf-8") as fh:
                fh.write(json.dumps({"cache_key": self.key, **self.meta}, default=str) + "\n")
        self.rows, self._rng = _read_rows(self.path)
        _end_with_newline(self.path)

    def get(self, row: int, title: str) -> str | None:
        entry = self.rows.get(row)
        if entry is not None and entry.get("title") == title:
            return entry.get("output")
        return None

    @property
    def resume_state(self) -> dict[str, Any] | None:
        """The random state saved after the last complete batch, if it is still the file's last
        word: every row then in the file is still there and no other row came after it."""
        if self._rng is not None and self._rng.get("rows") == len(self.rows):
            return self._rng
        return None

    def add(self, items: list[dict[str, Any]], rng: dict[str, Any] | None = None) -> None:
        """Append ``items`` (each with row, uid, title, output, raw) in one write and flush them to
        disk; ``rng`` (a :func:`rng_state`) goes with the last of them."""
        if not items:
            return
        for item in items:
            self.rows[int(item["row"])] = item
        if rng is not None:
            self._rng = {**rng, "rows": len(self.rows)}
            items = [*items[:-1], {**items[-1], "rng": self._rng}]
        text = "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


def _header_key(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
        return json.loads(first).get("cache_key")
    except (OSError, ValueError, AttributeError):
        return None


def _end_with_newline(path: Path) -> None:
    """After an interruption mid-line, start the next line on a line of its own."""
    with open(path, "rb+") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() == 0:
            return
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) != b"\n":
            fh.write(b"\n")


def _read_rows(path: Path) -> tuple[dict[int, dict[str, Any]], dict[str, Any] | None]:
    """The rows in a cache file and the last random state saved with them."""
    rows: dict[int, dict[str, Any]] = {}
    rng = None
    with open(path, encoding="utf-8") as fh:
        next(fh, None)
        for line in fh:
            try:
                item = json.loads(line)
                rows[int(item["row"])] = item
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by an interruption: that row is generated again
            if isinstance(item.get("rng"), dict):
                rng = item["rng"]
    return rows, rng


def cached_describe(
    model: Any,
    tokenizer: Any,
    template: PromptTemplate,
    rows: Sequence[dict[str, Any]],
    settings: GenSettings,
    cache: GenerationCache,
    progress: bool = True,
    seed: int | None = None,
) -> list[str]:
    """Descriptions for ``rows`` (each with row, uid, title, and examples with data.example_words),
    generating only rows not in ``cache``."""
    missing = [r for r in rows if cache.get(r["row"], r["title"]) is None]
    if missing:
        prompts = render_prompts(
            tokenizer, template, [r["title"] for r in missing], [r.get("examples", ()) for r in missing]
        )
        sampled = settings.samples and seed is not None  # keep the random state for a resume

        def store(idx: list[int], texts: list[str]) -> None:
            cache.add(
                [
                    {
                        "row": missing[i]["row"],
                        "uid": missing[i]["uid"],
                        "title": missing[i]["title"],
                        "output": template.extract(t),
                        "raw": t,
                    }
                    for i, t in zip(idx, texts)
                ],
                rng=rng_state() if sampled else None,
            )

        generate_raw(
            model,
            tokenizer,
            prompts,
            settings,
            add_special_tokens=template.kind == "text",
            desc=cache.label,
            on_batch=store,
            progress=progress,
            seed=seed,
            resume_from=cache.resume_state if sampled and len(missing) < len(rows) else None,
        )
    return [cache.get(r["row"], r["title"]) or "" for r in rows]
