"""data.example_words: the most similar training products in the prompt. The title index against a
brute-force search, the template and config identities, 01's stored examples (synthetic and real
rows), 02 -> 03 and 04 on the tiny model, and the errors when settings and artifacts disagree."""

from __future__ import annotations

import csv
import json
import random
import re

import pytest

from conftest import (
    EVAL_OVERRIDES,
    knob_values,
    stage_paths,
    synthetic_rows,
    tiny_overrides,
    write_prepared,
    write_tiny_adapter,
)
from prodesc import retrieval, templates
from prodesc.config import ConfigError, load_config
from prodesc.errors import UserError
from rawfiles import SHARED_SAMPLE


def brute_nearest(train: list[str], queries: list[str], exclude=None) -> list[int]:
    """The definition of the example: the allowed row with the highest Jaccard, the earlier row
    first among equals; -1 when no row is allowed."""
    words = [retrieval.title_words(t) for t in train]
    out = []
    for i, q in enumerate(map(retrieval.title_words, queries)):
        allowed = [row for row in range(len(train)) if exclude is None or exclude[i] != row]
        allowed.sort(key=lambda row: (-len(q & words[row]) / (len(q | words[row]) or 1), row))
        out.append(allowed[0] if allowed else -1)
    return out


def random_titles(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    vocab = ["Acme", "steel", "bottle", "500", "ml", "Mug", "coffee", "blue", "XL", "kids", "set", "of", "2"]
    titles = [" ".join(rng.choices(vocab, k=rng.randint(0, 6))) for _ in range(n)]
    return titles + ["", "!!!", "日本語のタイトル", "ACME Steel"]  # no words at all, and a case variant


@pytest.mark.parametrize("cells", [retrieval.SCORE_CELLS, 50, 1])  # one batch, several, one title a batch
def test_nearest_is_the_brute_force_answer(monkeypatch, cells):
    monkeypatch.setattr(retrieval, "SCORE_CELLS", cells)
    train, queries = random_titles(40, seed=1), random_titles(30, seed=2)
    index = retrieval.TitleIndex(train)
    assert index.nearest(queries) == brute_nearest(train, queries)
    own = list(range(len(train)))  # a training title never gets itself
    found = index.nearest(train, exclude=own)
    assert found == brute_nearest(train, train, exclude=own)
    assert all(f != i for i, f in enumerate(found))
    seen: list[int] = []
    index.nearest(queries, progress=seen.append)
    assert sum(seen) == len(queries)


def test_nearest_edge_cases():
    assert retrieval.TitleIndex([]).nearest(["a b"]) == [-1]
    assert retrieval.TitleIndex(["only row"]).nearest(["only row"], exclude=[0]) == [-1]
    index = retrieval.TitleIndex(["red mug", "blue mug", "Red Mug!"])
    assert index.nearest(["red mug", "mug", "tea"]) == [0, 0, 0]  # ties and no shared word: the first
    assert index.nearest(["red mug"], exclude=[0]) == [2]
    assert index.nearest([]) == []


def test_cut_keeps_the_first_words():
    assert retrieval.cut("one two  three\nfour", 3) == "one two three …"
    assert retrieval.cut("one two", 3) == "one two"


def test_example_finder_gives_titles_and_cut_descriptions():
    finder = retrieval.ExampleFinder(["Red Mug", "Steel Bottle 500 ml"], ["a b c d", "e f g h"], 2)
    assert finder.examples("steel bottle") == [("Steel Bottle 500 ml", "e f …")]
    assert retrieval.ExampleFinder([], [], 2).examples("anything") == []


def test_stored_examples_read_the_columns():
    assert retrieval.stored_examples(["A"], ["a"]) == [("A", "a")]
    assert retrieval.stored_examples(None, None) == retrieval.stored_examples([], []) == []


# --------------------------------------------------------------------------- template and config


def test_template_shows_the_example_only_when_on():
    chat = templates.BUILTIN["chat"]
    assert chat.to_dict()["example_words"] == 0
    on = templates.from_dict({**chat.to_dict(), "example_words": 5})
    assert on.to_dict()["example_words"] == 5 and templates.from_dict(on.to_dict()) == on
    user = on.format_prompt("Blue Mug", [("Red Mug", "A red mug …")])[-1]["content"]
    assert user == (
        "Product title: Blue Mug\n\nA similar product in the store, for reference:\n"
        "Title: Red Mug\nDescription: A red mug …"
    )
    assert on.format_prompt("Blue Mug")[-1]["content"] == "Product title: Blue Mug"  # no example found
    assert chat.format_prompt("Blue Mug", [("Red Mug", "x")]) == chat.format_prompt("Blue Mug")  # off
    with pytest.raises(ConfigError, match="unknown template field 'examples'"):
        templates.from_dict({**on.to_dict(), "examples": 2})  # retired 2026-12-06: one example
    with pytest.raises(ConfigError, match="example_words must be a whole number >= 0"):
        templates.from_dict({**chat.to_dict(), "example_words": -1})
    with pytest.raises(ConfigError, match="'example_words' must be a whole number"):
        templates.from_dict({**chat.to_dict(), "example_words": "80"})


def test_template_file_may_not_set_example_words(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("kind: text\nprompt: 'T: {title}'\nexample_words: 2\n")
    with pytest.raises(ConfigError, match="remove example_words and set data.example_words instead"):
        templates.load_template_file(path)


def test_example_words_count_in_the_data_fingerprint():
    cfg = load_config("cpu")
    on = load_config("cpu", ["data.example_words=80"])
    assert on.fingerprint("data") != cfg.fingerprint("data")
    with pytest.raises(ConfigError, match="data.example_words' must be >= 0"):
        load_config("cpu", ["data.example_words=-1"])
    with pytest.raises(ConfigError, match="unknown config key 'data.examples'"):
        load_config("cpu", ["data.examples=2"])  # retired 2026-12-06: one example


# --------------------------------------------------------------------------- 01


def test_prepare_stores_each_rows_example(tmp_path):
    from prodesc.prepare import format_manifest
    from prodesc.prepared import open_prepared

    cfg, paths = stage_paths([f"paths.root={tmp_path}", "data.name=ex"])
    write_prepared(paths, n_train=30, n_val=6, n_test=6, extra=("data.example_words=4",))
    manifest, data = open_prepared(paths, ("train", "validation", "test"), ("example_title", "example_content"))
    assert manifest["template"]["example_words"] == 4
    assert "template: chat + an example of 4 words   took" in format_manifest(manifest)
    train = data["train"]
    by_title = {}
    for title, content in zip(train["title"], train["content"]):
        by_title.setdefault(title, content)
    for split in ("train", "validation", "test"):
        rows = data[split]
        exclude = list(range(len(rows))) if split == "train" else None
        want = brute_nearest(train["title"], rows["title"], exclude)
        assert rows["example_title"] == [[train["title"][w]] for w in want], split
        assert rows["example_content"] == [[retrieval.cut(train["content"][w], 4)] for w in want], split
        for row in rows:
            shown = "\n\n".join(f"Title: {t}\nDescription: {d}" for t, d in zip(row["example_title"], row["example_content"]))
            assert row["prompt"][-1]["content"].endswith(f"for reference:\n{shown}")
    # data prepared without it has the old columns and prompts
    write_prepared(paths, n_train=30, n_val=6, n_test=6)
    _, plain = open_prepared(paths, ("train",), ())
    assert "example_title" not in plain["train"].column_names
    assert plain["train"][0]["prompt"][-1]["content"] == f"Product title: {plain['train'][0]['title']}"


def test_prepare_refuses_a_training_split_too_big_to_search(tmp_path, monkeypatch):
    from prodesc import prepare

    monkeypatch.setattr(prepare, "MAX_TRAIN_ROWS", 20)
    cfg, paths = stage_paths([f"paths.root={tmp_path}", "data.name=big"])
    with pytest.raises(UserError, match=r"compares every title with all 30 training titles: set data.train_size to at most 20"):
        write_prepared(paths, n_train=30, n_val=4, n_test=4, extra=("data.example_words=4",))
    assert not paths.prepared.exists()  # nothing half-written


@pytest.mark.skipif(not SHARED_SAMPLE.exists(), reason="../shared/data is not beside this checkout")
def test_examples_on_real_rows(tmp_path):
    """cpu-quality's setting on the 203 real rows: every example is a best match by the definition,
    most share a word with their title, and the prompt fits the preset's max_length."""
    from prodesc.prepare import prepare
    from prodesc.prepared import open_prepared

    from prodesc.paths import RunPaths

    cfg = load_config("cpu-quality", [f"paths.root={tmp_path}", f"data.source={SHARED_SAMPLE}"])
    paths = RunPaths.from_config(cfg, tmp_path)
    prepare(cfg, paths)
    _, data = open_prepared(paths, ("train", "validation", "test"), ("example_title",))
    train = data["train"]["title"]
    shared = total = 0
    for split in ("train", "validation", "test"):
        rows = data[split]
        want = brute_nearest(train, rows["title"], list(range(len(rows))) if split == "train" else None)
        assert rows["example_title"] == [[train[w]] for w in want]
        shared += sum(bool(retrieval.title_words(t) & retrieval.title_words(e[0]))
                      for t, e in zip(rows["title"], rows["example_title"]))
        total += len(rows)
    assert shared / total > 0.8


# --------------------------------------------------------------------------- 02 -> 03, 04


@pytest.fixture
def example_run(tiny_model_dir, tmp_path):
    """A 3-step 02 run on the tiny model with an example in the prompt, then its overrides and paths."""
    from prodesc import train

    overrides = tiny_overrides(tiny_model_dir, tmp_path / "root", "train.max_steps=3", *EVAL_OVERRIDES,
                               "data.example_words=4", "model.max_length=256")
    _, paths = stage_paths(overrides)
    write_prepared(paths, extra=("data.example_words=4",))
    assert train.main(["--preset", "cpu", *overrides]) == 0
    return overrides, paths


def spy_prompts(monkeypatch, module) -> list[str]:
    seen: list[str] = []
    real = module.render_prompts

    def spy(*args, **kwargs):
        prompts = real(*args, **kwargs)
        seen.extend(prompts)
        return prompts

    monkeypatch.setattr(module, "render_prompts", spy)
    return seen


def test_training_and_evaluation_show_the_examples(example_run, monkeypatch):
    """The adapter keeps the template with example_words; 03 builds each test row's prompt with
    the example 01 stored, as training saw it."""
    from prodesc import generate, merge
    from prodesc.prepared import open_prepared

    overrides, paths = example_run
    kept = json.loads((paths.adapter / "prompt_template.json").read_text())
    assert kept["example_words"] == 4
    seen = spy_prompts(monkeypatch, generate)
    assert merge.main(["--preset", "cpu", *overrides]) == 0
    test = open_prepared(paths, ("test",), ("example_title",))[1]["test"]
    rows = {r["title"]: r for r in test}
    intro = templates.EXAMPLE_INTRO
    shown = [p for p in seen if intro in p]
    assert shown and len(shown) == len(seen)
    for prompt in shown:
        title = re.search(r"Product title: (.*)\n\n" + intro, prompt).group(1)
        row = rows[title]
        assert len(row["example_title"]) == 1
        assert "\n\n".join(f"Title: {t}\nDescription: {d}" for t, d in zip(row["example_title"], row["example_content"])) in prompt
    with open(paths.eval / "side_by_side.csv", encoding="utf-8-sig", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 6 and list(table[0])[:5] == ["row", "uid", "title", "example_title", "reference"]
    assert all(r["example_title"] == " | ".join(rows[r["title"]]["example_title"]) for r in table)


def test_settings_that_disagree_with_the_adapter_are_refused(example_run, capsys):
    """03 with another data.example_words than the adapter's, or on prepared data without the
    examples (written by other code under the same name): one line naming the setting, exit 2."""
    import shutil

    from datasets import load_from_disk

    from prodesc import merge

    overrides, paths = example_run
    assert merge.main(["--preset", "cpu", *overrides, "data.example_words=0"]) == 2
    assert "the adapter was trained with data.example_words=4 but the config says 0: set data.example_words=4" in capsys.readouterr().err
    data = load_from_disk(str(paths.prepared_dataset))
    data["test"] = data["test"].remove_columns(["example_title", "example_content"])
    data.save_to_disk(str(paths.prepared / "dataset.new"))
    shutil.rmtree(paths.prepared_dataset)
    (paths.prepared / "dataset.new").rename(paths.prepared_dataset)
    assert merge.main(["--preset", "cpu", *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: the adapter's prompt shows an example (data.example_words): ")
    assert "lacks column 'example_content'" in err


def test_demo_finds_the_examples_in_the_training_split(example_run, monkeypatch, capsys):
    import shutil

    from prodesc import demo, generate
    from prodesc.prepared import open_prepared

    overrides, paths = example_run
    train = open_prepared(paths, ("train",), ())[1]["train"]
    title = "Acme Compact Water Bottle 500 ml"
    want = brute_nearest(train["title"], [title])
    seen = spy_prompts(monkeypatch, generate)
    assert demo.main(["--preset", "cpu", *overrides, "--no-base", title]) == 0
    assert f"(example in the prompt: {' | '.join(train['title'][w] for w in want)})" in capsys.readouterr().out
    assert "\n\n".join(f"Title: {train['title'][w]}\nDescription: {retrieval.cut(train['content'][w], 4)}" for w in want) in seen[0]
    shutil.rmtree(paths.prepared)
    assert demo.main(["--preset", "cpu", *overrides, "--no-base", title]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: the adapter's prompt shows an example from the training split (data.example_words): no prepared data")


def test_web_page_shows_the_examples_in_the_prompt(example_run):
    """The page built over a demo with examples has an example box, and its handler fills it with
    the examples the prompt holds (what 04 prints), next to the descriptions."""
    from prodesc import models, web
    from prodesc.demo import Demo
    from prodesc.generate import GenSettings
    from prodesc.prepared import open_prepared

    overrides, paths = example_run
    cfg, _ = stage_paths(overrides)
    demo = Demo(cfg, paths, models.base_model_path(cfg, paths), models.adapter_template(paths),
                GenSettings.from_eval(cfg.eval), with_base=False)
    train = open_prepared(paths, ("train",), ())[1]["train"]
    title = "Acme Compact Water Bottle 500 ml"
    want = brute_nearest(train["title"], [title])
    app = web.build_app(demo, cfg, [])
    boxes = {c.get("props", {}).get("elem_id"): c["props"] for c in app.get_config_file()["components"]}
    assert boxes["example-output"]["label"].startswith("example in")
    handler = next(f.fn for f in app.fns.values() if len(f.outputs) == 3)
    searched, search = [], demo.examples.examples
    demo.examples.examples = lambda t: searched.append(t) or search(t)
    *_, (base, tuned, shown) = handler(f"  {title} ", *knob_values(cfg))
    assert searched == [title]  # the box and the prompt share one search
    assert shown == "\n\n".join(f"{train['title'][w]}\n\n{retrieval.cut(train['content'][w], 4)}" for w in want)
    assert base == web.NO_BASE and tuned
    demo.examples = None  # a model trained on the title alone: no box, (base, tuned) only
    assert "example-output" not in {
        c.get("props", {}).get("elem_id") for c in web.build_app(demo, cfg, []).get_config_file()["components"]
    }


def test_synthetic_rows_mostly_find_a_related_example():
    """Guards the fixtures above: the synthetic titles share words, so examples are not arbitrary."""
    rows = synthetic_rows(40)
    titles = [r["title"] for r in rows]
    found = retrieval.TitleIndex(titles[:30]).nearest(titles[30:])
    assert all(retrieval.title_words(titles[30 + i]) & retrieval.title_words(titles[f]) for i, f in enumerate(found))
