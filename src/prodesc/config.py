"""The one typed configuration of the pipeline.

Values come from three layers, later ones winning::

    dataclass defaults  <  a YAML preset (configs/<name>.yaml)  <  key=value overrides

Every key is typed; an unknown key or a value of the wrong type is a :class:`ConfigError` that
names the key and, where it can, the closest valid one. Ranges are checked in ``__post_init__``.
Each field carries a docstring (the string literal under it): :func:`field_docs` reads them, so
``--list-keys`` and the README's key table come from the same text.

This module imports only the standard library and PyYAML: ``--help`` and ``--print-config`` never
pull in torch.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import hashlib
import inspect
import json
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from prodesc.embedded import EMBEDDED_MODEL
from prodesc.errors import ConfigError
from prodesc.hardware import detect_gpu
from prodesc.retrieval import MAX_TRAIN_ROWS

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The checkout this package runs from (``src/prodesc`` → repo)."""

PRESETS_DIR = REPO_ROOT / "configs"
"""Shipped presets: ``configs/<name>.yaml``."""

RUN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
"""A run name is one plain folder name: it can never climb out of <root>/runs/."""



@dataclass
class ModelConfig:
    name: str = EMBEDDED_MODEL
    """Base model: `smollm2-135m-instruct` (embedded, offline), a Hugging Face id, or a local folder."""
    family: Literal["auto", "causal", "seq2seq"] = "auto"
    """`causal` (decoder-only: Llama, SmolLM2, ...) or `seq2seq` (encoder-decoder: FLAN-T5, BART);
    `auto` reads the model's config.json (is_encoder_decoder). It picks the model classes, the
    trainer and the collation; everything else is the same."""
    backend: Literal["auto", "unsloth", "hf"] = "auto"
    """`auto`: Unsloth on CUDA when importable, else transformers+PEFT; `unsloth` or `hf` to force one."""
    load_in_4bit: bool = False
    """Load the base weights in 4-bit NF4 (QLoRA, bitsandbytes). On CPU too, where it is no faster
    than float32 LoRA (the tests run the GPU presets' path there); ignored with a warning where
    bitsandbytes cannot run."""
    load_in_8bit: bool = False
    """Load the base weights in 8-bit (bitsandbytes LLM.int8), e.g. FLAN-T5 as in the 8-bit
    projects. On CPU too; ignored with a warning where bitsandbytes cannot run. Not with
    load_in_4bit."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Compute dtype: `auto` = float32 on CPU, bfloat16 where the GPU has it in hardware (L4,
    A100), else float16 (T4, whose bfloat16 is only emulated). 02, 03 and 04 all use it."""
    max_length: int = 512
    """Longest tokenized example (prompt + description; seq2seq: each of them) used in training;
    longer ones are dropped."""
    trust_remote_code: bool = False
    """Run model code from the hub. Off unless you trust the model's repository."""

    def __post_init__(self) -> None:
        _check(bool(self.name.strip()), "model.name", "must not be empty")
        _check(16 <= self.max_length <= 32768, "model.max_length", "must be between 16 and 32768")
        _check(self.family in ("auto", "causal", "seq2seq"), "model.family", "must be auto, causal or seq2seq")
        _check(
            not (self.load_in_4bit and self.load_in_8bit),
            "model.load_in_8bit",
            "cannot be combined with model.load_in_4bit: set one of them to false",
        )
        _check(
            not (self.family == "seq2seq" and self.backend == "unsloth"),
            "model.backend",
            "is unsloth, which cannot load encoder-decoder models (model.family=seq2seq): use auto or hf",
        )


@dataclass
class LoraConfig:
    r: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA branch. 0 keeps Unsloth's fast path and, on CPU, saves a copy of every
    adapted layer's input (measured: 3.1 GB vs 4.1 GB peak RSS at batch 4, and 12% faster)."""
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Modules to adapt: `all-linear` (every linear projection but the output head) or names."""

    def __post_init__(self) -> None:
        _check(self.r > 0, "lora.r", "must be > 0")
        _check(self.alpha > 0, "lora.alpha", "must be > 0")
        _check(0.0 <= self.dropout < 1.0, "lora.dropout", "must be in [0, 1)")
        _check(len(self.target_modules) > 0, "lora.target_modules", "must name at least one module")


@dataclass
class DataConfig:
    source: str = ""
    """Raw file (trn.json, trn.json.gz, JSON Lines or a JSON array), or the dataset's zip as
    downloaded (its trn.json is streamed out of it, nothing extracted). Empty: the one such file
    in <root>/data/raw/. `bundled`: the project's own sample. Relative paths are inside the root."""
    member: str = ""
    """The member of the zip data.source to read, e.g. `LF-AmazonTitles-1.3M/trn.json.gz` (a bare
    name matches in any folder, with or without .gz). Empty: trn.json or trn.json.gz."""
    test_source: str = ""
    """Take the test split from the dataset's own test file instead of from data.source: a file
    (like data.source), or the name of a member of data.source's zip (`tst.json`). Its rows are
    cleaned, filtered and deduplicated like the training file's; rows whose (title, content) pair is
    also in the train or validation split are dropped (and counted); data.test_size caps the rest.
    Empty: the test split is a seeded share of data.source."""
    name: str = ""
    """Folder name under <root>/data/prepared/. Empty: derived from the source, template and settings."""
    template: str = "chat"
    """Prompt template: `chat`, `descfmt`, `alpaca`, `ptbr_qa`, or a path to your own YAML template."""
    min_title_chars: int = 3
    """Drop rows whose cleaned title is shorter than this."""
    min_content_chars: int = 20
    """Drop rows whose cleaned description is shorter than this (this drops empty content)."""
    max_content_chars: int = 2000
    """Drop rows whose cleaned description is longer than this (0 = no limit)."""
    dedup: bool = True
    """Drop exact duplicate (title, content) pairs after cleaning."""
    drop_edition_note: bool = True
    """Cut Amazon's edition note out of every description while cleaning ("This text refers to an
    out of print or unavailable edition of this title.", "…to the Paperback edition."): boilerplate
    on about a third of the descriptions that a model otherwise learns to append to every title.
    Rows left with too short a description are then dropped, and descriptions that differed only
    in their note are duplicates. false keeps the note (with its spaces put back)."""
    drop_review_byline: bool = True
    """Cut the copyright line of a quoted trade review out of every description while cleaning
    ("Copyright 1991 Reed Business Information, Inc.": on about a sixth of the sample's
    descriptions). A model trained on it writes such a line under text it made up, a copyright
    claim no one made. Cut like the edition note: before the length filter and the duplicate check."""
    subsample: int = 0
    """Keep a seeded random N of the usable rows before splitting (0 = all)."""
    train_size: float = 10000
    """Training rows: a count (>= 1) or a fraction of the usable rows (< 1). 0 = all the rest."""
    validation_size: float = 1000
    """Validation rows: a count (>= 1) or a fraction (< 1)."""
    test_size: float = 1000
    """Test rows: a count (>= 1) or a fraction (< 1)."""
    max_malformed_fraction: float = 0.01
    """Stop with an error when more than this fraction of lines is unreadable JSON/UTF-8."""
    example_words: int = 0
    """Show each title with an example (0 = off): the training row whose title shares the most
    words with it (Jaccard; never the row itself), its title and the first this many words of
    its description. 01 stores each row's example with it (02 and 03 read it there); 04 and the
    web page search the prepared training split for a new title's, so they need the prepared
    data. Use eval.repetition_scope=output with it, or the repetition penalty pushes the model
    away from the example's words. At most 200,000 training rows."""
    def __post_init__(self) -> None:
        _check(
            not self.name or RUN_NAME.fullmatch(self.name) is not None,
            "data.name",
            f"'{self.name}' is not a plain folder name: use letters, digits, '.', '_' or '-' "
            "(no '/', no '..', not starting with '.')",
        )
        _check("\\" not in self.member, "data.member", "has a '\\': zip member names use '/' between folders")
        _check(self.min_title_chars >= 0, "data.min_title_chars", "must be >= 0")
        _check(self.min_content_chars >= 0, "data.min_content_chars", "must be >= 0")
        _check(self.max_content_chars >= 0, "data.max_content_chars", "must be >= 0 (0 = no limit)")
        _check(
            self.max_content_chars == 0 or self.max_content_chars >= self.min_content_chars,
            "data.max_content_chars",
            "must be >= data.min_content_chars",
        )
        _check(self.subsample >= 0, "data.subsample", "must be >= 0 (0 = all rows)")
        for key in ("train_size", "validation_size", "test_size"):
            value = getattr(self, key)
            _check(value >= 0, f"data.{key}", "must be a count >= 1 or a fraction in (0, 1)")
            _check(value < 1 or float(value).is_integer(), f"data.{key}", "a count must be whole")
        _check(self.test_size > 0, "data.test_size", "must be > 0: evaluation needs test rows")
        fractions = [getattr(self, k) for k in ("train_size", "validation_size", "test_size")]
        _check(
            sum(v for v in fractions if v < 1) <= 1.0,
            "data.train_size",
            "the split fractions add up to more than 1",
        )
        _check(
            0.0 <= self.max_malformed_fraction <= 1.0, "data.max_malformed_fraction", "must be in [0, 1]"
        )
        _check(self.example_words >= 0, "data.example_words", "must be >= 0 (0 = no example)")
        _check(  # caught here, before 01 reads the file; a fraction or 0 is checked once counted
            not self.example_words or self.train_size < 1 or self.train_size <= MAX_TRAIN_ROWS,
            "data.train_size",
            f"is {self.train_size:,.0f} but data.example_words compares every title with every training "
            f"title: set data.train_size to at most {MAX_TRAIN_ROWS:,}, or data.example_words=0",
        )


@dataclass
class TrainConfig:
    epochs: float = 1.0
    """Passes over the training split (ignored when max_steps > 0)."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1 = use epochs)."""
    batch_size: int = 8
    """Examples per device per step."""
    grad_accum: int = 1
    """Gradient accumulation steps (effective batch = batch_size x grad_accum x devices)."""
    learning_rate: float = 2e-4
    """Peak learning rate."""
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    """Learning-rate schedule after warmup."""
    warmup: float = 0.05
    """Warmup: a fraction of the steps (< 1) or a number of steps (>= 1)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    optim: Literal["adamw_torch_fused", "adamw_8bit"] = "adamw_torch_fused"
    """The optimizer, the same on both backends (Unsloth would pick adamw_8bit by itself):
    `adamw_torch_fused` (torch's AdamW, fused; what transformers uses by default) or `adamw_8bit`
    (bitsandbytes' 8-bit AdamW: its two states take a quarter of the memory; also runs on CPU)."""
    overlong: Literal["drop", "truncate"] = "drop"
    """A training example longer than model.max_length: `drop` it (every kept example ends with its
    end token, so the model learns when to stop, but only from the shorter descriptions) or
    `truncate` it (decoder-only models: long descriptions are kept, cut at max_length without an end
    token, which tells the model that a description may go on)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Training precision: `auto` = fp32 on CPU; on a GPU the compute dtype's (model.dtype: bf16
    where the GPU has it in hardware, else fp16)."""
    gradient_checkpointing: bool = False
    """Trade compute for memory (on for the GPU presets, off on CPU where it only slows down)."""
    save_steps: int = 50
    """Write a checkpoint every N steps."""
    save_total_limit: int = 2
    """Keep at most this many checkpoints in the run."""
    eval_steps: int = 50
    """Validation loss every N steps (0 = only at the end)."""
    logging_steps: int = 5
    """Log the training loss every N steps."""
    seed: int = -1
    """Seed of LoRA's random init, dropout and the order of the training batches (-1 = the run's
    `seed`). Another value trains again on the same split and examples, to see how far a score
    moves from one training to the next."""

    def __post_init__(self) -> None:
        _check(self.epochs > 0, "train.epochs", "must be > 0")
        _check(self.seed >= -1, "train.seed", "must be -1 (the run's seed) or >= 0")
        _check(self.max_steps == -1 or self.max_steps > 0, "train.max_steps", "must be -1 or > 0")
        _check(self.batch_size > 0, "train.batch_size", "must be > 0")
        _check(self.grad_accum > 0, "train.grad_accum", "must be > 0")
        _check(0 < self.learning_rate < 1, "train.learning_rate", "must be in (0, 1)")
        _check(self.warmup >= 0, "train.warmup", "must be >= 0")
        _check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _check(self.save_steps > 0, "train.save_steps", "must be > 0")
        _check(self.save_total_limit > 0, "train.save_total_limit", "must be > 0")
        _check(self.eval_steps >= 0, "train.eval_steps", "must be >= 0")
        _check(self.logging_steps > 0, "train.logging_steps", "must be > 0")


@dataclass(frozen=True)
class PageControl:
    """How the web page (04 --web) shows a decoding knob: a checkbox for a bool, else a slider from
    ``low`` to ``high`` in ``step``s (stretched to hold the configured value)."""

    label: str
    low: float = 0
    high: float = 1
    step: float = 1


def knob(default: Any, page: PageControl | None) -> Any:
    """A field of :class:`DecodingConfig`; ``page=None`` keeps it off the web page (as configured)."""
    return field(default=default, metadata={"page": page})


@dataclass
class DecodingConfig:
    """The decoding knobs, declared once: they are ``eval.*`` keys (:class:`EvalConfig` extends this),
    the fields of ``prodesc.generate.GenSettings`` (which extends it too) and the web page's controls
    (each field's ``page``)."""

    max_new_tokens: int = knob(160, PageControl("max new tokens", 8, 512, 8))
    """Longest generated description, in tokens."""
    min_new_tokens: int = knob(0, PageControl("min new tokens (0 = off)", 0, 256, 8))
    """Shortest generated description, in tokens: the end token is blocked until then (0 = off).
    For a model that stops too early; below eval.max_new_tokens."""
    num_beams: int = knob(1, PageControl("beams (1 = no beam search)", 1, 8, 1))
    """Beam search width (1 = greedy or sampling)."""
    do_sample: bool = knob(False, PageControl("sample (off = greedy or beam search)"))
    """Sample instead of greedy/beam decoding."""
    temperature: float = knob(1.0, PageControl("temperature (sampling)", 0.05, 2.0, 0.05))
    """Sampling temperature (with eval.do_sample)."""
    top_p: float = knob(1.0, PageControl("top-p (sampling)", 0.05, 1.0, 0.05))
    """Nucleus sampling mass (with eval.do_sample)."""
    top_k: int = knob(50, PageControl("top-k (sampling; 0 = off)", 0, 200, 1))
    """Top-k sampling cutoff (with eval.do_sample; 0 = off)."""
    repetition_penalty: float = knob(1.0, PageControl("repetition penalty", 1.0, 2.0, 0.05))
    """Penalty > 1 discourages repeating tokens."""
    repetition_scope: Literal["all", "output"] = knob("all", None)  # not on the page: as configured
    """What eval.repetition_penalty counts as already written. `all`: the prompt (system message,
    template words and title) and the output, as transformers does, which also discourages echoing
    the title. `output`: only the generated text; the prompt's end tokens stay penalised as under
    `all`, so the length is not changed by this choice. Decoder-only models; an encoder-decoder
    model never penalises its prompt."""
    no_repeat_ngram_size: int = knob(0, PageControl("no repeated n-grams of size (0 = off)", 0, 8, 1))
    """Forbid repeating any n-gram of this size (0 = off)."""
    stop_at_turn: bool = knob(True, PageControl("stop at the chat format's turn tokens, as at its end token"))
    """End a description at any special token of the tokenizer's chat format (a turn's start or
    end, e.g. SmolLM2's <|im_start|>), not only at EOS. Off, a model whose EOS eval.min_new_tokens
    holds back writes that token instead and then a made-up next turn ("user\nWhat are some other
    books…"), which decoding hides as plain text. No effect for a tokenizer without a chat template."""

    def __post_init__(self) -> None:
        _check(self.max_new_tokens > 0, "eval.max_new_tokens", "must be > 0")
        _check(0 <= self.min_new_tokens < self.max_new_tokens, "eval.min_new_tokens",
               f"must be >= 0 and below eval.max_new_tokens ({self.max_new_tokens})")
        _check(self.num_beams > 0, "eval.num_beams", "must be > 0")
        _check(self.temperature > 0, "eval.temperature", "must be > 0")
        _check(0 < self.top_p <= 1, "eval.top_p", "must be in (0, 1]")
        _check(self.top_k >= 0, "eval.top_k", "must be >= 0")
        _check(self.repetition_penalty > 0, "eval.repetition_penalty", "must be > 0")
        _check(self.no_repeat_ngram_size >= 0, "eval.no_repeat_ngram_size", "must be >= 0")


@dataclass
class EvalConfig(DecodingConfig):
    split: Literal["test", "validation"] = "test"
    """Split 03 evaluates: `test` (the reported figures, in runs/<run>/eval/) or `validation` (to
    choose decoding settings and checkpoints without looking at the test rows; written to
    runs/<run>/eval_validation/)."""
    rows: Union[int, Literal["all"]] = 200
    """Rows of eval.split to evaluate (seed-fixed sample), or `all`."""
    batch_size: int = 16
    """Prompts generated together (left padding)."""
    tuned: Literal["merged", "adapter"] = "merged"
    """The fine-tuned model 03 evaluates. `merged`: it merges the adapter into the 16-bit base,
    writes runs/<run>/merged_fp16/ (checked against the adapter) and evaluates that. `adapter`: the
    base model + the adapter, and no merged model is written: the 8B presets' choice (merged in
    bf16 they take ~16 GB, more than a free 15 GB Google Drive holds)."""
    checkpoints: list[str] = field(default_factory=list)
    """Extra checkpoints of the run to compare (folder names under checkpoints/, e.g. checkpoint-100)."""
    compare_runs: list[str] = field(default_factory=list)
    """Other runs (names under <root>/runs/) whose fine-tuned outputs join this run's CSV, metrics
    and report, e.g. a causal and a seq2seq model side by side. Each must have been evaluated by 03
    on the same test rows (same data settings, seed and eval.rows; the template may differ)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.rows == "all" or self.rows > 0, "eval.rows", "must be > 0 or `all`")
        for run in self.compare_runs:
            _check(RUN_NAME.fullmatch(run) is not None, "eval.compare_runs",
                   f"names '{run}', which is not a run name (a folder under <root>/runs/)")
        _check(self.batch_size > 0, "eval.batch_size", "must be > 0")


HUB_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
"""A Hugging Face repository id: `user/name` (or `organization/name`)."""


@dataclass
class ExportConfig:
    gguf: list[Literal["f16", "q8_0", "q4_k_m"]] = field(default_factory=lambda: ["f16", "q8_0"])
    """GGUF files 05 writes to runs/<run>/export/ for llama.cpp, Ollama and LM Studio: `f16`
    (checked to give the merged model's greedy outputs), `q8_0` (half the size), `q4_k_m` (needs
    llama.cpp's llama-quantize on PATH). The Ollama Modelfile uses the smallest. Empty: no GGUF."""

    def __post_init__(self) -> None:
        _check(len(set(self.gguf)) == len(self.gguf), "export.gguf", "names a type twice")


@dataclass
class HubConfig:
    repo: str = ""
    """Push the run to this Hugging Face Hub repository (`user/name`) at the end of 05: the
    adapter, a model card (README.md), and what hub.merged and hub.gguf add. Empty: no push. The
    token comes from $HF_TOKEN or Colab's secret HF_TOKEN (write access), never from the config."""
    private: bool = True
    """Create the repository private (a repository that exists keeps its visibility)."""
    merged: bool = False
    """Also push the merged model (merged_fp16/, under merged/: ~2 bytes a parameter, 16 GB for 8B)."""
    gguf: bool = True
    """Also push the GGUF files of export.gguf and the Ollama Modelfile (under gguf/)."""

    def __post_init__(self) -> None:
        _check(
            not self.repo or (HUB_REPO.fullmatch(self.repo) is not None and ".." not in self.repo),
            "hub.repo",
            f"'{self.repo}' is not a Hub repository id: write it as user/name (letters, digits, '.', '_', '-')",
        )


@dataclass
class PathsConfig:
    root: str = ""
    """Artifact root. Empty: --root, else $PRODESC_ROOT, else Drive in Colab, else ./artifacts."""
    run: str = ""
    """Run name: the folder under <root>/runs/. Empty: the preset's name."""

    def __post_init__(self) -> None:
        _check(
            not self.run or RUN_NAME.fullmatch(self.run) is not None,
            "paths.run",
            f"'{self.run}' is not a plain folder name: use letters, digits, '.', '_' or '-' "
            "(no '/', no '..', not starting with '.')",
        )


@dataclass
class Config:
    preset: str = ""
    """The preset this config was loaded from (set by the loader)."""
    seed: int = 42
    """Seed for splits, sampling, and (unless train.seed is set) LoRA init and data order."""
    overwrite: bool = False
    """Redo a stage whose output exists (the old output is replaced only once the new one is complete)."""
    resume: str = "auto"
    """Training: `auto` (newest complete checkpoint of the run), `no`, or a checkpoint folder."""
    unlock: bool = False
    """02/03: take the run's lock from a runtime you know is gone (never from a process running here)."""
    quick: bool = False
    """A first run of a few minutes on any preset: `quick_steps` training steps on a small
    subsample of the data (`quick_rows` validation and test rows, quick_steps x the batch for
    training), `quick_rows` evaluated rows, and a run and prepared data of its own (run name +
    `-quick`), so it never mixes with the full run. Settings given on the command line still win.
    02 estimates the full run's time from the measured step time."""
    quick_steps: int = 30
    """Training steps of a `quick` run."""
    quick_rows: int = 50
    """Validation, test and evaluated rows of a `quick` run."""
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)

    full_run = None
    """For a ``quick`` run: the Config of the full run it stands in for (set by :func:`load_config`;
    not a key). 02 estimates that run's time from the quick run's step time."""

    def __post_init__(self) -> None:
        _check(self.quick_steps > 0, "quick_steps", "must be > 0")
        _check(self.quick_rows > 0, "quick_rows", "must be > 0")

    @property
    def run_name(self) -> str:
        return self.paths.run or self.preset or "default"

    @property
    def train_seed(self) -> int:
        """The seed of LoRA's init, dropout and batch order: train.seed, or the run's seed."""
        return self.seed if self.train.seed < 0 else self.train.seed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=100)

    def fingerprint(self, section: str) -> str:
        """A stable hash of one section's values (used to name and validate artifacts)."""
        blob = json.dumps(dataclasses.asdict(getattr(self, section)), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


SECTIONS: dict[str, type] = {
    name: hint
    for name, hint in typing.get_type_hints(Config).items()
    if dataclasses.is_dataclass(hint)
}


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' {message}")


# --------------------------------------------------------------------------- field docs


@functools.cache
def field_docs() -> dict[str, str]:
    """``{"section.key": docstring}`` read from the attribute docstrings in this module."""
    tree = ast.parse(inspect.getsource(sys.modules[__name__]))
    docs: dict[str, str] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef) or not node.name.endswith("Config"):
            continue
        sections = [""] if node.name == "Config" else _sections_of(node.name)
        body = node.body
        for stmt, nxt in zip(body, body[1:]):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                for section in sections:
                    key = f"{section}.{stmt.target.id}" if section else stmt.target.id
                    docs[key] = " ".join(nxt.value.value.split())
    return docs


def _sections_of(class_name: str) -> list[str]:
    """The sections whose class is ``class_name`` or extends it (DecodingConfig: eval)."""
    return [name for name, cls in SECTIONS.items() if class_name in (c.__name__ for c in cls.__mro__)]


def list_keys() -> str:
    """Every settable key with its type, default and docstring, one per line."""
    docs = field_docs()
    default = Config()
    lines = []
    for key, (tp, value) in _flat_schema(default).items():
        if key == "preset":
            continue
        lines.append(f"{key} = {_show(value)}  [{_type_name(tp)}]\n    {docs.get(key, '')}")
    return "\n".join(lines)


def keys_markdown() -> str:
    """docs/keys.md: the key reference as a Markdown table (key, type, default, meaning), from the
    same docstrings as --list-keys. Regenerate with ``make docs``; a test checks it is current."""
    docs = field_docs()
    lines = [
        "# Configuration keys",
        "",
        "Generated from `src/prodesc/config.py` by `make docs` (the same text as `--list-keys`). Set a key",
        "with `key=value` on any script's command line or in a preset YAML: [configuration.md](configuration.md).",
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for key, (tp, value) in _flat_schema(Config()).items():
        if key != "preset":
            cells = (f"`{key}`", _type_name(tp), f"`{_show(value)}`", docs.get(key, ""))
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _flat_schema(cfg: Config) -> dict[str, tuple[Any, Any]]:
    out: dict[str, tuple[Any, Any]] = {}
    for name, hint in typing.get_type_hints(Config).items():
        value = getattr(cfg, name)
        if dataclasses.is_dataclass(hint):
            for sub, subhint in typing.get_type_hints(hint).items():
                out[f"{name}.{sub}"] = (subhint, getattr(value, sub))
        else:
            out[name] = (hint, value)
    return out


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(str(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _show(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()


# --------------------------------------------------------------------------- coercion

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(key: str, value: Any, tp: Any, from_text: bool) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError naming ``key``.

    ``from_text`` is set for command-line overrides, whose values arrive as strings.
    """
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for arm in typing.get_args(tp):
            try:
                return _coerce(key, value, arm, from_text)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(f"config key '{key}' expects {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise ConfigError(
            f"config key '{key}' must be one of {', '.join(map(str, choices))}; got {value!r}"
        )
    if origin is list:
        (elem,) = typing.get_args(tp)
        if from_text and isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                value = yaml.safe_load(text)
            else:
                value = [part.strip() for part in text.split(",") if part.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        return [_coerce(key, v, elem, from_text) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_text and isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"config key '{key}' expects true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_text and isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}' expects a whole number, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}' expects a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if from_text:
            return str(value)
        raise ConfigError(f"config key '{key}' expects text, got {value!r} (quote it in YAML)")
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # a bug in this module


ALIASES = {
    "lr": "train.learning_rate",
    "learning_rate": "train.learning_rate",
    "max_seq_length": "model.max_length",
    "max_length": "model.max_length",
    "num_train_epochs": "train.epochs",
    "epochs": "train.epochs",
    "max_steps": "train.max_steps",
    "per_device_train_batch_size": "train.batch_size",
    "gradient_accumulation_steps": "train.grad_accum",
    "lora_r": "lora.r",
    "lora_alpha": "lora.alpha",
    "model_name": "model.name",
    "run_name": "paths.run",
    "root": "paths.root",
}
"""Names people bring from other tools, mapped to ours (only used to suggest the right key)."""


def _unknown(key: str, known: list[str]) -> ConfigError:
    last = key.rsplit(".", 1)[-1]
    if last in ALIASES and ALIASES[last] in known:
        return ConfigError(f"unknown config key '{key}'; did you mean '{ALIASES[last]}'?")
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else "; run with --list-keys to see them all"
    return ConfigError(f"unknown config key '{key}'{hint}")


def _apply(tree: dict[str, dict[str, Any]], key: str, value: Any, from_text: bool) -> None:
    """Set dotted ``key`` in the nested dict ``tree`` after checking it exists and its type."""
    schema = _flat_schema(Config())
    if key not in schema or key == "preset":
        raise _unknown(key, [k for k in schema if k != "preset"])
    tp, _ = schema[key]
    coerced = _coerce(key, value, tp, from_text)
    if "." in key:
        section, sub = key.split(".", 1)
        tree[section][sub] = coerced
    else:
        tree[key] = coerced


def _flatten(mapping: dict[str, Any], where: str) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for k, v in mapping.items():
        if not isinstance(k, str):
            raise ConfigError(f"{where}: key {k!r} is not text")
        if k in SECTIONS:
            if not isinstance(v, dict):
                raise ConfigError(f"{where}: '{k}' must be a mapping of keys, got {v!r}")
            items.extend((f"{k}.{sk}", sv) for sk, sv in v.items())
        else:
            items.append((k, v))
    return items


# --------------------------------------------------------------------------- presets


def preset_names() -> list[str]:
    """The shipped presets; a file whose name starts with `_` is a base that presets build on."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml") if not p.stem.startswith("_"))


BASE_KEY = "base"
"""A preset file's first key may name a shipped preset or base (`base: _gpu`): its values are
loaded first, and the file holds only what differs."""


def preset_items(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[str, Any]]:
    """``(dotted key, value)`` of a preset file, its base's first (see :data:`BASE_KEY`)."""
    data = read_yaml(path)
    base = data.pop(BASE_KEY, None)
    items: list[tuple[str, Any]] = []
    if base is not None:
        base_path = PRESETS_DIR / f"{base}.yaml"
        if not isinstance(base, str) or not base_path.is_file():
            raise ConfigError(f"{path}: base {base!r} is not a file in {PRESETS_DIR}: name one of its .yaml files")
        if base_path.resolve() in seen:
            raise ConfigError(f"{path}: base '{base}' leads back to itself")
        items = preset_items(base_path, (*seen, Path(path).resolve()))
    return items + _flatten(data, str(path))


def preset_path(preset: str) -> Path:
    """A shipped preset name, or a path to a YAML file."""
    candidate = Path(preset).expanduser()
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise ConfigError(f"preset file {candidate} not found: give a path to a YAML file")
        return candidate
    path = PRESETS_DIR / f"{preset}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown preset '{preset}': choose one of {', '.join(preset_names())} "
            "or give a path to a .yaml file"
        )
    return path


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path} is not valid YAML ({problem}{where}): fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, not {type(data).__name__}")
    return data


def preset_for_hardware(gpu: tuple[str, float] | None) -> str:
    """No GPU → `cpu`; < 20 GiB (T4 16 GB) → `t4`; < 40 GiB (L4 24 GB) → `l4`; else `a100`."""
    if gpu is None:
        return "cpu"
    _, mem = gpu
    if mem < 20:
        return "t4"
    if mem < 40:
        return "l4"
    return "a100"


def load_config(
    preset: str | None = None, overrides: list[str] | tuple[str, ...] = (), announce=None
) -> Config:
    """defaults < preset YAML < ``key=value`` overrides → a validated :class:`Config`.

    With no preset, one is chosen for the hardware and the choice is passed to ``announce``.
    """
    if not preset:
        gpu = detect_gpu()
        preset = preset_for_hardware(gpu)
        if announce:
            what = f"GPU {gpu[0]} ({gpu[1]:.0f} GiB)" if gpu else "no GPU"
            announce(f"no --preset given: found {what}, using preset '{preset}'")
    path = preset_path(preset)
    tree = Config().to_dict()
    for key, value in preset_items(path):
        _apply(tree, key, value, from_text=False)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not key=value (e.g. train.learning_rate=1e-4)")
        _apply(tree, key.strip(), value.strip(), from_text=True)
    tree["preset"] = path.stem
    if not tree["quick"]:
        return from_dict(tree)
    full = from_dict({**tree, "quick": False})
    quick_tree = full.to_dict()
    quick_tree["quick"] = True
    _apply_quick(quick_tree)
    for item in overrides:  # what the user asked for wins over the quick settings
        key, _, value = item.partition("=")
        _apply(quick_tree, key.strip(), value.strip(), from_text=True)
    run = quick_tree["paths"]["run"] or full.run_name
    quick_tree["paths"]["run"] = run if run.endswith("-quick") else f"{run}-quick"
    cfg = from_dict(quick_tree)
    cfg.full_run = full
    return cfg


def _apply_quick(tree: dict[str, Any]) -> None:
    """Turn a full run's settings (nested dict) into its ``quick`` run's."""
    steps, rows = tree["quick_steps"], tree["quick_rows"]
    train, data = tree["train"], tree["data"]
    train_rows = steps * train["batch_size"] * train["grad_accum"]
    data.update(subsample=train_rows + 2 * rows, train_size=0.0,
                validation_size=float(rows), test_size=float(rows))
    train.update(max_steps=steps, save_steps=min(train["save_steps"], max(1, steps // 3)),
                 eval_steps=0, logging_steps=min(train["logging_steps"], max(1, steps // 10)))
    evaluated = tree["eval"]["rows"]
    tree["eval"]["rows"] = rows if evaluated == "all" else min(evaluated, rows)


def from_dict(tree: dict[str, Any]) -> Config:
    """Build a Config from a (complete or partial) nested dict, checking every key and type."""
    base = Config().to_dict()
    for key, value in _flatten(tree, "config"):
        if key == "preset":
            base["preset"] = _coerce(key, value, str, False)
        else:
            _apply(base, key, value, from_text=False)
    sections = {name: cls(**base[name]) for name, cls in SECTIONS.items()}
    scalars = {k: v for k, v in base.items() if k not in SECTIONS}
    return Config(**scalars, **sections)
