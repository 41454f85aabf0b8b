"""data.example_words: the most similar training products in the prompt. The title index against a
brute-force search, the template and config identities, 01's stored examples (synthetic and real
rows), 02 -> 03 and 04 on the tiny model, and the errors when settings and artifacts disagree."""

from __future__ import annotations

import csv
import hashlib
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
    """The one example of :func:`brute_nearest_k`; -1 when no row is allowed."""
    return [rows[0] if rows else -1 for rows in brute_nearest_k(train, queries, 1, exclude)]


def brute_nearest_k(train: list[str], queries: list[str], k: int, exclude=None) -> list[list[int]]:
    """The definition of k examples: the allowed rows by highest Jaccard, the earlier row first
    among equals, the first k."""
    words = [retrieval.title_words(t) for t in train]
    out = []
    for i, q in enumerate(map(retrieval.title_words, queries)):
        allowed = [row for row in range(len(train)) if exclude is None or exclude[i] != row]
        allowed.sort(key=lambda row: (-len(q & words[row]) / (len(q | words[row]) or 1), row))
        out.append(allowed[:k])
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
    for k in (2, 3):  # data.examples
        assert index.nearest_k(queries, k) == brute_nearest_k(train, queries, k)
        assert index.nearest_k(train, k, exclude=own) == brute_nearest_k(train, train, k, exclude=own)


def test_nearest_edge_cases():
    assert retrieval.TitleIndex([]).nearest(["a b"]) == [-1]
    assert retrieval.TitleIndex(["only row"]).nearest(["only row"], exclude=[0]) == [-1]
    index = retrieval.TitleIndex(["red mug", "blue mug", "Red Mug!"])
    assert index.nearest(["red mug", "mug", "tea"]) == [0, 0, 0]  # ties and no shared word: the first
    assert index.nearest(["red mug"], exclude=[0]) == [2]
    assert index.nearest([]) == []
    assert index.nearest_k(["red mug", "tea"], 2) == [[0, 2], [0, 1]]
    assert index.nearest_k(["red mug"], 5, exclude=[2]) == [[0, 1]]  # fewer rows than asked for
    assert retrieval.TitleIndex([]).nearest_k(["a"], 2) == [[]]


def test_cut_keeps_the_first_words():
    assert retrieval.cut("one two  three\nfour", 3) == "one two three …"
    assert retrieval.cut("one two", 3) == "one two"


def test_example_finder_gives_titles_and_cut_descriptions():
    finder = retrieval.ExampleFinder(["Red Mug", "Steel Bottle 500 ml"], ["a b c d", "e f g h"], 2)
    assert finder.examples("steel bottle") == [("Steel Bottle 500 ml", "e f …")]
    two = retrieval.ExampleFinder(["Red Mug", "Steel Bottle 500 ml"], ["a b c d", "e f g h"], 2, count=2)
    assert two.examples("steel bottle") == [("Steel Bottle 500 ml", "e f …"), ("Red Mug", "a b …")]
    assert retrieval.ExampleFinder([], [], 2).examples("anything") == []


def test_stored_examples_read_both_column_forms():
    """Lists (one entry per example), or one text each as data prepared before data.examples has."""
    assert retrieval.stored_examples(["A", "B"], ["a", "b"]) == [("A", "a"), ("B", "b")]
    assert retrieval.stored_examples("A", "a") == [("A", "a")]
    assert retrieval.stored_examples(None, None) == retrieval.stored_examples([], []) == []


# --------------------------------------------------------------------------- template and config


def test_template_shows_the_example_only_when_on():
    chat = templates.BUILTIN["chat"]
    assert "example_words" not in chat.to_dict()  # identities of templates without it unchanged
    on = templates.from_dict({**chat.to_dict(), "example_words": 5})
    assert on.to_dict()["example_words"] == 5 and templates.from_dict(on.to_dict()) == on
    user = on.format_prompt("Blue Mug", [("Red Mug", "A red mug …")])[-1]["content"]
    assert user == (
        "Product title: Blue Mug\n\nA similar product in the store, for reference:\n"
        "Title: Red Mug\nDescription: A red mug …"
    )
    assert on.format_prompt("Blue Mug")[-1]["content"] == "Product title: Blue Mug"  # no example found
    assert chat.format_prompt("Blue Mug", [("Red Mug", "x")]) == chat.format_prompt("Blue Mug")  # off
    two = templates.from_dict({**on.to_dict(), "examples": 2})
    assert two.to_dict()["examples"] == 2 and "examples" not in on.to_dict()  # 1: identity unchanged
    assert two.format_prompt("Blue Mug", [("Red Mug", "A red mug …"), ("Mug Set", "Two mugs")])[-1]["content"] == (
        "Product title: Blue Mug\n\nTwo similar products in the store, for reference:\n"
        "Title: Red Mug\nDescription: A red mug …\n\nTitle: Mug Set\nDescription: Two mugs"
    )
    with pytest.raises(ConfigError, match="examples must be a whole number from 1 to 5"):
        templates.from_dict({**on.to_dict(), "examples": 0})
    with pytest.raises(ConfigError, match="example_words must be a whole number >= 0"):
        templates.from_dict({**chat.to_dict(), "example_words": -1})
    with pytest.raises(ConfigError, match="'example_words' must be a whole number"):
        templates.from_dict({**chat.to_dict(), "example_words": "80"})


@pytest.mark.parametrize("key", ["example_words", "examples"])
def test_template_file_may_not_set_the_example_settings(tmp_path, key):
    path = tmp_path / "mine.yaml"
    path.write_text(f"kind: text\nprompt: 'T: {{title}}'\n{key}: 2\n")
    with pytest.raises(ConfigError, match=f"remove {key} and set data.{key} instead"):
        templates.load_template_file(path)


def test_example_words_off_keeps_every_older_identity():
    """A setting added later counts in names and fingerprints only when on: data prepared before
    it existed keeps its folder name and is not redone."""
    import dataclasses

    cfg = load_config("cpu")
    newer = ("member", "test_source")  # added after these two, and off by default (test_prepare_zip.py)
    old = {k: v for k, v in dataclasses.asdict(cfg.data).items()
           if k not in ("example_words", "examples", *newer)}
    assert cfg.fingerprint("data") == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()
    on = load_config("cpu", ["data.example_words=80"])
    assert on.fingerprint("data") != cfg.fingerprint("data")
    one = {k: v for k, v in dataclasses.asdict(on.data).items() if k not in ("examples", *newer)}
    assert on.fingerprint("data") == hashlib.sha256(json.dumps(one, sort_keys=True).encode()).hexdigest()
    assert load_config("cpu", ["data.example_words=80", "data.examples=2"]).fingerprint("data") != on.fingerprint("data")
    with pytest.raises(ConfigError, match="data.example_words' must be >= 0"):
        load_config("cpu", ["data.example_words=-1"])
    for bad in (0, 6):
        with pytest.raises(ConfigError, match="data.examples' must be 1 to 5"):
            load_config("cpu", [f"data.examples={bad}"])


# --------------------------------------------------------------------------- 01


@pytest.mark.parametrize("count", [1, 2])
def test_prepare_stores_each_rows_examples(tmp_path, count):
    from prodesc.prepare import format_manifest, open_prepared

    cfg, paths = stage_paths([f"paths.root={tmp_path}", "data.name=ex"])
    write_prepared(paths, n_train=30, n_val=6, n_test=6, extra=("data.example_words=4", f"data.examples={count}"))
    manifest, data = open_prepared(paths, ("train", "validation", "test"), ("example_title", "example_content"))
    assert manifest["template"]["example_words"] == 4 and manifest["template"].get("examples", 1) == count
    shown = "an example of 4 words" if count == 1 else "2 examples of 4 words"
    assert f"template: chat + {shown}   took" in format_manifest(manifest)
    train = data["train"]
    by_title = {}
    for title, content in zip(train["title"], train["content"]):
        by_title.setdefault(title, content)
    for split in ("train", "validation", "test"):
        rows = data[split]
        exclude = list(range(len(rows))) if split == "train" else None
        want = brute_nearest_k(train["title"], rows["title"], count, exclude)
        assert rows["example_title"] == [[train["title"][w] for w in ws] for ws in want], split
        assert rows["example_content"] == [[retrieval.cut(train["content"][w], 4) for w in ws] for ws in want], split
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
    from prodesc.prepare import open_prepared, prepare

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
def example_run(tiny_model_dir, tmp_path, request):
    """A 3-step 02 run on the tiny model with examples in the prompt (data.examples: the test's
    parameter, else 1), then its overrides and paths."""
    from prodesc import train

    count = getattr(request, "param", 1)
    overrides = tiny_overrides(tiny_model_dir, tmp_path / "root", "train.max_steps=3", *EVAL_OVERRIDES,
                               "data.example_words=4", f"data.examples={count}", "model.max_length=256")
    _, paths = stage_paths(overrides)
    write_prepared(paths, extra=("data.example_words=4", f"data.examples={count}"))
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


@pytest.mark.parametrize("example_run", [1, 2], indirect=True)
def test_training_and_evaluation_show_the_examples(example_run, monkeypatch):
    """The adapter keeps the template with example_words (and examples); 03 builds each test row's
    prompt with the examples 01 stored, as training saw them."""
    from prodesc import generate, merge
    from prodesc.prepare import open_prepared

    overrides, paths = example_run
    kept = json.loads((paths.adapter / "prompt_template.json").read_text())
    count = kept.get("examples", 1)
    assert kept["example_words"] == 4 and f"data.examples={count}" in overrides
    seen = spy_prompts(monkeypatch, generate)
    assert merge.main(["--preset", "cpu", *overrides]) == 0
    test = open_prepared(paths, ("test",), ("example_title",))[1]["test"]
    rows = {r["title"]: r for r in test}
    intro = templates.EXAMPLE_INTROS[count - 1]
    shown = [p for p in seen if intro in p]
    assert shown and len(shown) == len(seen)
    for prompt in shown:
        title = re.search(r"Product title: (.*)\n\n" + intro, prompt).group(1)
        row = rows[title]
        assert len(row["example_title"]) == count
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
    assert merge.main(["--preset", "cpu", *overrides, "data.examples=3"]) == 2
    assert "the adapter was trained with data.examples=1 but the config says 3: set data.examples=1" in capsys.readouterr().err
    data = load_from_disk(str(paths.prepared_dataset))
    data["test"] = data["test"].remove_columns(["example_title", "example_content"])
    data.save_to_disk(str(paths.prepared / "dataset.new"))
    shutil.rmtree(paths.prepared_dataset)
    (paths.prepared / "dataset.new").rename(paths.prepared_dataset)
    assert merge.main(["--preset", "cpu", *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: the adapter's prompt shows an example (data.example_words): ")
    assert "lacks column 'example_content'" in err


@pytest.mark.parametrize("example_run", [1, 2], indirect=True)
def test_demo_finds_the_examples_in_the_training_split(example_run, monkeypatch, capsys):
    import shutil

    from prodesc import demo, generate
    from prodesc.prepare import open_prepared

    overrides, paths = example_run
    count = 2 if "data.examples=2" in overrides else 1
    train = open_prepared(paths, ("train",), ())[1]["train"]
    title = "Acme Compact Water Bottle 500 ml"
    want = brute_nearest_k(train["title"], [title], count)[0]
    seen = spy_prompts(monkeypatch, generate)
    assert demo.main(["--preset", "cpu", *overrides, "--no-base", title]) == 0
    label = "example" if count == 1 else "examples"
    assert f"({label} in the prompt: {' | '.join(train['title'][w] for w in want)})" in capsys.readouterr().out
    assert "\n\n".join(f"Title: {train['title'][w]}\nDescription: {retrieval.cut(train['content'][w], 4)}" for w in want) in seen[0]
    shutil.rmtree(paths.prepared)
    assert demo.main(["--preset", "cpu", *overrides, "--no-base", title]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: the adapter's prompt shows an example from the training split (data.example_words): no prepared data")


@pytest.mark.parametrize("example_run", [1, 2], indirect=True)
def test_web_page_shows_the_examples_in_the_prompt(example_run):
    """The page built over a demo with examples has an example box, and its handler fills it with
    the examples the prompt holds (what 04 prints), next to the descriptions."""
    from prodesc import merge, web
    from prodesc.demo import Demo
    from prodesc.generate import GenSettings
    from prodesc.prepare import open_prepared

    overrides, paths = example_run
    cfg, _ = stage_paths(overrides)
    demo = Demo(cfg, paths, merge.base_model_path(cfg, paths), merge.adapter_template(paths),
                GenSettings.from_eval(cfg.eval), with_base=False)
    train = open_prepared(paths, ("train",), ())[1]["train"]
    title = "Acme Compact Water Bottle 500 ml"
    want = brute_nearest_k(train["title"], [title], cfg.data.examples)[0]
    app = web.build_app(demo, cfg, [])
    boxes = {c.get("props", {}).get("elem_id"): c["props"] for c in app.get_config_file()["components"]}
    assert boxes["example-output"]["label"].startswith("example in" if cfg.data.examples == 1 else "examples in")
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
