"""python src/04_quick_demo.py [--preset NAME] [--root DIR] [--no-base] [--titles-file F | --web [--share]] [key=value|TITLE...]

Write descriptions for your own product titles with the fine-tuned model, next to the base model's.

Titles: the positional arguments that are not key=value (quote each title), the lines of
--titles-file, else the lines of stdin when it is a pipe or a file, else an interactive prompt
(`title> `; an empty line or Ctrl-D ends it).

The weights are loaded once: the fine-tuned model is the base model + the LoRA adapter of
02_sft_qlora.py, and the base model's descriptions come from the same weights with the adapter
switched off (an 8B model in 16 bits, ~16 GB, fits an L4 once, not twice). With --no-base it is
runs/<run>/merged_fp16/ when 03_merge_fp16.py has written it (not older than the adapter). For each title
the fine-tuned description is streamed as it is generated, then both descriptions are shown side by
side (one after the other in a narrow terminal). Decoding: the eval.* decoding settings
(eval.max_new_tokens, eval.repetition_penalty, eval.do_sample, ...: `--list-keys`); `seed` is set
before every generation, so it fixes sampling. A model trained with data.example_words gets each
title with its example from the prepared training split, as in 03.

    python src/04_quick_demo.py "Acme Stainless Water Bottle 500 ml" eval.do_sample=true seed=7
    python src/04_quick_demo.py --titles-file my_titles.txt --no-base
    python src/04_quick_demo.py --web            # a web page; in Colab it prints a public link
"""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

from prodesc.cli import log, run_stage
from prodesc.config import Config
from prodesc.errors import UserError
from prodesc.paths import RunPaths
from prodesc.retrieval import titles_line

PROMPT = "title> "
SHOWN_TITLES = 256
"""Titles whose examples :meth:`Demo.examples_for` keeps (then it starts again)."""
MIN_COLUMN = 28
"""Narrower columns than this: the two descriptions are printed one after the other."""
GAP = " | "
BASE_HEADER = "base model"
TUNED_HEADER = "fine-tuned"


def main(argv: list[str] | None = None) -> int:
    return run_stage("04_quick_demo.py", __doc__, argv, _body, extra_args=add_arguments)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--titles-file", metavar="FILE", help="read titles from FILE, one per line")
    parser.add_argument("--no-base", action="store_true", help="skip the base model (faster)")
    web = parser.add_argument_group("web page (--web)")
    web.add_argument("--web", action="store_true",
                     help="serve a web page (Gradio) instead of the terminal demo; Ctrl-C stops it")
    web.add_argument("--share", action="store_true",
                     help="also make a public gradio.live link (on by default in Colab, where "
                          "the local address is not reachable from your browser)")
    web.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    web.add_argument("--port", type=int, default=None, help="port (default: 7860 or the next free one)")


def _body(cfg: Config, paths: RunPaths, args: argparse.Namespace) -> None:
    from prodesc import models
    from prodesc.generate import GenSettings

    template = models.adapter_template(paths)  # no adapter: "run 02_sft_qlora.py first"
    base_path = models.base_model_path(cfg, paths)
    models.check_same_base(models.adapter_base(paths), base_path, cfg.model.name)
    titles = None if args.web else given_titles(args)
    settings = replace(GenSettings.from_eval(cfg.eval), batch_size=1)
    demo = Demo(cfg, paths, base_path, template, settings, with_base=not args.no_base)
    if args.web:
        from prodesc import web
        from prodesc.paths import in_colab

        web.serve(demo, cfg, paths, share=args.share or in_colab(), port=args.port, host=args.host)
        return
    for title in titles if titles is not None else prompt_titles():
        demo.show(title)


# --------------------------------------------------------------------------- titles


def given_titles(args: argparse.Namespace) -> list[str] | None:
    """Titles from the arguments and --titles-file, else from a piped stdin; None: ask interactively."""
    titles = [t.strip() for t in args.words if t.strip()]
    if args.titles_file:
        titles += read_lines(Path(args.titles_file))
    if not titles and not args.titles_file:
        if stdin_is_tty():
            return None
        titles = [line.strip() for line in sys.stdin if line.strip()]
    if not titles:
        raise UserError(
            "no titles given: pass them as arguments (quoted), with --titles-file FILE, or on stdin"
        )
    return titles


def read_lines(path: Path) -> list[str]:
    try:
        text = path.expanduser().read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read --titles-file {path}: {err}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def stdin_is_tty() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def prompt_titles() -> Iterator[str]:
    """Ask for titles until an empty line or end of input."""
    print("Type a product title and press Enter (an empty line or Ctrl-D ends).", flush=True)
    while True:
        try:
            title = input(PROMPT).strip()
        except EOFError:
            print()
            return
        if not title:
            return
        yield title


# --------------------------------------------------------------------------- models


def tuned_source(paths: RunPaths) -> str:
    """``merged`` when merged_fp16/ holds a complete model not older than the adapter, else
    ``adapter``."""
    from prodesc import models

    if not models.is_model_dir(paths.merged):
        return "adapter"
    merged_time = (paths.merged / "config.json").stat().st_mtime
    adapter_time = max((p.stat().st_mtime for p in paths.adapter.iterdir() if p.is_file()), default=0.0)
    if adapter_time > merged_time:
        log(f"{paths.merged} is older than the adapter: using the adapter (03_merge_fp16.py updates it)")
        return "adapter"
    return "merged"


class Demo:
    """The loaded models and the settings; :meth:`show` prints one title's descriptions."""

    def __init__(self, cfg: Config, paths: RunPaths, base_path: str, template: Any, settings: Any,
                 with_base: bool = True) -> None:
        from prodesc import models
        from prodesc.generate import prepare_for_generation

        self.template = template
        self.settings = settings
        self.seed = cfg.seed
        self.examples = example_finder(cfg, paths, template)
        self.shown: dict[str, list[Any]] = {}  # title -> its examples: a request asks up to 3 times
        # One copy of the weights: with the base model shown, base + adapter (the base model is the
        # same weights with the adapter switched off), not the merged model and the base model.
        self.source = "adapter" if with_base else tuned_source(paths)
        folder = paths.merged if self.source == "merged" else paths.adapter
        self.tokenizer = prepare_for_generation(models.load_tokenizer(folder, cfg))
        self.base = None
        if self.source == "merged":
            log(f"fine-tuned model: {paths.merged}")
            self.tuned = models.load_model(paths.merged, cfg)
        else:
            log(f"fine-tuned model: {base_path} + the adapter {paths.adapter}"
                + ("; base model: the same weights with the adapter switched off" if with_base else ""))
            self.tuned = models.with_adapter(models.load_model(base_path, cfg), paths.adapter)
            if with_base:
                self.base = self.tuned
        self.stream = settings.streams
        if not self.stream:
            log("eval.num_beams > 1: the output is shown when complete (beam search cannot stream)")

    def generate(self, title: str, base: bool, settings: Any = None, seed: int | None = None,
                 streamer: Any = "terminal") -> str:
        """One description of ``title`` by the base or the fine-tuned model; ``settings`` and
        ``seed`` default to the config's. ``streamer``: "terminal" prints the fine-tuned tokens as
        they come (greedy or sampling), None prints nothing, or a transformers streamer."""
        from transformers import TextStreamer, set_seed

        from prodesc.generate import describe

        settings = settings or self.settings
        model = self.base if base else self.tuned
        off = model.disable_adapter() if base and self.source == "adapter" else nullcontext()
        if streamer == "terminal":
            streamer = None
            if not base and settings.streams:
                streamer = TextStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        set_seed(self.seed if seed is None else seed)
        with off:
            outputs = describe(
                model, self.tokenizer, self.template, [title], settings, [self.examples_for(title)],
                progress=False, streamer=streamer,
            )
        return outputs[0]

    def examples_for(self, title: str) -> list[Any]:
        """The examples shown with ``title`` (data.example_words; none when off), searched once
        per title: showing them and the two models' prompts ask for the same ones."""
        if self.examples is None:
            return []
        if title not in self.shown:
            if len(self.shown) >= SHOWN_TITLES:
                self.shown.clear()
            self.shown[title] = self.examples.examples(title)
        return self.shown[title]

    def show(self, title: str) -> None:
        print(f"\n=== {title}", flush=True)
        shown = self.examples_for(title)
        if shown:
            print(f"(example in the prompt: {titles_line(shown)})", flush=True)
        print(f"{TUNED_HEADER} (streaming):" if self.stream else f"{TUNED_HEADER}: generating...", flush=True)
        tuned = self.generate(title, base=False)
        print(flush=True)
        base = self.generate(title, base=True) if self.base is not None else None
        print(layout(tuned, base, terminal_width()), flush=True)


def example_finder(cfg: Config, paths: RunPaths, template: Any) -> Any:
    """With data.example_words, the prepared training split's titles and descriptions to find
    each title's examples in (:class:`prodesc.retrieval.ExampleFinder`); else None."""
    if not template.example_words:
        return None
    from prodesc.evaluation import check_examples
    from prodesc.prepared import open_prepared
    from prodesc.retrieval import ExampleFinder

    check_examples(cfg, template)
    try:
        _, data = open_prepared(paths, ("train",), ("title", "content"))
    except UserError as err:
        raise UserError(f"the adapter's prompt shows an example from the training split (data.example_words): {err}") from None
    train = data["train"]
    return ExampleFinder(train["title"], train["content"], template.example_words)


# --------------------------------------------------------------------------- layout


def terminal_width() -> int:
    return shutil.get_terminal_size((100, 24)).columns


def layout(tuned: str, base: str | None, width: int) -> str:
    """Base | fine-tuned in two wrapped columns, or one after the other when narrow or alone."""
    tuned = tuned or "(empty)"
    if base is None:
        return section(TUNED_HEADER, tuned, width)
    base = base or "(empty)"
    column = (width - len(GAP)) // 2
    if column < MIN_COLUMN:
        return section(BASE_HEADER, base, width) + "\n" + section(TUNED_HEADER, tuned, width)
    left = [BASE_HEADER, "-" * column, *wrap(base, column)]
    right = [TUNED_HEADER, "-" * column, *wrap(tuned, column)]
    rows = max(len(left), len(right))
    left += [""] * (rows - len(left))
    right += [""] * (rows - len(right))
    return "\n".join(f"{a:<{column}}{GAP}{b}".rstrip() for a, b in zip(left, right))


def section(header: str, text: str, width: int) -> str:
    width = max(width, 20)
    return "\n".join([f"--- {header} ---", *wrap(text, width)])


def wrap(text: str, width: int) -> list[str]:
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        lines += textwrap.wrap(paragraph, width, break_long_words=True, break_on_hyphens=False) or [""]
    return lines
