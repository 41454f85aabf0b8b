"""Prompt templates: how a title becomes a prompt and a description becomes the completion.

A template is stored with the prepared data (``manifest.json``) so training, evaluation and the
demo use the identical prompt. Two kinds:

- ``chat``: conversational prompt/completion (a system and a user message, an assistant reply),
  rendered by the tokenizer's own chat template. TRL then trains only the completion and the
  closing end-of-turn token, so the model learns to stop.
- ``text``: plain strings; the completion is followed by the tokenizer's EOS token in training.

Your own template is a YAML file with the fields of :class:`PromptTemplate`, e.g.::

    kind: text
    prompt: "Product: {title}\\nDescription:"
    completion: " {content}"
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from prodesc.errors import ConfigError

if TYPE_CHECKING:
    from prodesc.config import Config
    from prodesc.paths import RunPaths


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    """Template name (or the YAML file's stem)."""
    kind: str
    """`chat` (messages, rendered by the tokenizer's chat template) or `text` (plain strings)."""
    prompt: str
    """The user message (chat) or the prompt text (text); must contain {title}."""
    completion: str = "{content}"
    """The assistant reply (chat) or the completion text (text); must contain {content}."""
    system: str = ""
    """The system message (chat only; empty = none)."""
    example_words: int = 0
    """Set from data.example_words by 01, not in a template file: with > 0 each title is followed
    by an example, the most similar training product's title and the first this many words of
    its description (:mod:`prodesc.retrieval`). 0 = the title alone."""

    def __post_init__(self) -> None:
        where = f"prompt template '{self.name}'"
        if self.kind not in ("chat", "text"):
            raise ConfigError(f"{where}: kind must be 'chat' or 'text', got {self.kind!r}")
        _check_fields(where, "prompt", self.prompt, {"title"}, required="title")
        _check_fields(where, "completion", self.completion, {"content"}, required="content")
        _check_fields(where, "system", self.system, set(), required=None)
        if self.kind == "text" and self.system:
            raise ConfigError(f"{where}: 'system' is only for kind: chat")
        if not isinstance(self.example_words, int) or self.example_words < 0:
            raise ConfigError(f"{where}: example_words must be a whole number >= 0, got {self.example_words!r}")

    def format_prompt(self, title: str, examples: Sequence[tuple[str, str]] = ()) -> Any:
        """The model input for ``title``: a list of messages (chat) or a string (text). With
        example_words, ``examples`` are the (title, cut description) pairs shown after it."""
        user = self.prompt.format(title=self.title_text(title, examples))
        if self.kind == "text":
            return user
        messages = [{"role": "system", "content": self.system}] if self.system else []
        return messages + [{"role": "user", "content": user}]

    def title_text(self, title: str, examples: Sequence[tuple[str, str]]) -> str:
        """What fills {title}: the title, followed by the examples when there are some."""
        if not self.example_words or not examples:
            return title
        shown = "\n\n".join(f"Title: {t}\nDescription: {d}" for t, d in examples)
        return f"{title}\n\n{EXAMPLE_INTRO}\n{shown}"

    def format_completion(self, content: str) -> Any:
        """The training target for ``content``, in the same form as :meth:`format_prompt`."""
        text = self.completion.format(content=content)
        if self.kind == "text":
            return text
        return [{"role": "assistant", "content": text}]

    @property
    def completion_prefix(self) -> str:
        """Fixed text the model writes before the description (stripped from generations)."""
        return self.completion.split("{content}", 1)[0]

    def extract(self, generated: str) -> str:
        """The description inside a generation: drops the completion's fixed prefix if present."""
        text = generated.strip()
        prefix = self.completion_prefix.strip()
        if prefix and text.startswith(prefix):
            text = text[len(prefix):].strip()
        return text

    def to_dict(self) -> dict[str, Any]:
        """The template as stored in manifests and adapters (and hashed into their identities)."""
        return asdict(self)


CHAT_DATE = "26 Jul 2024"
"""The date every chat prompt is rendered with (the chat template's ``date_string``). Llama 3.x
chat templates write a date into the system header: today's (``strftime_now``) unless one is
given, so a prompt would change from day to day between training (02), evaluation (03) and the
demo (04). This one is the date those templates fall back to when no clock is available; templates
without a date ignore it. Adapters are trained with it: do not change it."""

CHAT_TEMPLATE_KWARGS = "chat_template_kwargs"
"""The per-row column TRL (and Unsloth) pass to ``apply_chat_template`` when they render a
conversational example themselves (:func:`with_fixed_date`)."""


def render_chat(tokenizer: Any, messages: list[dict[str, str]], **kwargs: Any) -> Any:
    """``tokenizer.apply_chat_template(messages, **kwargs)`` with the fixed :data:`CHAT_DATE`:
    prodesc renders every chat prompt here, so the prompt never depends on the day."""
    return tokenizer.apply_chat_template(messages, date_string=CHAT_DATE, **kwargs)


def with_fixed_date(ds: Any) -> Any:
    """``ds`` (prompt/completion rows) as TRL's SFTTrainer renders it with :data:`CHAT_DATE`: for
    conversational rows, a :data:`CHAT_TEMPLATE_KWARGS` column holding the date; text rows as they are."""
    if not len(ds) or not isinstance(ds[0]["prompt"], list):
        return ds
    return ds.map(lambda _: {CHAT_TEMPLATE_KWARGS: {"date_string": CHAT_DATE}}, desc="fixed chat date")


def _check_fields(where: str, part: str, text: str, allowed: set[str], required: str | None) -> None:
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as err:
        raise ConfigError(f"{where}: {part} is not a valid format string ({err}); write {{{{ }}}} for braces") from None
    extra = names - allowed
    if extra:
        raise ConfigError(
            f"{where}: {part} uses {{{sorted(extra)[0]}}}; only {{{required}}} is available there"
            if required else f"{where}: {part} may not contain {{...}} fields"
        )
    if required and required not in names:
        raise ConfigError(f"{where}: {part} must contain {{{required}}}")


EXAMPLE_INTRO = "A similar product in the store, for reference:"
"""The line before the example (data.example_words)."""

SYSTEM = (
    "You write product descriptions for an online store. Given a product title, write the "
    "description that would appear on its product page."
)

BUILTIN: dict[str, PromptTemplate] = {
    t.name: t
    for t in (
        PromptTemplate(
            name="chat",
            kind="chat",
            system=SYSTEM,
            prompt="Product title: {title}",
        ),
        PromptTemplate(
            name="descfmt",
            kind="text",
            prompt=(
                "Based on the product title below, answer the question.\n"
                "Question: What is the complete product description?\n"
                "Title: {title}\n"
            ),
            completion="Description: {content}",
        ),
        PromptTemplate(
            name="alpaca",
            kind="text",
            prompt=(
                "Below is an instruction that describes a task, paired with an input that provides "
                "further context. Write a response that appropriately completes the request.\n\n"
                "### Instruction:\nWrite the product description for this product title.\n\n"
                "### Input:\n{title}\n\n### Response:\n"
            ),
        ),
        PromptTemplate(
            name="ptbr_qa",
            kind="text",
            prompt='Pergunta: Qual é a descrição do produto "{title}"?\nResposta: ',
        ),
    )
}


def template_for(cfg: "Config", paths: "RunPaths") -> PromptTemplate:
    """The template named by ``data.template`` (built-in, or a YAML file, relative = in the
    root), with ``data.example_words``."""
    spec = cfg.data.template
    if spec in BUILTIN:
        template = BUILTIN[spec]
    elif Path(spec).suffix not in (".yaml", ".yml"):
        raise ConfigError(
            f"unknown prompt template '{spec}' (data.template): choose one of "
            f"{', '.join(BUILTIN)} or give a path to a .yaml template file"
        )
    else:
        template = load_template_file(paths.inside_root(spec, "data.template"))
    return replace(template, example_words=cfg.data.example_words)


def load_template_file(path: Path) -> PromptTemplate:
    """Read your own template from a YAML file with the fields of :class:`PromptTemplate`."""
    if not path.is_file():
        raise ConfigError(f"prompt template file {path} not found (data.template)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"prompt template file {path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"prompt template file {path} must be a mapping of fields")
    if "example_words" in raw:
        raise ConfigError(f"prompt template file {path}: remove example_words and set data.example_words instead")
    return from_dict({"name": path.stem, **raw}, where=str(path))


def from_dict(raw: dict[str, Any], where: str = "template") -> PromptTemplate:
    """Rebuild a template (from a manifest or a YAML file), rejecting unknown fields."""
    known = {"name", "kind", "prompt", "completion", "system", "example_words"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown template field '{unknown[0]}' (known: {', '.join(sorted(known))})")
    for key, value in raw.items():
        if key == "example_words":
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{where}: template field '{key}' must be a whole number, got {value!r}")
        elif not isinstance(value, str):
            raise ConfigError(f"{where}: template field '{key}' must be text, got {value!r}")
    if "kind" not in raw or "prompt" not in raw:
        raise ConfigError(f"{where}: a template needs at least 'kind' and 'prompt'")
    return PromptTemplate(**raw)
