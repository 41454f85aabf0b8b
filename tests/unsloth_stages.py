"""python tests/unsloth_stages.py MODE REPORT [key=value ...]: 02 then 03 in one process, for
tests/test_unsloth_cpu.py.

MODE `unsloth` imports Unsloth where 02 does on a GPU: inside ``models.select_backend``, after 02's
own setup (``select_backend`` still answers `hf`: this machine has no GPU). It needs
UNSLOTH_ALLOW_CPU=1, Unsloth's CPU mode. MODE `plain` runs the stages as they run here, with no
Unsloth. Either way 02 trains with model.backend=hf and 03 merges and evaluates; REPORT gets a
JSON record of the exit codes, what was imported before Unsloth, and which of the library
functions our path calls Unsloth replaced.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

CALLED = (
    "transformers.Trainer.train",
    "transformers.Trainer.training_step",
    "transformers.Trainer.prediction_step",
    "transformers.Trainer._load_optimizer_and_scheduler",
    "transformers.PreTrainedModel.from_pretrained",
    "transformers.PreTrainedModel.save_pretrained",
    "transformers.PreTrainedModel.enable_input_require_grads",
    "transformers.GenerationMixin.generate",
    "transformers.masking_utils.create_causal_mask",
    "transformers.integrations.sdpa_attention.sdpa_attention_forward",
    "trl.SFTTrainer.__init__",
    "trl.SFTTrainer.compute_loss",
    "peft.get_peft_model",
    "peft.PeftModel.from_pretrained",
    "peft.PeftModel.save_pretrained",
    "peft.LoraModel.merge_and_unload",
    "datasets.Dataset.map",
    "datasets.Dataset.filter",
)
"""Library functions 02 and 03 call (directly or through the Trainer)."""

BEFORE_UNSLOTH = ("transformers", "trl", "peft", "huggingface_hub")
"""Unsloth patches these when imported; imported before it, they run unpatched (Unsloth's
`_gpu_init.py` warns for the first three; its Hub fixes must also come first)."""


def resolve(dotted: str):
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def defined_in(func) -> str:
    code = getattr(getattr(func, "__func__", func), "__code__", None)
    return code.co_filename if code is not None else ""


def main() -> int:
    mode, report_file, *overrides = sys.argv[1:]
    from prodesc import models, train

    info: dict = {"mode": mode}
    if mode == "unsloth":
        chosen = models.select_backend

        def select_backend(cfg, family=None):
            backend = chosen(cfg, family)
            info["imported_before"] = [m for m in BEFORE_UNSLOTH if m in sys.modules]
            start = time.monotonic()
            import unsloth

            info["import_s"] = round(time.monotonic() - start, 1)
            info["version"] = unsloth.__version__
            return backend

        models.select_backend = select_backend
    start = time.monotonic()
    info["train_rc"] = train.main(["--preset", "cpu", *overrides])
    info["train_s"] = round(time.monotonic() - start, 1)
    from prodesc import merge

    start = time.monotonic()
    info["merge_rc"] = merge.main(["--preset", "cpu", *overrides])
    info["merge_s"] = round(time.monotonic() - start, 1)
    info["unsloth_imported"] = "unsloth" in sys.modules
    if mode == "unsloth":
        import unsloth
        import unsloth_zoo

        roots = [str(Path(m.__file__).parent) for m in (unsloth, unsloth_zoo)]
        roots.append(str(Path.cwd() / "unsloth_compiled_cache"))  # Unsloth writes generated code here
        info["replaced"] = [name for name in CALLED if defined_in(resolve(name)).startswith(tuple(roots))]
    else:
        try:
            import unsloth  # noqa: F401
        except Exception as err:
            info["import_error"] = f"{type(err).__name__}: {err}"
    Path(report_file).write_text(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
