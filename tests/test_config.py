"""Config: defaults < preset < overrides, strict keys and types, every shipped preset valid."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import yaml

from prodesc import config as C
from prodesc.errors import ConfigError


def write_preset(tmp_path, text: str):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    return str(path)


def test_precedence_defaults_then_preset_then_overrides(tmp_path):
    preset = write_preset(tmp_path, "train:\n  learning_rate: 1.0e-3\n  batch_size: 4\nlora:\n  r: 8\n")
    cfg = C.load_config(preset, ["train.batch_size=2"])
    assert cfg.train.learning_rate == 1e-3  # from the preset
    assert cfg.train.batch_size == 2  # the override beats the preset
    assert cfg.lora.r == 8
    assert cfg.lora.alpha == C.LoraConfig().alpha  # untouched default
    assert cfg.preset == "mine"


def test_override_types_are_parsed_from_text():
    cfg = C.load_config("cpu", [
        "train.learning_rate=5e-5", "data.dedup=false", "lora.target_modules=q_proj,v_proj",
        "eval.rows=all", "paths.run=exp-1", "model.name=org/model", "seed=7",
    ])
    assert cfg.train.learning_rate == 5e-5
    assert cfg.data.dedup is False
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.eval.rows == "all"
    assert cfg.run_name == "exp-1"
    assert cfg.seed == 7


def test_train_seed_defaults_to_the_run_seed():
    assert C.load_config("cpu", ["seed=7"]).train_seed == 7
    cfg = C.load_config("cpu", ["seed=7", "train.seed=0"])
    assert (cfg.seed, cfg.train_seed) == (7, 0)  # the split's seed stays


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    # PyYAML reads `1e-4` as a string; the loader must still accept it for a float key.
    cfg = C.load_config(write_preset(tmp_path, "train:\n  learning_rate: 1e-4\n"))
    assert cfg.train.learning_rate == pytest.approx(1e-4)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=1", "did you mean 'train.learning_rate'"),
        ("trian.epochs=1", "did you mean 'train.epochs'"),
        ("nonsense=1", "unknown config key 'nonsense'"),
        ("train.batch_size=abc", "expects a whole number"),
        ("train.batch_size=1.5", "expects a whole number"),
        ("data.dedup=maybe", "expects true or false"),
        ("model.backend=tpu", "must be one of auto, unsloth, hf"),
        ("lora.r=0", "'lora.r' must be > 0"),
        ("train.seed=-2", "'train.seed' must be -1 (the run's seed) or >= 0"),
        ("data.test_size=-1", "'data.test_size' must be"),
        ("data.train_size=0.9", "add up to more than 1"),
        ("paths.run=../escape", "not a plain folder name"),
        ("paths.run=a/b", "not a plain folder name"),
        ("train.epochs", "is not key=value"),
        ("preset=t4", "unknown config key 'preset'"),
    ],
)
def test_bad_overrides_are_rejected_with_a_clear_message(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        C.load_config("cpu", [override])


def test_unknown_or_mistyped_keys_in_a_yaml_preset(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'train.epoch'"):
        C.load_config(write_preset(tmp_path, "train:\n  epoch: 2\n"))
    with pytest.raises(ConfigError, match="expects a whole number"):
        C.load_config(write_preset(tmp_path, "train:\n  batch_size: '8'\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        C.load_config(write_preset(tmp_path, "train: 3\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        C.load_config(write_preset(tmp_path, "train: [\n"))


def test_unknown_preset_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="choose one of a100, cpu, cpu-quality, flan-t5-base, l4, t4"):
        C.load_config("t5")


@pytest.mark.parametrize("name", C.preset_names())
def test_every_shipped_preset_loads_and_round_trips(name):
    cfg = C.load_config(name)
    assert cfg.preset == name
    again = C.from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    # Presets must name 16-bit weights (merging into a *-bnb-4bit base loses quality).
    assert "bnb-4bit" not in cfg.model.name
    # The raw YAML holds only known keys (load_config would have raised) and says why in comments.
    assert (C.PRESETS_DIR / f"{name}.yaml").read_text().lstrip().startswith("#")


def test_presets_shipped_are_the_ones_the_product_needs():
    # four by hardware, the FLAN-T5 (seq2seq) preset of the earlier projects, and the CPU recipe
    # tuned on real rows (docs/results.md)
    assert C.preset_names() == ["a100", "cpu", "cpu-quality", "flan-t5-base", "l4", "t4"]
    cpu = C.load_config("cpu")
    assert cpu.model.name == C.EMBEDDED_MODEL and cpu.data.source == "bundled"
    quality = C.load_config("cpu-quality")
    assert quality.model.name == cpu.model.name and quality.eval.rows == "all"
    assert (quality.lora.r, quality.lora.alpha) == (32, 64) and (cpu.lora.r, cpu.lora.alpha) == (16, 32)
    # the example in the prompt, chosen on validation with the longer rows it needs and the
    # penalty counting only the output, carried into the GPU presets (a template change); `cpu`
    # keeps the title alone (its 10-minute run) and FLAN-T5 its own text template
    for name in ("cpu-quality", "t4", "l4", "a100"):
        got = C.load_config(name)
        assert (got.data.example_words, got.model.max_length, got.eval.repetition_scope) == (80, 512, "output"), name
    for name in ("cpu", "flan-t5-base"):
        assert C.load_config(name).data.example_words == 0, name
    with pytest.raises(ConfigError, match="data.train_size' is 500,000 but data.example_words .* at most 200,000"):
        C.load_config("t4", ["data.train_size=500000"])  # refused before 01 reads the whole file
    assert C.load_config("t4", ["data.train_size=500000", "data.example_words=0"]).data.train_size == 500000
    assert C.load_config("t4", ["data.train_size=200000"]).data.example_words == 80
    for name in C.preset_names():  # greedy, and no minimum length: a floor is a score choice (docs/results.md)
        got = C.load_config(name).eval
        assert (got.do_sample, got.num_beams, got.min_new_tokens) == (False, 1, 0), name
    # what the validation sweep chose, carried into every preset that generates descriptions
    for name in ("cpu", "cpu-quality", "t4", "l4", "a100"):  # the causal models; not FLAN-T5
        assert C.load_config(name).eval.repetition_penalty == 1.2, name
    for name in ("cpu-quality", "t4", "l4", "a100"):  # `cpu` keeps 96 for the 10-minute local run
        assert C.load_config(name).eval.max_new_tokens == 200, name
    assert C.load_config("t4").model.load_in_4bit and C.load_config("t4").train.precision == "fp16"
    for big in ("l4", "a100"):
        assert C.load_config(big).train.precision == "bf16"


@pytest.mark.parametrize(
    "gpu, preset", [(None, "cpu"), (("Tesla T4", 15.0), "t4"), (("NVIDIA L4", 22.5), "l4"),
                    (("NVIDIA A100-SXM4-40GB", 40.0), "a100"), (("NVIDIA A100 80GB", 80.0), "a100")],
)
def test_no_preset_chooses_by_hardware_and_says_so(monkeypatch, gpu, preset):
    monkeypatch.setattr(C, "detect_gpu", lambda: gpu)  # stand-in for nvidia-smi: no GPU here
    said = []
    cfg = C.load_config(None, announce=said.append)
    assert cfg.preset == preset
    assert f"using preset '{preset}'" in said[0]


def test_every_key_has_a_docstring():
    docs = C.field_docs()
    keys = C._flat_schema(C.Config()).keys()
    missing = [k for k in keys if not docs.get(k)]
    assert missing == []
    assert "Peak learning rate" in C.list_keys()


def test_config_types_are_all_supported_by_the_loader():
    # Every field type must be one _coerce understands, so no key is silently unchecked.
    for key, (tp, default) in C._flat_schema(C.Config()).items():
        assert C._coerce(key, default, tp, from_text=False) == default


def test_validation_runs_on_direct_construction_too():
    with pytest.raises(ConfigError):
        C.TrainConfig(batch_size=0)
    assert dataclasses.is_dataclass(C.Config)
    assert typing.get_type_hints(C.Config)["model"] is C.ModelConfig


@pytest.mark.parametrize("name", C.preset_names())
def test_quick_is_a_small_run_of_its_own_on_every_preset(name):
    full = C.load_config(name)
    cfg = C.load_config(name, ["quick=true"])
    assert cfg.run_name == f"{name}-quick" and cfg.full_run == full
    steps, rows = cfg.quick_steps, cfg.quick_rows
    assert cfg.train.max_steps == steps and cfg.train.save_steps <= steps
    assert (cfg.data.validation_size, cfg.data.test_size, cfg.data.train_size) == (rows, rows, 0)
    per_step = cfg.train.batch_size * cfg.train.grad_accum
    assert cfg.data.subsample == steps * per_step + 2 * rows  # enough rows for one pass
    assert cfg.eval.rows <= rows
    # the batch, model and template stay the preset's: the quick run tries what the full run will use
    assert (cfg.train.batch_size, cfg.model, cfg.data.template) == (full.train.batch_size, full.model, full.data.template)
    from prodesc.paths import prepared_name

    assert prepared_name(cfg) != prepared_name(full)  # its own prepared data too
    assert C.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg  # what 02 saves reloads as the same config


def test_quick_keeps_what_the_command_line_says_and_always_names_its_run():
    cfg = C.load_config("t4", ["quick=true", "train.max_steps=12", "eval.rows=3", "paths.run=mine"])
    assert (cfg.train.max_steps, cfg.eval.rows, cfg.run_name) == (12, 3, "mine-quick")
    assert cfg.full_run.run_name == "mine" and cfg.full_run.train.max_steps == 12
    assert C.load_config("t4", ["quick=true", "paths.run=a-quick"]).run_name == "a-quick"
    assert C.load_config("t4").full_run is None


def test_the_cpu_quick_run_is_sized_for_two_cores():
    cfg = C.load_config("cpu", ["quick=true"])  # measured: 02 + 03 under 3 min (README)
    assert (cfg.train.max_steps, cfg.eval.rows, cfg.data.subsample) == (5, 8, 5 * 8 + 16)
    with pytest.raises(ConfigError, match="quick_steps"):
        C.load_config("cpu", ["quick=true", "quick_steps=0"])


def test_gpu_presets_hold_only_what_differs_from_their_shared_base():
    assert "_gpu" not in C.preset_names()  # a base, not offered as a preset
    shared = C.read_yaml(C.PRESETS_DIR / "_gpu.yaml")
    for name in ("t4", "l4", "a100"):
        raw = C.read_yaml(C.PRESETS_DIR / f"{name}.yaml")
        assert raw["base"] == "_gpu", name
        cfg = C.load_config(name)
        for key, value in C._flatten(shared, "_gpu"):  # every shared value reaches the preset...
            section, sub = key.split(".")
            assert getattr(getattr(cfg, section), sub) == value or key.split(".")[1] in raw.get(section, {}), (name, key)
        default = C.Config().to_dict()  # ...and the preset restates no default
        for section, values in raw.items():
            if isinstance(values, dict):
                for sub, value in values.items():
                    assert default[section][sub] != value, f"{name}: {section}.{sub} restates its default"


def test_a_preset_file_of_your_own_can_build_on_a_shipped_one(tmp_path):
    mine = write_preset(tmp_path, "base: t4\ntrain:\n  batch_size: 4\n")
    cfg, t4 = C.load_config(mine, ["eval.rows=7"]), C.load_config("t4")
    assert (cfg.train.batch_size, cfg.eval.rows, cfg.preset) == (4, 7, "mine")
    assert (cfg.model, cfg.data, cfg.eval.repetition_penalty) == (t4.model, t4.data, t4.eval.repetition_penalty)
    with pytest.raises(ConfigError, match="base 'nope' is not a file in"):
        C.load_config(write_preset(tmp_path, "base: nope\n"))


def test_bases_that_lead_back_to_themselves_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "PRESETS_DIR", tmp_path)
    (tmp_path / "a.yaml").write_text("base: b\n")
    (tmp_path / "b.yaml").write_text("base: a\n")
    with pytest.raises(ConfigError, match="base 'a' leads back to itself"):
        C.load_config("a")


def test_the_key_reference_in_docs_is_current():
    """docs/keys.md is generated from the config's docstrings (make docs): a key added, removed or
    reworded without regenerating it fails here."""
    from pathlib import Path

    doc = Path(__file__).resolve().parents[1] / "docs" / "keys.md"
    assert doc.read_text(encoding="utf-8") == C.keys_markdown(), "run `make docs`"
    rows = [line for line in C.keys_markdown().splitlines() if line.startswith("| `")]
    assert {r.split("`")[1] for r in rows} == {line.split(" = ")[0] for line in C.list_keys().splitlines()
                                               if not line.startswith(" ")}
