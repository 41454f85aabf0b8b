"""04_quick_demo --web: the Gradio page, driven in a real headless Chromium, and its request handler.

The browser test starts `src/04_quick_demo.py --web` as a subprocess on a free local port (tiny
random model + a LoRA adapter + prepared data for the example titles), then Debian's chromium,
driven by selenium through chromedriver, types a title, clicks "Describe", reads both outputs from
the page and saves a screenshot. It compares the page's texts with what the demo's own code
generates for the same title and settings in this process. Without chromium/chromedriver/selenium
it skips, except under CI (`CI` set), where `.ci/run` installs them and a skip would hide a gap.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (
    PYTHON, SRC, knob_values, stage_env, stage_paths, tiny_overrides, write_prepared, write_tiny_adapter,
)

TITLE = "Acme Compact Water Bottle 500 ml"
QUICK = ["eval.max_new_tokens=12"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def web_run(tiny_model_dir, tmp_path_factory):
    """(overrides, paths) of a run with prepared data (for the examples) and an adapter."""
    root = tmp_path_factory.mktemp("web") / "root"
    overrides = tiny_overrides(tiny_model_dir, root, *QUICK)
    _, paths = stage_paths(overrides)
    write_prepared(paths)
    write_tiny_adapter(tiny_model_dir, paths.adapter, seed=0)
    return overrides, paths


def load_demo(overrides: list[str], with_base: bool = True):
    from dataclasses import replace

    from prodesc import demo, models
    from prodesc.generate import GenSettings

    cfg, paths = stage_paths(overrides)
    base_path = models.base_model_path(cfg, paths)
    settings = replace(GenSettings.from_eval(cfg.eval), batch_size=1)
    return cfg, paths, demo.Demo(cfg, paths, base_path, models.adapter_template(paths), settings, with_base)


# --------------------------------------------------------------------------- the handler, in process


def test_handler_streams_then_gives_both_descriptions_equal_to_the_command_line(web_run):
    cfg, _, demo = load_demo(web_run[0])
    from prodesc.web import Describer

    steps = list(Describer(demo, cfg)(TITLE, *knob_values(cfg)))
    base, tuned = steps[-1]
    assert tuned == (demo.generate(TITLE, base=False, streamer=None) or "(empty)")
    assert base == (demo.generate(TITLE, base=True, streamer=None) or "(empty)")
    assert base != tuned  # the adapter changes the output
    growing = [t for b, t in steps[:-1] if b == ""]  # the fine-tuned text while it streams
    assert len(growing) >= 2 and all(a == b[: len(a)] for a, b in zip(growing, growing[1:]))


def test_greedy_is_deterministic_and_a_seed_fixes_sampling(web_run):
    cfg, _, demo = load_demo(web_run[0], with_base=False)
    from prodesc.web import Describer

    describe = Describer(demo, cfg)

    def final(**changes):
        return list(describe(TITLE, *knob_values(cfg, **changes)))[-1][1]

    assert final() == final()
    hot = {"do_sample": True, "temperature": 1.8, "top_k": 0, "top_p": 1.0}
    assert final(seed=3, **hot) == final(seed=3, **hot)
    assert len({final(seed=s, **hot) for s in range(4)}) > 1  # other seeds, other samples


def test_beam_and_turn_knobs_reach_generate_and_no_base_says_so(web_run, monkeypatch):
    from transformers.generation.utils import GenerationMixin

    cfg, _, demo = load_demo(web_run[0], with_base=False)
    from prodesc.web import NO_BASE, Describer

    calls = []
    real = GenerationMixin.generate
    monkeypatch.setattr(GenerationMixin, "generate", lambda m, *a, **kw: calls.append(kw) or real(m, *a, **kw))
    steps = list(Describer(demo, cfg)(TITLE, *knob_values(cfg, num_beams=3, no_repeat_ngram_size=2)))
    assert len(steps) == 2 and steps[-1][0] == NO_BASE  # beams: no streaming, one final answer
    assert calls[-1]["num_beams"] == 3 and calls[-1]["no_repeat_ngram_size"] == 2
    # the turn-token knob: off, only EOS ends the text; on, the chat format's turn tokens too
    stops = {}
    for on in (False, True):
        list(Describer(demo, cfg)(TITLE, *knob_values(cfg, stop_at_turn=on, max_new_tokens=8)))
        stops[on] = calls[-1]["eos_token_id"]
    assert set(stops[False]) < set(stops[True]), stops


def test_bad_knob_values_and_an_empty_title_are_page_errors(web_run):
    import gradio as gr

    cfg, _, demo = load_demo(web_run[0], with_base=False)
    from prodesc.web import Describer

    describe = Describer(demo, cfg)
    with pytest.raises(gr.Error, match="title"):
        list(describe("   ", *knob_values(cfg)))
    with pytest.raises(gr.Error, match="temperature"):
        list(describe(TITLE, *knob_values(cfg, do_sample=True, temperature=0)))


def test_every_decoding_knob_is_a_setting_and_a_page_control_unless_declared_off_the_page(web_run):
    """DecodingConfig declares the knobs once: each one is a GenSettings field in the cache key and
    a control on the page that reaches the settings, unless its declaration says page=None."""
    import dataclasses

    from prodesc.config import DecodingConfig
    from prodesc.generate import GenSettings
    from prodesc.web import KNOBS, build_app, settings_from

    knobs = dataclasses.fields(DecodingConfig)
    assert [f.name for f in knobs if "page" not in f.metadata] == [], "declare knobs with config.knob()"
    assert list(GenSettings().decoding()) == [f.name for f in knobs]
    on_page = {f.name: f.metadata["page"] for f in knobs if f.metadata["page"] is not None}
    assert [f.name for f in knobs if f.name not in on_page] == ["repetition_scope"]  # docs/stages.md says so

    cfg, _, demo = load_demo(web_run[0], with_base=False)
    page = build_app(demo, cfg, []).get_config_file()["components"]
    props = {c["props"].get("elem_id"): c["props"] for c in page}
    assert {i for i in props if i and i.startswith("knob-")} == {f"knob-{n}" for n in [*on_page, "seed"]}
    for name, control in on_page.items():
        shown = props[f"knob-{name}"]
        assert (shown["label"], shown["value"]) == (control.label, getattr(cfg.eval, name))

    # a value other than the configured one for every control: each reaches the settings
    values = {n: (not getattr(cfg.eval, n)) if isinstance(getattr(cfg.eval, n), bool) else c.low + c.step
              for n, c in on_page.items()}
    settings, seed = settings_from(cfg, {**values, "seed": 7})
    assert seed == 7 and {n: getattr(settings, n) for n in on_page} == values
    assert list(KNOBS) == [*on_page, "seed"]  # the handler's order, as the page passes the values


def test_examples_come_from_the_test_split(web_run):
    from datasets import load_from_disk

    from prodesc.web import example_titles

    _, paths = web_run
    test_titles = load_from_disk(str(paths.prepared_dataset))["test"]["title"]
    assert example_titles(paths, 3) == list(test_titles[:3])


# --------------------------------------------------------------------------- a real browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(proc: subprocess.Popen, port: int, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the web demo exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the web demo did not listen on {port} within {timeout} s:\n{log.read_text()[-3000:]}")


def browser():
    missing = [name for name, found in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if not found]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium")
    if missing:
        reason = f"{', '.join(missing)} not installed (.ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,1100"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.mark.slow  # real processes, 10-17 s: in the full suite, not make test-fast
def test_page_in_headless_chromium_types_a_title_clicks_and_shows_both_outputs(web_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    overrides, paths = web_run
    driver = browser()
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [PYTHON, str(SRC / "04_quick_demo.py"), "--preset", "cpu", "--web", "--port", str(port), *overrides],
            env=stage_env(), stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        wait_for_server(server, port, log)
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 120)
        box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#title textarea, #title input"))
        test_titles = __import__("datasets").load_from_disk(str(paths.prepared_dataset))["test"]["title"]

        def page_text(_):  # Gradio renders the examples after the input box: wait for them
            text = driver.find_element(By.TAG_NAME, "body").text
            return text if test_titles[0] in text else False

        try:
            wait.until(page_text)
        except Exception:  # a timeout: say what the page showed
            pytest.fail(f"example title {test_titles[0]!r} never appeared on the page: "
                        f"{driver.find_element(By.TAG_NAME, 'body').text!r}")
        box.send_keys(TITLE)
        driver.find_element(By.CSS_SELECTOR, "#describe").click()

        def output(elem_id: str) -> str:
            return driver.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea").get_attribute("value")

        def finished(_):
            base, tuned = output("base-output"), output("tuned-output")
            return (base, tuned) if base and tuned and not base.startswith("(generating") else False

        base, tuned = wait.until(finished)
        driver.save_screenshot(str(tmp_path / "web_demo.png"))
    finally:
        driver.quit()
        server.terminate()
        server.wait(timeout=30)
    assert (tmp_path / "web_demo.png").stat().st_size > 10_000
    cfg, _, demo = load_demo(overrides)
    assert tuned == (demo.generate(TITLE, base=False, streamer=None) or "(empty)")
    assert base == (demo.generate(TITLE, base=True, streamer=None) or "(empty)")
    assert "Traceback" not in log.read_text()
