"""The web page of ``04_quick_demo.py --web``: a Gradio app over the demo's loaded models.

A title box, the decoding knobs (:data:`KNOBS`, declared in ``prodesc.config.DecodingConfig``) plus
the seed, and the base and fine-tuned descriptions side by side; the fine-tuned one streams in as it
is generated (greedy or sampling; beam search shows it when done). Example titles come from the
test split of the prepared data. A model trained with data.example_words sees each title with an
example (the most similar product of the training split): the page shows it under the descriptions.

The page calls :meth:`prodesc.demo.Demo.generate`, the same code as the command line, so a title
gives the same description on both. gradio is imported inside the functions only.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

from prodesc.cli import log
from prodesc.config import Config, DecodingConfig, PageControl
from prodesc.errors import ConfigError
from prodesc.paths import RunPaths

EXAMPLES = 8
"""How many test-split titles the page offers as examples."""
STREAM_TIMEOUT_S = 600.0
"""A generation that yields no token for this long is reported as stuck."""
NO_BASE = "(base model not loaded: started with --no-base)"


KNOBS: dict[str, PageControl] = {
    **{f.name: f.metadata["page"] for f in dataclasses.fields(DecodingConfig) if f.metadata["page"]},
    "seed": PageControl("seed (fixes sampling)"),
}
"""The page's controls in order: the decoding knobs :class:`DecodingConfig` puts on the page, the seed."""


def example_titles(paths: RunPaths, count: int = EXAMPLES) -> list[str]:
    """The first ``count`` titles of the prepared test split; none (and a log line) when there is
    no prepared data: the page works without examples."""
    from prodesc.errors import UserError
    from prodesc.prepared import open_prepared

    try:
        _, data = open_prepared(paths, ("test",), ("title",))
    except UserError as err:
        log(f"no example titles on the page: {err}")
        return []
    test = data["test"]
    return [str(t) for t in test.select(range(min(count, len(test))))["title"]]


def settings_from(cfg: Config, values: dict[str, Any]) -> tuple[Any, int]:
    """(GenSettings, seed) from the page's knob values, checked by the config's own validation;
    a bad combination raises :class:`ConfigError` with the config's message."""
    from prodesc.generate import GenSettings

    seed = int(values.pop("seed"))
    typed = {name: type(getattr(cfg.eval, name))(value) for name, value in values.items()}
    settings = GenSettings.from_eval(cfg.eval)
    return dataclasses.replace(settings, batch_size=1, **typed), seed  # runs the config's checks


def example_text(demo: Any, title: str) -> str:
    """The examples ``demo`` puts in ``title``'s prompt (data.example_words), as the page shows
    them: each one's title, a blank line, the words of its description the model reads, a blank
    line between them; "" when none."""
    return "\n\n".join(f"{t}\n\n{d}" for t, d in demo.examples_for(title.strip()))


class Describer:
    """Turns one page request into (base, fine-tuned) texts, streaming the fine-tuned one."""

    def __init__(self, demo: Any, cfg: Config) -> None:
        self.demo = demo
        self.cfg = cfg
        self.lock = threading.Lock()  # one generation at a time: the models are shared

    def __call__(self, title: str, *knob_values: Any) -> Iterator[tuple[str, str]]:
        import gradio as gr

        title = (title or "").strip()
        if not title:
            raise gr.Error("Type a product title first.")
        try:
            settings, seed = settings_from(self.cfg, dict(zip(KNOBS, knob_values)))
        except (ConfigError, ValueError, TypeError) as err:
            raise gr.Error(str(err)) from None
        with self.lock:
            base = "" if self.demo.base is not None else NO_BASE
            tuned = ""
            for tuned in self.tuned_pieces(title, settings, seed):
                yield base, tuned
            if self.demo.base is not None:
                yield "(generating...)", tuned
                base = self.demo.generate(title, base=True, settings=settings, seed=seed, streamer=None)
            yield base or "(empty)", tuned or "(empty)"

    def tuned_pieces(self, title: str, settings: Any, seed: int) -> Iterator[str]:
        """The fine-tuned text as it grows, then the final (template-extracted) text."""
        if not settings.streams:
            yield self.demo.generate(title, base=False, settings=settings, seed=seed, streamer=None)
            return
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(
            self.demo.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=STREAM_TIMEOUT_S
        )
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                result["text"] = self.demo.generate(
                    title, base=False, settings=settings, seed=seed, streamer=streamer
                )
            except BaseException as err:  # handed to the page below
                result["error"] = err
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        text = ""
        for piece in streamer:
            text += piece
            yield text
        thread.join()
        if "error" in result:
            raise result["error"]
        yield result["text"]


def build_app(demo: Any, cfg: Config, examples: list[str]) -> Any:
    """The Gradio Blocks app (not launched)."""
    import gradio as gr

    describer = Describer(demo, cfg)
    with_example = demo.examples is not None  # data.example_words: show what the prompt holds

    def describe(title: str, *knob_values: Any) -> Iterator[tuple[str, ...]]:
        shown = example_text(demo, title or "") if with_example else ""
        for pair in describer(title, *knob_values):  # gradio streams only a generator *function*
            yield (*pair, shown) if with_example else pair

    with gr.Blocks(title="prodesc demo", analytics_enabled=False) as app:
        gr.Markdown(
            f"## Product descriptions from titles\nRun **{cfg.run_name}**: the base model and the "
            f"fine-tuned one ({demo.source}) get the same title and decoding settings."
        )
        with gr.Row():
            title = gr.Textbox(label="product title", elem_id="title", scale=4,
                               placeholder="e.g. Stainless Steel Garlic Press with Cleaning Brush")
            go = gr.Button("Describe", variant="primary", elem_id="describe", scale=1)
        with gr.Row():
            base = gr.Textbox(label="base model", elem_id="base-output", lines=8, interactive=False)
            tuned = gr.Textbox(label="fine-tuned", elem_id="tuned-output", lines=8, interactive=False)
        outputs = [base, tuned]
        if with_example:
            outputs.append(gr.Textbox(
                label="example in the prompt: the most similar training product (data.example_words)",
                elem_id="example-output", lines=3, interactive=False,
            ))
        with gr.Accordion("decoding settings", open=False):
            knobs = [knob_component(name, control, cfg) for name, control in KNOBS.items()]
        if examples:
            gr.Examples(examples=[[t] for t in examples], inputs=[title], label="titles from the test split")
        go.click(describe, inputs=[title, *knobs], outputs=outputs)
        title.submit(describe, inputs=[title, *knobs], outputs=outputs)
    return app


def knob_component(name: str, control: PageControl, cfg: Config) -> Any:
    import gradio as gr

    elem_id = f"knob-{name}"
    if name == "seed":
        return gr.Number(value=cfg.seed, precision=0, label=control.label, elem_id=elem_id)
    value = getattr(cfg.eval, name)
    if isinstance(value, bool):
        return gr.Checkbox(value=value, label=control.label, elem_id=elem_id)
    return gr.Slider(  # the range always holds the configured value
        minimum=min(control.low, value), maximum=max(control.high, value), step=control.step,
        value=value, label=control.label, elem_id=elem_id,
    )


def serve(demo: Any, cfg: Config, paths: RunPaths, share: bool, port: int | None, host: str) -> None:
    """Build the app and serve it until interrupted (Ctrl-C, or stopping the Colab cell)."""
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    app = build_app(demo, cfg, example_titles(paths))
    log("starting the web page" + (" with a public share link (Colab)" if share else "") + "; Ctrl-C stops it")
    app.queue().launch(share=share, server_name=host, server_port=port, ssr_mode=False,
                       footer_links=[], show_error=True)
