"""Model families: the few things that differ between a decoder-only and an encoder-decoder model.

``model.family`` is `causal` (Llama, SmolLM2, ...: one stack reads the prompt and writes the
continuation) or `seq2seq` (T5 / FLAN-T5, BART, ...: the encoder reads the prompt, the decoder
writes the completion). `auto` reads the model's ``config.json`` (``is_encoder_decoder``, else a
known encoder-decoder ``model_type``). Everything else in the pipeline (prepared data, prompt
templates, checkpoints, resume, merge, evaluation, demo) is shared: a :class:`Family` only answers

- which ``transformers`` auto class loads the model, and PEFT's ``task_type``;
- what ``lora.target_modules=all-linear`` expands to, and whether Unsloth can load it;
- how a prompt/completion example becomes training inputs, and how long it is;
- which training-arguments class, trainer and collator train it: TRL's ``SFTTrainer`` for causal
  models; transformers' ``Seq2SeqTrainer`` + ``DataCollatorForSeq2Seq`` for seq2seq, because TRL
  1.14's ``SFTTrainer`` concatenates prompt and completion into one decoder sequence and has no
  encoder-decoder path (huggingface/trl issue #6165);
- how prompts are padded for generation and where the generated text starts: a causal model's
  output repeats the (left-padded) prompt, a seq2seq model's output is the decoder's text only.

torch, transformers and trl are imported inside the methods only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from prodesc.cli import log
from prodesc.embedded import EMBEDDED_MODEL
from prodesc.templates import render_chat, with_fixed_date

FAMILIES = ("causal", "seq2seq")

UNSLOTH_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
"""`all-linear` spelled out for Unsloth, which patches these projections of Llama-style models."""

T5_TARGETS = ["q", "k", "v", "o", "wi_0", "wi_1", "wo"]
"""Every linear projection of a (FLAN-)T5 block: attention q/k/v/o, the gated FFN wi_0/wi_1/wo.
PEFT's `all-linear` selects exactly these on T5 (the lm_head is left out)."""

SEQ2SEQ_MODEL_TYPES = frozenset({"t5", "mt5", "umt5", "longt5", "bart", "mbart", "pegasus", "marian"})
"""Encoder-decoder ``model_type`` values, for a config.json that does not say ``is_encoder_decoder``."""

IGNORE_INDEX = -100
"""Label value that takes no loss (padding of the labels)."""


class Family:
    """What one model family needs; use the instances :data:`CAUSAL` and :data:`SEQ2SEQ`."""

    name: ClassVar[str]
    auto_class_name: ClassVar[str]
    """The ``transformers`` class that loads the model (AutoModelForCausalLM / AutoModelForSeq2SeqLM)."""
    task_type: ClassVar[str]
    """PEFT's ``task_type`` for the LoRA config."""
    generation_padding_side: ClassVar[str]
    """Where prompts are padded in a generation batch."""
    unsloth: ClassVar[bool]
    """Whether Unsloth's FastLanguageModel can load this family."""
    tokens_counted: ClassVar[str]
    """What ``train_tokens_seen`` counts (the Trainer counts the model's main input)."""

    def __repr__(self) -> str:
        return f"Family({self.name})"

    def auto_class(self) -> Any:
        import transformers

        return getattr(transformers, self.auto_class_name)

    def lora_targets(self, requested: list[str], backend: str) -> Any:
        """``lora.target_modules`` for PEFT/Unsloth: `all-linear` as the backend understands it."""
        return list(requested)

    # ----------------------------------------------------------------- training

    def example_length(self, example: dict[str, Any], tokenizer: Any) -> int:
        """Tokens of the longest sequence the model sees for this example (EOS included)."""
        raise NotImplementedError

    def args_class(self) -> Any:
        """The TrainingArguments subclass of this family's trainer."""
        raise NotImplementedError

    def args_extras(self, cfg: Any, batching: str) -> dict[str, Any]:
        """Training arguments only this family's trainer takes (batching, sequence length)."""
        raise NotImplementedError

    def trainer(self, *, model: Any, args: Any, data: dict[str, Any], eval_dataset: Any,
                tokenizer: Any, callbacks: list[Any]) -> Any:
        """The trainer for ``data["train"]`` (prompt/completion columns) and ``eval_dataset``."""
        raise NotImplementedError

    # ----------------------------------------------------------------- generation

    def new_tokens(self, generated: Any, prompt_length: int) -> Any:
        """The generated tokens without the prompt, from ``model.generate``'s output."""
        raise NotImplementedError


class CausalFamily(Family):
    name = "causal"
    auto_class_name = "AutoModelForCausalLM"
    task_type = "CAUSAL_LM"
    generation_padding_side = "left"  # every row continues at its right end
    unsloth = True
    tokens_counted = "prompt + completion (non-padding)"

    def lora_targets(self, requested: list[str], backend: str) -> Any:
        if list(requested) == ["all-linear"]:
            return list(UNSLOTH_TARGETS) if backend == "unsloth" else "all-linear"
        return list(requested)

    def example_length(self, example: dict[str, Any], tokenizer: Any) -> int:
        """Tokens of prompt + completion as TRL tokenizes them (EOS included)."""
        if isinstance(example["prompt"], list):
            out = render_chat(tokenizer, example["prompt"] + example["completion"], tokenize=True)
            ids = out["input_ids"] if hasattr(out, "keys") else out
            return len(ids)
        return len(tokenizer(example["prompt"] + example["completion"])["input_ids"]) + 1

    def args_class(self) -> Any:
        from trl import SFTConfig

        return SFTConfig

    def args_extras(self, cfg: Any, batching: str) -> dict[str, Any]:
        grouping = (
            {"packing": True}  # bfd packing turns padding-free batching on by itself
            if batching == "packing"
            else {"train_sampling_strategy": "group_by_length", "packing": False, "padding_free": False}
        )
        # rows are padded to the longest in their batch, not to max_length
        return {"max_length": cfg.model.max_length, **grouping}

    def trainer(self, *, model, args, data, eval_dataset, tokenizer, callbacks) -> Any:
        from trl import SFTTrainer

        # Prompt/completion data: TRL tokenizes it (chat rows with prodesc's fixed date), masks the
        # prompt (loss on the completion and its closing EOS only) and pads each batch.
        return SFTTrainer(
            model=model,
            args=args,
            train_dataset=with_fixed_date(data["train"]),
            eval_dataset=with_fixed_date(eval_dataset) if eval_dataset is not None else None,
            processing_class=tokenizer,
            callbacks=callbacks,
        )

    def new_tokens(self, generated: Any, prompt_length: int) -> Any:
        return generated[:, prompt_length:]


class Seq2SeqFamily(Family):
    name = "seq2seq"
    auto_class_name = "AutoModelForSeq2SeqLM"
    task_type = "SEQ_2_SEQ_LM"
    generation_padding_side = "right"  # the encoder reads the whole prompt; the decoder starts fresh
    unsloth = False  # Unsloth loads decoder-only models only
    tokens_counted = "encoder input (the prompt; non-padding)"

    def lora_targets(self, requested: list[str], backend: str) -> Any:
        return "all-linear" if list(requested) == ["all-linear"] else list(requested)

    def texts(self, example: dict[str, Any], tokenizer: Any) -> tuple[str, bool, str]:
        """(encoder text, whether the tokenizer adds its special tokens to it, decoder target).

        Text templates: the prompt as is (T5's tokenizer appends ``</s>``), exactly as generation
        tokenizes it. Chat templates (only for a tokenizer that has one): the rendered prompt with
        the assistant turn opened, and the reply's text as the target."""
        prompt, completion = example["prompt"], example["completion"]
        if isinstance(prompt, list):
            rendered = render_chat(tokenizer, prompt, add_generation_prompt=True, tokenize=False)
            return rendered, False, "".join(m["content"] for m in completion)
        return prompt, True, completion

    def encode(self, example: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
        """Encoder ``input_ids``/``attention_mask``; ``labels`` = the completion's tokens + EOS (the
        model builds its decoder inputs from them); ``length`` (both together) for length grouping."""
        source, special, target = self.texts(example, tokenizer)
        ids = tokenizer(source, add_special_tokens=special)["input_ids"]
        labels = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels,
                "length": len(ids) + len(labels)}

    def example_length(self, example: dict[str, Any], tokenizer: Any) -> int:
        """The longer of the encoder input and the labels: each must fit model.max_length."""
        enc = self.encode(example, tokenizer)
        return max(len(enc["input_ids"]), len(enc["labels"]))

    def args_class(self) -> Any:
        from transformers import Seq2SeqTrainingArguments

        return Seq2SeqTrainingArguments

    def args_extras(self, cfg: Any, batching: str) -> dict[str, Any]:
        # Packing is a decoder-only technique; batches are grouped by (encoder + decoder) length,
        # read from the `length` column, which the collator drops (so columns are not pruned).
        return {
            "train_sampling_strategy": "group_by_length",
            "length_column_name": "length",
            "remove_unused_columns": False,
        }

    def trainer(self, *, model, args, data, eval_dataset, tokenizer, callbacks) -> Any:
        from transformers import Seq2SeqTrainer

        def tokenized(ds: Any, split: str) -> Any:
            return ds.map(lambda ex: self.encode(ex, tokenizer), remove_columns=ds.column_names,
                          desc=f"tokenizing ({split})")

        return Seq2SeqTrainer(
            model=model,
            args=args,
            data_collator=self.collator(tokenizer),
            train_dataset=tokenized(data["train"], "train"),
            eval_dataset=tokenized(eval_dataset, "validation") if eval_dataset is not None else None,
            processing_class=tokenizer,
            callbacks=callbacks,
        )

    def collator(self, tokenizer: Any) -> Any:
        """Pads encoder inputs (right) and labels (with -100); drops the ``length`` column. No
        ``decoder_input_ids``: the model shifts the labels right itself."""
        from transformers import DataCollatorForSeq2Seq

        pad = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX, padding="longest")

        def collate(features: list[dict[str, Any]]) -> Any:
            return pad([{k: v for k, v in f.items() if k != "length"} for f in features])

        return collate

    def new_tokens(self, generated: Any, prompt_length: int) -> Any:
        return generated  # decoder output only (it starts with the decoder start token, a special)


CAUSAL = CausalFamily()
SEQ2SEQ = Seq2SeqFamily()
BY_NAME: dict[str, Family] = {f.name: f for f in (CAUSAL, SEQ2SEQ)}


# --------------------------------------------------------------------------- detection


def is_seq2seq_config(config: dict[str, Any]) -> bool:
    """An encoder-decoder model's config.json (``is_encoder_decoder``, or a known model_type)."""
    if "is_encoder_decoder" in config:
        return bool(config["is_encoder_decoder"])
    return str(config.get("model_type", "")).lower() in SEQ2SEQ_MODEL_TYPES


def read_model_config(model_path: str) -> dict[str, Any] | None:
    """config.json of a local model folder, or of a hub id (Hugging Face cache, else the hub);
    None when it cannot be read."""
    folder = Path(model_path).expanduser()
    if folder.is_dir():
        file = folder / "config.json"
    else:
        try:
            from huggingface_hub import hf_hub_download

            file = Path(hf_hub_download(model_path, "config.json"))
        except Exception:  # offline, unknown repo, bad id...: the loader reports it properly later
            return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def detect(model_path: str) -> Family | None:
    """The family a model's config.json describes, or None when it cannot be read."""
    config = read_model_config(model_path)
    if config is None:
        return None
    return SEQ2SEQ if is_seq2seq_config(config) else CAUSAL


def for_config(cfg: Any, model_path: str | None = None) -> Family:
    """``model.family``; for `auto`, detected from the config.json of ``model_path`` (default:
    ``model.name``). The embedded model is causal. Unreadable: causal, with a note to set it."""
    chosen = cfg.model.family
    if chosen != "auto":
        return BY_NAME[chosen]
    name = cfg.model.name.strip()
    if model_path is None and name == EMBEDDED_MODEL:
        return CAUSAL
    found = detect(str(model_path or name))
    if found is None:
        log(f"model.family=auto: cannot read the config.json of '{model_path or name}'; assuming a causal "
            "model (set model.family=seq2seq for an encoder-decoder model such as FLAN-T5)")
        return CAUSAL
    return found


def of_model(model: Any) -> Family:
    """The family of a loaded model (a PEFT model forwards ``config`` to its base model)."""
    config = getattr(model, "config", None)
    return SEQ2SEQ if getattr(config, "is_encoder_decoder", False) else CAUSAL
