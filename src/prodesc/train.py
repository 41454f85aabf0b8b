"""python src/02_sft_qlora.py [--preset NAME] [--root DIR] [key=value ...]

Fine-tune the model with LoRA (QLoRA with model.load_in_4bit=true on a GPU) on the prepared data
from 01_prepare.py, and write the adapter to <root>/runs/<run>/adapter/. Decoder-only models train
with TRL's SFTTrainer; encoder-decoder ones (FLAN-T5, model.family=seq2seq) with transformers'
Seq2SeqTrainer (prompt into the encoder, description as the decoder's labels).

Resumes by itself: with resume=auto (the default) a re-run continues from the newest complete
checkpoint in runs/<run>/checkpoints/ (a half-written one is skipped), and a re-run of a finished
run with the same settings does nothing ("already trained"). overwrite=true deletes the run's
checkpoints and starts over; without it, nothing trained is thrown away. In Colab, checkpoints
are written to the VM's disk and copied to Drive in the background. Also runs under
`accelerate launch` (several GPUs, or 2 CPU processes).

Writes: adapter/ (LoRA weights, tokenizer, prompt_template.json), config.yaml,
train_summary.json, logs/ (TensorBoard, loss_history.csv, loss_curve.png).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from prodesc import atomic, checkpoints, family, models, runlock, sampling, templates, trainlog
from prodesc.cli import log, run_stage
from prodesc.config import Config
from prodesc.errors import ConfigError, UserError
from prodesc.paths import RunPaths
from prodesc.prepared import open_prepared, read_manifest

TENSORBOARD_ENV = "TENSORBOARD_LOGGING_DIR"


RESUME_LOCKED_KEYS = (
    "seed",
    "train.seed",
    "model.name",
    "model.family",
    "model.load_in_4bit",
    "model.load_in_8bit",
    "model.max_length",
    "lora.r",
    "lora.alpha",
    "lora.dropout",
    "lora.target_modules",
    "train.epochs",
    "train.max_steps",
    "train.batch_size",
    "train.grad_accum",
    "train.learning_rate",
    "train.lr_scheduler",
    "train.warmup",
    "train.optim",
    "train.overlong",
)
"""Keys that may not change between a checkpoint and its resume: they change the model, the
training examples, the data order or the learning-rate schedule, so the resumed run would not continue the same training."""

# Batching: group_by_length (pad each batch to its longest row) or packing=True (TRL's bfd packing,
# padding-free). Measured 2026-11-22 on the 2-core build machine (other jobs running beside it),
# SmolLM2-135M fp32 LoRA r=16 all-linear, the cpu preset (batch 8, max_length 256, chat template),
# 400 rows whose descriptions vary from ~10 to ~160 words; real tokens = non-padding tokens:
#   same process, same model, 1 thread, steps timed alone:  group_by_length 125.3 tokens/s,
#                                                           packing          91.2 tokens/s
#   separate 10-step runs, 2 threads, per CPU-second:       group_by_length 101.5, packing 41.8
#   (group_by_length alone, machine quiet: 192.9 real tokens/s wall, 8036 tokens in 42 s)
# Packing was also heavier (peak RSS 8.0 GB vs 5.3-7.4 GB). So: group_by_length.
BATCHING = "group_by_length"


def main(argv: list[str] | None = None) -> int:
    return run_stage("02_sft_qlora.py", __doc__, argv, runlock.locked(_body, "02_sft_qlora"))  # one writer per run


# --------------------------------------------------------------------------- the recipe


def _body(cfg: Config, paths: RunPaths) -> None:
    if already_trained(cfg, paths):
        log(f"already trained: {paths.adapter} (overwrite=true to train again)")
        return
    # setup
    models.import_unsloth_first(cfg)  # before huggingface_hub, transformers, TRL and PEFT
    fam = family.for_config(cfg)  # reads config.json (a hub model's with huggingface_hub)
    backend = models.select_backend(cfg, fam)
    with local_datasets_cache():  # imports datasets, and with it huggingface_hub: after Unsloth
        _train(cfg, paths, fam, backend)


def _train(cfg: Config, paths: RunPaths, fam: family.Family, backend: str) -> None:
    template, data = load_prepared(cfg, paths)
    data_id = prepared_fingerprint(paths)
    dirs = checkpoints.checkpoint_dirs(cfg, paths)
    args = training_args(cfg, paths, dirs, backend, fam)
    main_proc = args.process_index == 0
    with args.main_process_first(local=False, desc="resume check"):
        resume = plan_start(cfg, paths, dirs, is_main=main_proc, data_id=data_id)
        model_path = models.resolve_model_path(cfg, paths)
    if resume is not None and checkpoints.reached_max_steps(resume):
        if main_proc:  # stopped after its last checkpoint, before adapter/ was written
            finish_from_checkpoint(cfg, paths, resume, template)
        return
    model, tokenizer, backend = models.load_for_training(cfg, model_path, backend, fam)
    check_template_fits(template, tokenizer, cfg)
    data, dropped = drop_overlong(data, tokenizer, cfg.model.max_length, fam, cfg.train.overlong)
    trainer = build_trainer(cfg, paths, dirs, args, model, tokenizer, data, fam)
    if backend == "hf":
        models.adapter_in_float32(trainer.model)  # as a resume loads it; Unsloth's path is left as it sets it up
    start_tokens = checkpoints.tokens_in_checkpoint(resume)

    # train
    log(f"training {cfg.model.name} ({fam.name}, {backend}, {precision_name(args)}) "
        + (f"from {resume}" if resume else "from scratch"))
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    eval_loss = final_eval_loss(trainer, data)

    # cleanup
    for cb in trainer.callback_handler.callbacks:
        if hasattr(cb, "wait"):  # the Drive mirror: let the last copies finish
            cb.wait()
    if main_proc:
        rows = trainlog.write_history(paths.logs / "loss_history.csv", trainer.state.log_history)
        trainlog.plot_history(paths.logs / "loss_curve.png", rows, f"{cfg.run_name}: {cfg.model.name}")
        save_adapter(cfg, paths, trainer.model, tokenizer, template)
        summary = train_summary(cfg, trainer, result, backend, args, start_tokens, eval_loss, resume)
        summary["dropped_overlong"] = dropped
        summary["family"] = fam.name
        summary["tokens_counted"] = fam.tokens_counted
        atomic.write_json(paths.run / "train_summary.json", summary)
        log(f"adapter: {paths.adapter}")
        print(json.dumps(summary, indent=2))
        gpu = summary.get("peak_gpu_reserved_mb")
        log(f"trained {summary['steps']} steps in {_duration(summary['runtime_s'])}; peak memory: "
            + (f"GPU {gpu / 1024:.1f} GiB reserved, " if gpu else "") + f"RAM {summary['peak_rss_mb'] / 1024:.1f} GiB")
    if args.world_size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()


# --------------------------------------------------------------------------- data


@contextlib.contextmanager
def local_datasets_cache() -> Iterator[None]:
    """``datasets`` writes what map/filter make (``cache-*.arrow``) next to the data they read: into
    the prepared data's folder, which is on Drive in Colab. Inside this block they go to a temporary
    folder on the local disk instead, deleted when the process ends (``datasets``' behaviour with
    caching off); 02 recomputes them on every run (seconds)."""
    import datasets

    was_on = datasets.is_caching_enabled()
    datasets.disable_caching()
    try:
        yield
    finally:
        if was_on:
            datasets.enable_caching()


def load_prepared(cfg: Config, paths: RunPaths) -> tuple[templates.PromptTemplate, Any]:
    """The prepared DatasetDict and its template, checked against the config."""
    manifest, data = open_prepared(paths, ("train", "validation"), ("prompt", "completion"))
    used = templates.from_dict(manifest["template"], where=str(paths.prepared_manifest))
    wanted = expected_template(cfg, paths)
    if wanted is not None and wanted != used:
        raise UserError(
            f"the prepared data at {paths.prepared} was made with template '{used.name}', but "
            f"data.template={cfg.data.template} resolves to a different template: run 01_prepare.py "
            "with overwrite=true, or set data.template to the one used"
        )
    if len(data["train"]) == 0:
        raise UserError(f"{paths.prepared_dataset} has no training rows: check data.train_size")
    keep = ["prompt", "completion"]
    data = {split: data[split].select_columns(keep) for split in ("train", "validation")}
    return used, data


def check_template_fits(template: templates.PromptTemplate, tokenizer: Any, cfg: Config) -> None:
    """A chat template needs a tokenizer with one (FLAN-T5's has none): say so before training."""
    if template.kind == "chat" and not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"the prepared data uses the chat prompt template '{template.name}', but the tokenizer of "
            f"{cfg.model.name} has no chat template (e.g. FLAN-T5): use a text template such as "
            "data.template=ptbr_qa or data.template=descfmt and run 01_prepare.py again"
        )


def drop_overlong(
    data: dict[str, Any], tokenizer: Any, max_length: int, fam: family.Family = family.CAUSAL,
    mode: str = "drop",
) -> tuple[dict[str, Any], dict[str, int]]:
    """Drop examples longer than ``model.max_length`` instead of letting the trainer truncate them
    (causal: prompt + completion; seq2seq: the prompt and the completion each).

    A truncated example loses its closing EOS, and training on many of them teaches the model not
    to stop (measured: on the bundled sample with max_length 128, the adapter's EOS log-probability
    after a reference description fell from -4.3 to -6.6 in 8 steps, and greedy outputs rambled).
    ``mode="truncate"`` (``train.overlong``, decoder-only models) keeps them all: TRL cuts each
    to max_length. Returns the kept data and, per split, how many examples were dropped.
    """
    if mode == "truncate":
        if fam.name != family.CAUSAL.name:
            raise UserError(
                f"train.overlong=truncate is for decoder-only models; this is a {fam.name} model: "
                "use train.overlong=drop (or raise model.max_length)"
            )
        return data, {split: 0 for split in data}
    kept, dropped = {}, {}
    for split, ds in data.items():
        keep = ds.filter(lambda ex: fam.example_length(ex, tokenizer) <= max_length, desc=f"length check ({split})")
        kept[split], dropped[split] = keep, len(ds) - len(keep)
        if dropped[split]:
            log(f"{split}: dropped {dropped[split]} of {len(ds)} examples longer than model.max_length="
                f"{max_length} tokens (raise model.max_length or lower data.max_content_chars to keep them)")
    if not len(kept["train"]):
        raise UserError(
            f"every training example is longer than model.max_length={max_length} tokens: raise "
            "model.max_length or lower data.max_content_chars and re-run 01_prepare.py"
        )
    return kept, dropped


def expected_template(cfg: Config, paths: RunPaths) -> templates.PromptTemplate | None:
    """The template ``data.template`` names, or None when its YAML file is no longer readable."""
    try:
        return templates.template_for(cfg, paths)
    except ConfigError as err:
        if cfg.data.template in templates.BUILTIN:
            raise
        log(f"warning: cannot re-read data.template ({err}); using the template stored with the data")
        return None


def already_trained(cfg: Config, paths: RunPaths) -> bool:
    """True when there is nothing to do: the run's adapter exists and this is a plain re-run
    (resume=auto, no overwrite) with the same training settings, e.g. *Run all* again after a
    disconnect. A re-run with other settings is refused by plan_start (overwrite=true or a new run)."""
    if cfg.overwrite or cfg.resume.strip() != "auto" or not paths.adapter.exists():
        return False
    try:
        check_resume_config(cfg, paths)
    except UserError:
        return False
    return True


def plan_start(
    cfg: Config, paths: RunPaths, dirs: checkpoints.CheckpointDirs, is_main: bool = True, data_id: str = ""
) -> Path | None:
    """Decide where training starts: a checkpoint to resume, or None for a fresh start.

    Refuses to silently throw away a run's work: starting over while checkpoints or an adapter
    exist needs overwrite=true. Refuses to resume when the training settings, or the prepared data
    (``data_id``, its manifest's fingerprint), changed since the run started. On the main process it
    also clears what a fresh start replaces, removes incomplete checkpoints newer than the resume
    point, and saves config.yaml and the data's fingerprint.
    """
    existing = [c for d in dirs.search() for c in checkpoints.list_checkpoints(d)]
    mode = cfg.resume.strip()
    if paths.adapter.exists() and not cfg.overwrite:
        raise UserError(
            f"run '{cfg.run_name}' is already trained (adapter at {paths.adapter}): pass overwrite=true "
            "to train it again from scratch, or choose another run name with paths.run=NAME"
        )
    resume: Path | None = None
    if cfg.overwrite and mode == "auto":
        resume = None
    elif mode == "auto":
        resume, incomplete = checkpoints.newest_complete_checkpoint(dirs, warn=is_main)
        if resume is not None and is_main:
            for ckpt in incomplete:
                log(f"removing incomplete checkpoint {ckpt} (newer than {resume.name})")
                checkpoints.remove_tree(ckpt, truncate=dirs.mirror is not None and ckpt.is_relative_to(dirs.mirror))
    elif mode == "no":
        resume = None
    else:
        resume = paths.inside_root(mode, "resume")
        if not resume.is_dir():
            raise UserError(f"resume={mode}: {resume} is not a folder; use resume=auto, resume=no or a checkpoint folder")
        problem = checkpoints.checkpoint_problem(resume)
        if problem:
            raise UserError(f"resume={mode}: cannot resume from {resume}: {problem}")

    if resume is None and existing:
        if not cfg.overwrite and mode == "no":
            raise UserError(
                f"run '{cfg.run_name}' has checkpoints in {existing[0].parent} and resume=no would start "
                "over: pass overwrite=true to delete them and start over, or resume=auto to continue from "
                "the newest complete one (or paths.run=NAME for a new run)"
            )
        first_save_cut = mode == "auto" and len(existing) == 1 and not paths.adapter.exists()
        if first_save_cut and is_main:  # killed while saving its first checkpoint: nothing to lose
            log(f"{existing[0]} is the run's only checkpoint and was cut off while saving: starting over")
            checkpoints.remove_tree(existing[0], truncate=dirs.mirror is not None and existing[0].is_relative_to(dirs.mirror))
        elif not cfg.overwrite and not first_save_cut:
            raise UserError(
                f"run '{cfg.run_name}' has checkpoints in {existing[0].parent} but no complete one to "
                "resume from (see the warnings above): pass overwrite=true to delete them and start over, "
                "or paths.run=NAME for a new run"
            )
        if is_main and cfg.overwrite:
            for d in dirs.search():
                if d.is_dir():
                    log(f"overwrite=true: deleting old checkpoints in {d}")
                    checkpoints.remove_tree(d, truncate=d == dirs.mirror)
    if resume is not None:
        check_resume_config(cfg, paths)
        check_resume_data(paths, data_id)
    if is_main:
        if resume is None:
            history = paths.logs / "loss_history.csv"
            history.unlink(missing_ok=True)
            if data_id:
                atomic.write_json(paths.data_record, {"prepared": str(paths.prepared), "fingerprint": data_id})
        atomic.write_text(paths.config_file, cfg.to_yaml())
    return resume


def prepared_fingerprint(paths: RunPaths) -> str:
    """The fingerprint in the prepared data's manifest (settings, seed, template, the source file's
    size, the data format): it changes when 01 rebuilds the data from another source file or with
    a newer prodesc."""
    manifest = read_manifest(paths.prepared_manifest) or {}
    return str(manifest.get("fingerprint", ""))


def check_resume_data(paths: RunPaths, data_id: str) -> None:
    """Refuse to resume on prepared data other than the run started with. A run started by an
    older prodesc has no record: nothing to compare."""
    record = paths.data_record
    if not data_id or not record.is_file():
        return
    try:
        saved = json.loads(record.read_text(encoding="utf-8"))["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{record} is unreadable ({err}): fix or delete it to resume") from None
    if saved != data_id:
        raise UserError(
            f"the prepared data at {paths.prepared} changed since this run's checkpoints were written "
            "(01 rebuilt it from another source file or with a newer prodesc): resuming would continue on "
            "other rows. Pass overwrite=true to start over on the new data (or paths.run=NAME for a new run)"
        )


def check_resume_config(cfg: Config, paths: RunPaths) -> None:
    """Refuse to resume when a key that shapes the training changed since the run started."""
    saved_file = paths.config_file
    if not saved_file.is_file():
        return
    try:
        saved = yaml.safe_load(saved_file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{saved_file} is unreadable ({err}): fix or delete it to resume") from None
    current = cfg.to_dict()
    for key in RESUME_LOCKED_KEYS:
        old, new = _get(saved, key), _get(current, key)
        if old is not _MISSING and old != new:
            raise UserError(
                f"config key '{key}' changed since this run's checkpoints were written ({old!r} → {new!r}): "
                f"resuming would not continue the same training. Set {key}={_show(old)} to resume, "
                "or overwrite=true to start over (or paths.run=NAME for a new run)"
            )


_MISSING = object()


def _get(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


# --------------------------------------------------------------------------- trainer


def precision_flags(cfg: Config) -> tuple[bool, bool]:
    """(bf16, fp16) for ``train.precision``: `auto` = fp32 on CPU; on a GPU the model's compute
    dtype (:func:`prodesc.models.compute_dtype`: with model.dtype=auto, bf16 where the GPU has it
    in hardware, else fp16)."""
    cuda = models.cuda_available()
    choice = cfg.train.precision
    if choice == "auto":
        if not cuda:
            return False, False
        name = str(models.compute_dtype(cfg)).removeprefix("torch.")
        return name == "bfloat16", name == "float16"
    if choice == "fp16" and not cuda:
        raise UserError("train.precision=fp16 needs a GPU: use train.precision=fp32 (or auto) on CPU")
    return choice == "bf16", choice == "fp16"


def precision_name(args: Any) -> str:
    return "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"


def training_args(
    cfg: Config, paths: RunPaths, dirs: checkpoints.CheckpointDirs, backend: str, fam: family.Family | None = None
) -> Any:
    """The trainer's arguments: the same for every family, plus the family's own (its arguments
    class; batching and sequence length for TRL's SFTConfig, length grouping for seq2seq)."""
    fam = fam or family.for_config(cfg)
    bf16, fp16 = precision_flags(cfg)
    t = cfg.train
    warmup: float | int = t.warmup if t.warmup < 1 else int(t.warmup)
    return fam.args_class()(
        output_dir=str(dirs.output),
        seed=cfg.train_seed,
        data_seed=cfg.train_seed,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=warmup,
        weight_decay=t.weight_decay,
        # Stated, not left to the defaults: Unsloth's SFTConfig changes them (unsloth/models/rl.py:
        # adamw_8bit, logging_nan_inf_filter=False, torch_empty_cache_steps=250), so both backends
        # train alike. A NaN/inf loss is logged as it is (a diverging fp16 run shows), and the GPU
        # cache is not emptied during training (transformers' default).
        optim=t.optim,
        logging_nan_inf_filter=False,
        torch_empty_cache_steps=None,
        bf16=bf16,
        fp16=fp16,
        use_cpu=not models.cuda_available(),
        # Unsloth does its own (faster) checkpointing, set up in get_peft_model.
        gradient_checkpointing=t.gradient_checkpointing and backend != "unsloth",
        gradient_checkpointing_kwargs={"use_reentrant": False},
        **fam.args_extras(cfg, BATCHING),
        logging_steps=t.logging_steps,
        logging_first_step=False,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if t.eval_steps else "no",
        eval_steps=t.eval_steps or None,
        report_to=["tensorboard"],
        ddp_find_unused_parameters=False,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
    )


def build_trainer(cfg, paths, dirs, args, model, tokenizer, data, fam: family.Family | None = None) -> Any:
    """The family's trainer (causal: TRL SFTTrainer; seq2seq: Seq2SeqTrainer) with the shared
    callbacks (loss history, Drive mirror), validation split and TensorBoard folder."""
    fam = fam or family.of_model(model)
    callbacks = [
        trainlog.loss_callback(paths.logs, title=f"{cfg.run_name}: {cfg.model.name}"),
        trainlog.eta_callback(lambda per_step, step, max_steps: estimate(cfg, per_step, step, max_steps)),
    ]
    if dirs.mirror is not None:
        callbacks.append(checkpoints.mirror_callback(dirs.mirror, cfg.train.save_total_limit))
    eval_ds = data["validation"] if len(data["validation"]) else None
    if eval_ds is None:
        args.eval_strategy = "no"
    # transformers 5 has no logging_dir: its TensorBoard callback reads this variable when the
    # Trainer is built. Set it for that moment only.
    before = os.environ.get(TENSORBOARD_ENV)
    os.environ[TENSORBOARD_ENV] = str(paths.logs)
    try:
        trainer = fam.trainer(
            model=model, args=args, data=data, eval_dataset=eval_ds, tokenizer=tokenizer, callbacks=callbacks
        )
        return sampling.install(trainer, cfg.train_seed)  # epoch order from (seed, epoch): resumes reproduce it
    finally:
        if before is None:
            os.environ.pop(TENSORBOARD_ENV, None)
        else:
            os.environ[TENSORBOARD_ENV] = before


def full_run_steps(cfg: Config) -> int | None:
    """Optimizer steps of ``cfg``'s training before any data is read: train.max_steps, or the
    epochs over a train split given as a count (None when it is a fraction of the file)."""
    if cfg.train.max_steps > 0:
        return cfg.train.max_steps
    if cfg.data.train_size < 1:
        return None
    return math.ceil(cfg.train.epochs * cfg.data.train_size / (cfg.train.batch_size * cfg.train.grad_accum))


def estimate(cfg: Config, per_step: float, step: int, max_steps: int) -> str:
    """02's one-line time estimate from the measured seconds per step: this run's remaining
    time and, for a ``quick`` run, the full run's training time."""
    text = (f"{per_step:.2f} s a step: this run ends its {max_steps} steps in "
            f"~{_duration(per_step * (max_steps - step))}")
    full = cfg.full_run
    if full is None:
        return text
    steps = full_run_steps(full)
    if steps is None:
        rows = 1000 / (full.train.batch_size * full.train.grad_accum)
        return (f"{text}; the full run (without quick) trains ~{_duration(per_step * rows * full.train.epochs)}"
                " per 1,000 training rows (estimate, validation not counted)")
    return (f"{text}; the full run (without quick, {steps:,} steps) would train "
            f"~{_duration(per_step * steps)} (estimate, validation not counted)")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def final_eval_loss(trainer: Any, data: dict) -> float | None:
    if not len(data["validation"]):
        return None
    hist = trainer.state.log_history
    last = [h for h in hist if "eval_loss" in h]
    if last and last[-1].get("step") == trainer.state.global_step:
        return float(last[-1]["eval_loss"])
    metrics = trainer.evaluate()
    return float(metrics["eval_loss"])


CHECKPOINT_ONLY = ("optimizer.pt", "scheduler.pt", "scaler.pt", "training_args.bin", checkpoints.TRAINER_STATE)
"""Files of a checkpoint that belong to the Trainer, not to the adapter (with rng_state*.pth)."""


def finish_from_checkpoint(cfg: Config, paths: RunPaths, ckpt: Path, template: templates.PromptTemplate) -> None:
    """The run stopped after its last checkpoint but before adapter/ was written: that checkpoint
    holds the finished adapter. Resuming from it would make the Trainer take one step more than
    planned (it checks max_steps only after a step; found by bench/kill_trials.py), so adapter/,
    the loss history and the summary are written from the checkpoint instead."""
    state = json.loads((ckpt / checkpoints.TRAINER_STATE).read_text(encoding="utf-8"))
    history = state.get("log_history") or []
    log(f"{ckpt.name} is the run's last step ({state['global_step']} of {state['max_steps']}): "
        "writing the adapter from it")
    rows = trainlog.write_history(paths.logs / "loss_history.csv", history)
    trainlog.plot_history(paths.logs / "loss_curve.png", rows, f"{cfg.run_name}: {cfg.model.name}")
    with atomic.build_dir(paths.adapter, overwrite=True) as tmp:
        for f in sorted(ckpt.iterdir()):
            if f.is_file() and f.name not in CHECKPOINT_ONLY and not f.name.startswith("rng_state"):
                shutil.copy2(f, tmp / f.name)
        atomic.write_json(tmp / "prompt_template.json", template.to_dict())
    losses = [h["loss"] for h in history if "loss" in h]
    evals = [h for h in history if "eval_loss" in h]
    summary = {
        "run": cfg.run_name,
        "model": cfg.model.name,
        "steps": state["global_step"],
        "epochs": round(float(state.get("epoch") or 0.0), 4),
        "resumed_from": str(ckpt),
        "finished_from_checkpoint": True,
        "train_tokens_seen": int(state.get("num_input_tokens_seen") or 0),
        "final_train_loss": float(losses[-1]) if losses else None,
        "final_eval_loss": (
            float(evals[-1]["eval_loss"]) if evals and evals[-1].get("step") == state["global_step"] else None
        ),
    }
    atomic.write_json(paths.run / "train_summary.json", summary)
    log(f"adapter: {paths.adapter}")
    print(json.dumps(summary, indent=2))


def save_adapter(cfg: Config, paths: RunPaths, model: Any, tokenizer: Any, template: templates.PromptTemplate) -> None:
    """adapter/: LoRA weights (safetensors) + tokenizer + prompt_template.json, in one rename."""
    with atomic.build_dir(paths.adapter, overwrite=True) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        atomic.write_json(tmp / "prompt_template.json", template.to_dict())


def peak_memory() -> dict[str, Any]:
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    out: dict[str, Any] = {"peak_rss_mb": round(rss_mb, 1)}
    if models.cuda_available():
        import torch

        out["peak_gpu_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out["peak_gpu_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    return out


def train_summary(cfg, trainer, result, backend, args, start_tokens, eval_loss, resume) -> dict[str, Any]:
    state = trainer.state
    runtime = float(result.metrics.get("train_runtime", 0.0))
    tokens = int(state.num_input_tokens_seen)
    session_tokens = tokens - start_tokens
    train_losses = [h["loss"] for h in state.log_history if "loss" in h]
    return {
        "run": cfg.run_name,
        "model": cfg.model.name,
        "backend": backend,
        "precision": precision_name(args),
        "optim": str(getattr(args.optim, "value", args.optim)),
        "world_size": args.world_size,
        "steps": state.global_step,
        "epochs": round(float(state.epoch or 0.0), 4),
        "resumed_from": str(resume) if resume else None,
        "runtime_s": round(runtime, 2),
        "train_tokens_seen": tokens,
        "train_tokens_this_session": session_tokens,
        "real_tokens_per_s": round(session_tokens / runtime, 2) if runtime > 0 else None,
        **peak_memory(),
        "final_train_loss": float(train_losses[-1]) if train_losses else None,
        "mean_train_loss_this_session": float(result.training_loss),
        "final_eval_loss": eval_loss,
    }
