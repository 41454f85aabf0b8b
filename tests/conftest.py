"""Shared test fixtures: a tiny offline model and a stand-in for stage 01's prepared data.

Nothing here downloads anything. The tiny model is a 2-layer Llama with random weights and a
small byte-level BPE tokenizer trained on synthetic product text, with SmolLM2's ChatML chat
template, so chat and text templates both work. It trains in well under a second per step.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PYTHON = sys.executable

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)

_ADJ = ["durable", "compact", "stainless", "lightweight", "classic", "premium", "soft", "portable"]
_NOUN = ["water bottle", "backpack", "desk lamp", "phone case", "coffee mug", "yoga mat", "kettle"]
_BRAND = ["Acme", "Nordic", "Zen", "Atlas", "Kiva", "Orbit"]
_FEAT = [
    "keeps drinks cold for hours", "fits in any bag", "is easy to clean", "comes in six colors",
    "is made from recycled materials", "has a two year warranty", "is safe for the dishwasher",
]


def synthetic_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` product rows (uid, title, content) with a learnable title → description pattern."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        brand, adj, noun = rng.choice(_BRAND), rng.choice(_ADJ), rng.choice(_NOUN)
        feats = rng.sample(_FEAT, k=rng.randint(1, 3))
        title = f"{brand} {adj.title()} {noun.title()} {rng.randint(1, 9) * 100} ml"
        content = f"This {adj} {noun} from {brand} " + " and ".join(feats) + "."
        rows.append({"uid": f"B{i:06d}", "title": title, "content": content})
    return rows


def write_prepared(paths, template_name: str = "chat", n_train: int = 48, n_val: int = 8, n_test: int = 8,
                   extra: tuple[str, ...] = ()) -> None:
    """Run the real stage 01 on ``synthetic_rows`` written as a raw JSON Lines file, into the
    prepared folder ``paths`` expects (``data.name`` pins the folder name); ``extra``: more
    overrides."""
    from prodesc.config import load_config
    from prodesc.prepare import prepare

    raw = paths.root / "synthetic_trn.jsonl"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(n_train + n_val + n_test)))
    cfg = load_config("cpu", [
        f"data.source={raw}", f"data.name={paths.prepared_name}", f"data.template={template_name}",
        f"data.train_size={n_train}", f"data.validation_size={n_val}", f"data.test_size={n_test}",
        "data.dedup=false", "overwrite=true", *extra,
    ])
    prepare(cfg, paths)


def build_tiny_model(target: Path, hidden_size: int = 32, init_std: float = 0.02) -> Path:
    """A random 2-layer Llama (hidden 32) + a ~660-token byte-level BPE tokenizer, saved to ``target``.
    bitsandbytes' 4-bit layers need ``hidden_size=64`` on some CPUs (its packed CPU format wants
    in_features >= 64 and out_features a multiple of 32). ``init_std``: the weights' standard
    deviation; with transformers' default 0.02 its greedy output is newlines (empty text), with 0.2
    it writes different text for different titles."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from prodesc.templates import BUILTIN

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    corpus = [f"{r['title']}\n{r['content']}" for r in synthetic_rows(300, seed=1)]
    corpus += [t.prompt + t.completion + t.system for t in BUILTIN.values()] * 5
    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<|endoftext|>", bos_token="<|im_start|>",
        eos_token="<|im_end|>", pad_token="<|im_end|>",
    )
    tokenizer.chat_template = CHATML
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, initializer_range=init_std,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    return target


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny64_model_dir(tmp_path_factory) -> Path:
    """The tiny Llama at hidden size 64, for bitsandbytes' 4-bit layers on CPU."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny64") / "tiny-llama-64", hidden_size=64)


TINY_TRAIN = [
    "train.max_steps=12", "train.batch_size=4", "train.save_steps=3", "train.eval_steps=6",
    "train.logging_steps=1", "train.save_total_limit=5", "train.warmup=2", "train.learning_rate=1e-3",
    "lora.r=4", "lora.alpha=8", "lora.dropout=0.1", "model.max_length=128", "model.backend=hf",
]
"""Overrides for a 12-step run on the tiny model (a checkpoint every 3 steps)."""


def tiny_overrides(model_dir: Path, root: Path, *extra: str) -> list[str]:
    return [f"model.name={model_dir}", f"paths.root={root}", "paths.run=tiny", *TINY_TRAIN, *extra]


def stage_paths(overrides: list[str]):
    """(config, RunPaths) exactly as the stage resolves them for the cpu preset + ``overrides``."""
    from prodesc.config import load_config
    from prodesc.paths import RunPaths, resolve_root

    cfg = load_config("cpu", overrides)
    root, _ = resolve_root(cfg.paths.root)
    return cfg, RunPaths.from_config(cfg, root)


def knob_values(cfg, **changes) -> list:
    """The web page's knob values (prodesc.web.KNOBS order) for ``cfg``, with ``changes``."""
    from prodesc.web import KNOBS

    values = {name: (cfg.seed if name == "seed" else getattr(cfg.eval, name)) for name in KNOBS}
    values.update(changes)
    return [values[name] for name in KNOBS]


def stage_env() -> dict[str, str]:
    """Environment for a stage in a subprocess: src on the path, offline, no Colab markers."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.pop("PRODESC_ROOT", None)
    for marker in ("COLAB_RELEASE_TAG", "COLAB_GPU", "COLAB_BACKEND_VERSION"):
        env.pop(marker, None)
    return env


def run_stage_subprocess(script: str, args: list[str], timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, str(SRC / script), "--preset", "cpu", *args],
        env=stage_env(), capture_output=True, text=True, timeout=timeout, **kw,
    )


# --------------------------------------------------------------------------- 03 merge/evaluate


def write_tiny_adapter(model_dir: Path, folder: Path, template_name: str = "chat", seed: int = 0,
                       base_name: str | None = None) -> Path:
    """A LoRA adapter for the tiny model laid out like 02's adapter/ (weights, tokenizer,
    prompt_template.json). Its weights are random (not zero), so it changes the outputs;
    ``base_name`` overwrites the base model recorded in adapter_config.json."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prodesc.templates import BUILTIN

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    torch.manual_seed(seed)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False,
                      task_type="CAUSAL_LM")
    get_peft_model(model, lora).save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(folder))
    (folder / "prompt_template.json").write_text(json.dumps(BUILTIN[template_name].to_dict()))
    if base_name is not None:
        cfg_file = folder / "adapter_config.json"
        data = json.loads(cfg_file.read_text())
        data["base_model_name_or_path"] = base_name
        cfg_file.write_text(json.dumps(data))
    return folder


def write_embedded_adapter(cfg, paths) -> None:
    """A small random LoRA (r=4 on q_proj and v_proj, B ~ N(0, 0.02), seed 0) on the embedded
    SmolLM2-135M, written as 02 writes runs/<run>/adapter/ (chat template): 03 and 05 on the real
    model without training it first."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prodesc import atomic, models
    from prodesc.templates import BUILTIN

    base = models.resolve_model_path(cfg, paths)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    peft_model.save_pretrained(str(paths.adapter))
    AutoTokenizer.from_pretrained(base).save_pretrained(str(paths.adapter))
    atomic.write_json(paths.adapter / "prompt_template.json", BUILTIN["chat"].to_dict())


EVAL_OVERRIDES = ["eval.rows=6", "eval.batch_size=4", "eval.max_new_tokens=8"]
"""A quick evaluation on the tiny model: 6 test rows, 8 new tokens."""


@pytest.fixture
def eval_run(tiny_model_dir, tmp_path):
    """(overrides, paths) for 03 on the tiny model: prepared chat data, an adapter, and a
    checkpoint-2 adapter, with overrides that also evaluate that checkpoint."""
    overrides = tiny_overrides(tiny_model_dir, tmp_path / "root", *EVAL_OVERRIDES, "eval.checkpoints=checkpoint-2")
    _, paths = stage_paths(overrides)
    write_prepared(paths)
    write_tiny_adapter(tiny_model_dir, paths.adapter, seed=0)
    write_tiny_adapter(tiny_model_dir, paths.checkpoints / "checkpoint-2", seed=1)
    return overrides, paths
