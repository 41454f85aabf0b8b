"""Kill trials: SIGKILL the stages at random moments, re-run them, and check the results.

    python bench/kill_trials.py [--trials-02 24] [--trials-01 4] [--trials-03 4] [--sample-03]
                                [--seed 0] [--workdir DIR] [--keep]

What a disconnected Colab runtime does to a stage, done on purpose, many times:

- **02 (training)**, on a tiny random Llama built here (2 layers, 16 steps over 2.7 epochs, a
  checkpoint every 2 steps, dropout on): each *chain* starts a run and kills it again and again,
  every re-run resuming from what the previous one left; a chain ends with an uninterrupted re-run.
  Kill moments, drawn with the seed: a random delay after the start; the instant a new
  ``checkpoint-N`` folder appears (plus 0-40 ms, i.e. while it is being written); a random delay
  after a checkpoint is complete; the instant the final adapter's temporary folder appears; the
  instant loss_history.csv is being replaced. After each kill, whatever is on disk must be either
  absent or complete: every checkpoint that 02's completeness check accepts must load fully
  (trainer state, adapter config and weights, optimizer, scheduler, RNG), the adapter folder must
  be whole, logs and config parse. At the end of a chain the adapter must equal the uninterrupted
  run's (max |difference| <= 1e-6 on every tensor) and loss_history.csv must hold the same steps and
  losses.
- **01 (prepare)** on a ~40k-row generated trn.json-like file: killed at a random delay, while the
  dataset is written, or while the manifest is written; the prepared folder must then be absent or
  complete (manifest, Arrow splits with the manifest's row counts), and a re-run must produce the
  same splits as an uninterrupted run.
- **03 (merge + evaluate)**: killed at a random delay, while merged_fp16/ is built, during
  generation, or while the reports are written; merged_fp16/ must be absent or complete and every
  CSV/JSON/HTML/PNG present must be whole; a re-run must write the same side_by_side.csv and
  metrics as an uninterrupted run. With ``--sample-03`` 03 samples (``eval.do_sample=true``), so a
  run killed while generating must also go on sampling where it stopped.

Prints one line per trial (stage, moment, what was on disk, outcome) and the totals; exits 1 when
any trial fails. The tiny model and data come from tests/conftest.py; everything is written under
a temporary folder (or --workdir), removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
for _p in (SRC, REPO / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from conftest import build_tiny_model, stage_env, synthetic_rows  # noqa: E402  (the tests' tiny model)

from prodesc import checkpoints, trainlog  # noqa: E402
from prodesc.config import load_config  # noqa: E402
from prodesc.paths import RunPaths, resolve_root  # noqa: E402

MAX_ABS_DIFF = 1e-6
POLL_S = 0.001

TRAIN_02 = [
    "train.max_steps=16", "train.batch_size=4", "train.grad_accum=2", "train.save_steps=2",
    "train.save_total_limit=2", "train.eval_steps=4", "train.logging_steps=1", "train.warmup=2",
    "train.learning_rate=1e-3", "lora.r=4", "lora.alpha=8", "lora.dropout=0.1", "model.max_length=128",
    "model.backend=hf", "data.source=trn.jsonl", "data.train_size=48", "data.validation_size=8",
    "data.test_size=8", "data.dedup=false", "paths.run=kill",
]
"""02: 48 training rows, 8 a step -> 6 steps an epoch; 16 steps cross two epoch boundaries."""

EVAL_03 = ["eval.rows=8", "eval.batch_size=4", "eval.max_new_tokens=12", "eval.checkpoints=checkpoint-14"]

PREPARE_01 = ["data.source=trn.jsonl", "paths.run=kill01"]
ROWS_01 = 40_000


# --------------------------------------------------------------------------- records


@dataclass
class Trial:
    stage: str
    number: int
    moment: str
    on_disk: str = ""
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    group: str = ""
    """02: the chain whose final comparison also decides this trial."""
    killed: bool = True
    """False when the stage ended by itself before the kill moment came (01/03 only)."""

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def outcome(self) -> str:
        return "pass" if self.passed else "FAIL: " + "; ".join(self.problems)


@dataclass
class Report:
    trials: list[Trial] = field(default_factory=list)
    finals: list[tuple[str, str, bool]] = field(default_factory=list)
    """(group, what was compared, passed)"""
    seconds: float = 0.0

    @property
    def passed(self) -> int:
        return sum(t.passed for t in self.trials)

    @property
    def ok(self) -> bool:
        return bool(self.trials) and self.passed == len(self.trials) and all(ok for *_, ok in self.finals)

    def table(self) -> str:
        lines = [f"{'#':>3}  {'stage':<5}  {'kill moment':<46}  {'on disk after the kill':<58}  outcome"]
        for t in self.trials:
            note = f"  [{'; '.join(t.notes)}]" if t.notes else ""
            lines.append(f"{t.number:>3}  {t.stage:<5}  {t.moment:<46}  {t.on_disk:<58}  {t.outcome}{note}")
        for group, what, ok in self.finals:
            lines.append(f"     {group}: {what}: {'pass' if ok else 'FAIL'}")
        by_stage = {}
        for t in self.trials:
            n, p = by_stage.get(t.stage, (0, 0))
            by_stage[t.stage] = (n + 1, p + t.passed)
        per = ", ".join(f"{s}: {p}/{n}" for s, (n, p) in sorted(by_stage.items()))
        killed = sum(t.killed for t in self.trials)
        lines.append(f"{len(self.trials)} trials, {self.passed} passed ({per}); {killed} killed mid-run, "
                     f"{len(self.trials) - killed} ended before their moment; "
                     f"{sum(ok for *_, ok in self.finals)}/{len(self.finals)} final comparisons equal; "
                     f"{self.seconds:.0f} s")
        return "\n".join(lines)


# --------------------------------------------------------------------------- processes


RUNNING: set["Stage"] = set()
"""Stage processes not yet waited for: killed if this script is interrupted."""


class Stage:
    """One stage process writing its output to a log file (never a pipe that could fill up)."""

    def __init__(self, script: str, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self.fh = open(log_path, "w", encoding="utf-8")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, str(SRC / script), "--preset", "cpu", *args],
            env=stage_env(), stdout=self.fh, stderr=subprocess.STDOUT, text=True,
        )
        RUNNING.add(self)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def kill_when(self, ready: Callable[[], bool], delay: float, timeout: float = 600) -> float | None:
        """Poll ``ready`` every ms; once true, wait ``delay`` s and SIGKILL. Return the time of the
        kill since the start, or None when the process ended by itself first."""
        while not ready():
            if self.proc.poll() is not None:
                return None
            if self.elapsed > timeout:
                self.proc.kill()
                self.wait()
                raise RuntimeError(f"kill moment not reached in {timeout} s: see {self.log_path}")
            time.sleep(POLL_S)
        if delay > 0:
            end = time.monotonic() + delay
            while time.monotonic() < end:
                if self.proc.poll() is not None:
                    return None
                time.sleep(POLL_S)
        at = self.elapsed
        self.proc.send_signal(signal.SIGKILL)
        rc = self.wait()
        return at if rc == -signal.SIGKILL else None

    def wait(self, timeout: float = 900) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.fh.close()
            RUNNING.discard(self)

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def last_error(self) -> str:
        lines = [ln for ln in self.output().splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith(("error:", "Traceback")) or "Error" in ln]
        return (errors or lines or ["(no output)"])[-1][:300]


def stop_all() -> None:
    """Kill the stage processes this script started and has not waited for (each by its pid)."""
    for stage in list(RUNNING):
        if stage.proc.poll() is None:
            stage.proc.kill()
        stage.wait()


def run_to_end(script: str, args: list[str], log_path: Path) -> tuple[int, Stage]:
    stage = Stage(script, args, log_path)
    return stage.wait(), stage


def stage_paths(args: list[str]) -> RunPaths:
    cfg = load_config("cpu", args)
    root, _ = resolve_root(cfg.paths.root)
    return RunPaths.from_config(cfg, root)


def names(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except FileNotFoundError:
        return []


# --------------------------------------------------------------------------- checks on disk


def json_ok(path: Path) -> str | None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"{path.name} does not parse ({short(err)})"
    return None


def png_ok(path: Path) -> str | None:
    data = path.read_bytes()
    if not (data.startswith(b"\x89PNG") and data.rstrip(b"\x00").endswith(b"IEND\xaeB`\x82")):
        return f"{path.name} is not a whole PNG"
    return None


def safetensors_load(path: Path) -> str | None:
    from safetensors.torch import load_file

    problem = checkpoints._safetensors_ok(path)
    if problem:
        return problem
    try:
        load_file(str(path))
    except Exception as err:  # noqa: BLE001 -- any failure to load is what we look for
        return f"{path.name} does not load ({short(err)})"
    return None


def deep_checkpoint_problem(ckpt: Path) -> str | None:
    """Load every file a resume reads (the real thing, not 02's quick completeness check)."""
    import torch

    for name in (checkpoints.TRAINER_STATE, "adapter_config.json"):
        if not (ckpt / name).is_file():
            return f"{name} is missing"
        problem = json_ok(ckpt / name)
        if problem:
            return problem
    problem = safetensors_load(ckpt / checkpoints.ADAPTER_WEIGHTS)
    if problem:
        return problem
    from transformers.trainer_pt_utils import safe_globals  # what the Trainer allows in rng_state.pth

    for name in ("optimizer.pt", "scheduler.pt", *sorted(p.name for p in ckpt.glob("rng_state*.pth"))):
        try:
            with safe_globals():
                torch.load(ckpt / name, weights_only=True, map_location="cpu")
        except Exception as err:  # noqa: BLE001
            return f"{name} does not load ({short(err)})"
    return None


def short(err: Any) -> str:
    text = str(err).strip()
    return (text.splitlines() or [type(err).__name__])[0][:160]


def model_folder_problem(folder: Path, extra_json: tuple[str, ...]) -> str | None:
    for name in ("config.json", *extra_json):
        if not (folder / name).is_file():
            return f"{name} is missing"
        problem = json_ok(folder / name)
        if problem:
            return problem
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        return "no .safetensors weights"
    for w in weights:
        problem = safetensors_load(w)
        if problem:
            return problem
    return None


def temp_leftovers(folder: Path) -> list[str]:
    """Temporary names the atomic writers use (.name.tmp-PID, .name.XXXX.tmp, .name.partial)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.rglob(".*") if ".tmp" in p.name or p.name.endswith(".partial"))


# --------------------------------------------------------------------------- 02


def check_after_kill_02(paths: RunPaths) -> tuple[str, list[str], list[str]]:
    """(what is on disk, problems, notes) right after a kill of 02."""
    problems: list[str] = []
    states = []
    for ckpt in checkpoints.list_checkpoints(paths.checkpoints):
        quick = checkpoints.checkpoint_problem(ckpt)
        if quick is None:
            deep = deep_checkpoint_problem(ckpt)
            if deep:
                problems.append(f"{ckpt.name} passes the completeness check but {deep}")
            states.append(f"{checkpoints.checkpoint_step(ckpt)}")
        else:
            states.append(f"{checkpoints.checkpoint_step(ckpt)}(partial)")
    on_disk = "ckpt " + (",".join(states) if states else "none")
    if paths.adapter.exists():
        problem = model_folder_problem_adapter(paths.adapter)
        if problem:
            problems.append(f"adapter/ exists but {problem}")
        on_disk += "; adapter"
    history = paths.logs / "loss_history.csv"
    if history.exists():
        try:
            steps = [r["step"] for r in trainlog.read_history(history)]
            if steps != sorted(set(steps)):
                problems.append("loss_history.csv steps are not increasing")
        except (OSError, ValueError, KeyError) as err:
            problems.append(f"loss_history.csv does not parse ({short(err)})")
    for name, check in (("config.yaml", _yaml_ok), ("train_summary.json", json_ok)):
        if (paths.run / name).exists():
            problem = check(paths.run / name)
            if problem:
                problems.append(problem)
    if (paths.logs / "loss_curve.png").exists():
        problem = png_ok(paths.logs / "loss_curve.png")
        if problem:
            problems.append(problem)
    notes = []
    leftovers = temp_leftovers(paths.run)
    if leftovers:
        notes.append("temp left: " + ",".join(leftovers))
    return on_disk, problems, notes


def model_folder_problem_adapter(folder: Path) -> str | None:
    for name in ("adapter_config.json", "prompt_template.json", "tokenizer.json"):
        if not (folder / name).is_file():
            return f"{name} is missing"
        problem = json_ok(folder / name)
        if problem:
            return problem
    return safetensors_load(folder / checkpoints.ADAPTER_WEIGHTS)


def _yaml_ok(path: Path) -> str | None:
    import yaml

    try:
        yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        return f"{path.name} does not parse ({short(err)})"
    return None


def new_checkpoint(paths: RunPaths, after: int, complete: bool) -> Callable[[], bool]:
    def ready() -> bool:
        for name in names(paths.checkpoints):
            step = checkpoints.checkpoint_step(Path(name))
            if step is not None and step > after:
                if not complete or (paths.checkpoints / name / checkpoints.TRAINER_STATE).is_file():
                    return True
        return False

    return ready


def temp_appears(folder: Path, prefix: str) -> Callable[[], bool]:
    """A new name starting with ``prefix`` in ``folder`` (not one a killed run left behind)."""
    before = set(names(folder))
    return lambda: any(n.startswith(prefix) and n not in before for n in names(folder))


def newest_step(paths: RunPaths) -> int:
    steps = [checkpoints.checkpoint_step(c) for c in checkpoints.list_checkpoints(paths.checkpoints)]
    return max(steps, default=0)


def choose_moment_02(rng: random.Random, paths: RunPaths, timing: dict[str, float]) -> tuple[str, Callable[[], bool], float]:
    """(description, condition, delay after it) for the next kill of 02."""
    kind = rng.choices(
        ["delay", "ckpt-write", "after-ckpt", "adapter-write", "history-write"], weights=[4, 8, 4, 2, 2]
    )[0]
    last = newest_step(paths)
    if kind == "delay":
        delay = rng.uniform(0.5, timing["total"])
        return f"{delay:.2f} s after the start", lambda: True, delay
    if kind == "ckpt-write":
        delay = rng.uniform(0.0, 0.04)
        return f"a checkpoint > {last} being written, +{delay * 1000:.0f} ms", new_checkpoint(paths, last, False), delay
    if kind == "after-ckpt":
        delay = rng.uniform(0.0, timing["save_interval"])
        return f"{delay:.2f} s after a checkpoint > {last} is complete", new_checkpoint(paths, last, True), delay
    if kind == "adapter-write":
        delay = rng.uniform(0.0, 0.03)
        return f"adapter/ being written, +{delay * 1000:.0f} ms", temp_appears(paths.run, ".adapter.tmp-"), delay
    return "loss_history.csv being replaced", temp_appears(paths.logs, ".loss_history.csv."), 0.0


def compare_to_reference(paths: RunPaths, reference: RunPaths) -> tuple[str, bool]:
    from safetensors.torch import load_file

    if not (paths.adapter / checkpoints.ADAPTER_WEIGHTS).is_file():
        return "no adapter at the end", False
    got = load_file(str(paths.adapter / checkpoints.ADAPTER_WEIGHTS))
    want = load_file(str(reference.adapter / checkpoints.ADAPTER_WEIGHTS))
    if got.keys() != want.keys():
        return "adapter tensors differ in names", False
    diff = max(float((got[k] - want[k]).abs().max()) for k in want)
    h_got = trainlog.read_history(paths.logs / "loss_history.csv")
    h_want = trainlog.read_history(reference.logs / "loss_history.csv")
    same_steps = [r["step"] for r in h_got] == [r["step"] for r in h_want]
    loss_diff = 0.0
    losses_match = same_steps
    for g, w in zip(h_got, h_want):
        for key in ("train_loss", "eval_loss"):
            if (g[key] is None) != (w[key] is None):
                losses_match = False
            elif g[key] is not None:
                loss_diff = max(loss_diff, abs(g[key] - w[key]))
    losses_match = losses_match and loss_diff <= MAX_ABS_DIFF
    ok = diff <= MAX_ABS_DIFF and losses_match
    what = (f"adapter max|diff| {diff:.1e} over {len(want)} tensors; loss history "
            f"{len(h_got)} steps, max|diff| {loss_diff:.1e}{'' if same_steps else ' (steps differ)'}")
    return what, ok


def trials_02(base: Path, work: Path, reference: RunPaths, timing: dict[str, float], n: int,
              rng: random.Random, say: Callable[[str], None], report: Report) -> None:
    chain = 0
    kills = 0
    failed_alone = False
    while kills < n and not failed_alone and chain < n + 5:
        chain += 1
        group = f"02 chain {chain}"
        root = work / f"chain{chain}"
        shutil.copytree(base, root)
        args = [f"paths.root={root}", *TRAIN_02, *MODEL_ARG]
        paths = stage_paths(args)
        budget = min(n - kills, rng.randint(4, 8))
        chain_trials: list[Trial] = []
        pending: Trial | None = None  # the last kill, judged also by the re-run that follows it
        launches = 0
        overwrite_next = False
        while True:
            launches += 1
            run_args = args + (["overwrite=true"] if overwrite_next else [])
            overwrite_next = False
            stage = Stage("02_sft_qlora.py", run_args, work / f"chain{chain}-run{launches}.log")
            lock_left = paths.lock.exists()
            if len(chain_trials) < budget:
                moment, ready, delay = choose_moment_02(rng, paths, timing)
                at = stage.kill_when(ready, delay)
            else:
                moment, at = "", None
                stage.wait()
            if at is None:  # ran to its end: the chain is done (or the re-run failed)
                rc = stage.proc.returncode
                judged, pending = pending, None
                if judged is not None:
                    _judge_rerun(judged, stage, rc, lock_left)
                if rc == 2 and "no complete one to resume" in stage.output() and launches < 50:
                    if judged is not None:
                        judged.notes.append("re-run asked for overwrite=true: no complete checkpoint yet")
                    overwrite_next = True
                    continue
                if rc != 0 and judged is None:
                    chain_trials.append(Trial("02", 0, "(no kill: a run failed)", problems=[stage.last_error()],
                                              group=group))
                    failed_alone = True
                if moment and rc == 0:
                    say(f"{group}: the run ended before the moment '{moment}'")
                break
            if pending is not None:
                _judge_rerun(pending, stage, None, lock_left)
            on_disk, problems, notes = check_after_kill_02(paths)
            trial = Trial("02", 0, f"{moment} (t={at:.1f} s)", on_disk, problems, notes, group)
            chain_trials.append(trial)
            kills += 1
            pending = trial
            say(f"{group} kill {len(chain_trials)}: {trial.moment}: {on_disk}: {trial.outcome}")
        what, ok = compare_to_reference(paths, reference)
        report.finals.append((group, f"{len(chain_trials)} kills, {launches} launches; {what}", ok))
        say(f"{group}: {what}: {'equal' if ok else 'DIFFERENT'}")
        for t in chain_trials:
            if not ok:
                t.problems.append(f"{group} ended different from the uninterrupted run")
            t.number = len(report.trials) + 1
            report.trials.append(t)


def _judge_rerun(trial: Trial, stage: Stage, rc: int | None, lock_left: bool) -> None:
    """The launch after a kill: it must not fail by itself, and it takes over the dead lock."""
    out = stage.output()
    if rc not in (None, 0) and not (rc == 2 and "no complete one to resume" in out):
        trial.problems.append(f"the re-run failed (exit {rc}): {stage.last_error()}")
    if lock_left and "taking over the lock" in out:
        trial.notes.append("stale lock taken over")
    resumed = [ln for ln in out.splitlines() if " from " in ln and "training " in ln]
    if resumed:
        trial.notes.append("resumed " + resumed[-1].split(" from ", 1)[1].rsplit("/", 1)[-1])


# --------------------------------------------------------------------------- 01


def prepared_problem(paths: RunPaths, expect: dict[str, Any] | None = None) -> str | None:
    from prodesc.prepared import open_prepared, read_manifest

    manifest = read_manifest(paths.prepared_manifest)
    if manifest is None:
        return "manifest.json is missing, unreadable or not complete"
    try:
        _, data = open_prepared(paths, ("train", "validation", "test"), ("uid", "title", "content"))
    except Exception as err:  # noqa: BLE001
        return f"the dataset does not open ({short(err)})"
    counts = {s: len(data[s]) for s in ("train", "validation", "test")}
    if counts != manifest["splits"]:
        return f"split sizes {counts} differ from the manifest's {manifest['splits']}"
    if expect is not None:
        uids = {s: data[s]["uid"] for s in counts}
        if uids != expect:
            return "the splits differ from the uninterrupted run's"
    return None


def trials_01(work: Path, n: int, rng: random.Random, say: Callable[[str], None], report: Report) -> None:
    raw_root = work / "raw01"
    raw = raw_root / "data" / "raw" / "trn.jsonl"
    raw.parent.mkdir(parents=True)
    with open(raw, "w", encoding="utf-8") as fh:
        for row in synthetic_rows(ROWS_01, seed=7):
            fh.write(json.dumps(row) + "\n")
    ref_root = work / "ref01"
    shutil.copytree(raw_root, ref_root)
    start = time.monotonic()
    rc, stage = run_to_end("01_prepare.py", [f"paths.root={ref_root}", *PREPARE_01], work / "ref01.log")
    total = time.monotonic() - start
    if rc != 0:
        raise RuntimeError(f"the uninterrupted 01 run failed: {stage.last_error()}")
    ref_paths = stage_paths([f"paths.root={ref_root}", *PREPARE_01])
    from prodesc.prepared import open_prepared

    _, ref_data = open_prepared(ref_paths, ("train", "validation", "test"), ("uid",))
    expect = {s: ref_data[s]["uid"] for s in ("train", "validation", "test")}
    say(f"01 uninterrupted: {total:.1f} s, splits {json.loads(ref_paths.prepared_manifest.read_text())['splits']}")
    for i in range(1, n + 1):
        root = work / f"p01-{i}"
        shutil.copytree(raw_root, root)
        args = [f"paths.root={root}", *PREPARE_01]
        paths = stage_paths(args)
        tmp_prefix = f".{paths.prepared.name}.tmp-"
        kind = rng.choice(["delay", "dataset-write", "manifest-write", "spill"])

        def in_tmp(sub: str) -> Callable[[], bool]:
            def ready() -> bool:
                return any((paths.prepared_root / n_ / sub).exists()
                           for n_ in names(paths.prepared_root) if n_.startswith(tmp_prefix))
            return ready

        def manifest_tmp() -> bool:
            return any(m.startswith(".manifest.json.")
                       for n_ in names(paths.prepared_root) if n_.startswith(tmp_prefix)
                       for m in names(paths.prepared_root / n_))

        if kind == "delay":
            delay = rng.uniform(0.5, total)
            moment, ready = f"{delay:.2f} s after the start", (lambda: True)
        elif kind == "spill":
            delay = rng.uniform(0.0, 1.0)
            moment, ready = f"rows being read and cleaned, +{delay:.2f} s", in_tmp("scratch/kept.jsonl")
        elif kind == "dataset-write":
            delay = rng.uniform(0.0, 0.3)
            moment, ready = f"dataset/ being written, +{delay * 1000:.0f} ms", in_tmp("dataset")
        else:
            delay = 0.0
            moment, ready = "manifest.json being written", manifest_tmp
        stage = Stage("01_prepare.py", args, work / f"p01-{i}.log")
        at = stage.kill_when(ready, delay)
        trial = Trial("01", 0, moment + (f" (t={at:.1f} s)" if at is not None else " (ended first)"),
                      killed=at is not None)
        if paths.prepared.exists():
            problem = prepared_problem(paths)
            trial.on_disk = "prepared/ complete" if problem is None else "prepared/ INCOMPLETE"
            if problem:
                trial.problems.append(f"prepared/ exists but {problem}")
        else:
            trial.on_disk = "prepared/ absent"
        leftovers = [n_ for n_ in names(paths.prepared_root) if n_.startswith(".")]
        if leftovers:
            trial.notes.append("temp left: " + ",".join(leftovers))
        rc, rerun = run_to_end("01_prepare.py", args, work / f"p01-{i}-rerun.log")
        if rc != 0:
            trial.problems.append(f"the re-run failed (exit {rc}): {rerun.last_error()}")
        else:
            problem = prepared_problem(paths, expect)
            if problem:
                trial.problems.append(f"after the re-run: {problem}")
        trial.number = len(report.trials) + 1
        report.trials.append(trial)
        say(f"01 trial {i}: {trial.moment}: {trial.on_disk}: {trial.outcome}")


# --------------------------------------------------------------------------- 03


def check_after_kill_03(paths: RunPaths, rows: int) -> tuple[str, list[str], list[str]]:
    problems, parts = [], []
    if paths.merged.exists():
        problem = model_folder_problem(paths.merged, ("merge_check.json", "tokenizer.json", "prompt_template.json"))
        parts.append("merged complete" if problem is None else "merged INCOMPLETE")
        if problem:
            problems.append(f"merged_fp16/ exists but {problem}")
    else:
        parts.append("merged absent")
    ev = paths.eval
    written = []
    for name in ("side_by_side.csv", "improved_examples.csv", "worst_regressions.csv", "row_metrics.csv"):
        f = ev / name
        if not f.exists():
            continue
        written.append(name.split(".")[0])
        try:
            with open(f, encoding="utf-8-sig", newline="") as fh:
                table = list(csv.DictReader(fh))
        except (OSError, csv.Error, UnicodeDecodeError) as err:
            problems.append(f"{name} does not parse ({short(err)})")
            continue
        if name == "side_by_side.csv" and len(table) != rows:
            problems.append(f"side_by_side.csv has {len(table)} rows, not {rows}")
    for name, check in (("metrics.json", json_ok), ("metrics.png", png_ok)):
        if (ev / name).exists():
            written.append(name.split(".")[0])
            problem = check(ev / name)
            if problem:
                problems.append(problem)
    if (ev / "report.html").exists():
        written.append("report")
        if not (ev / "report.html").read_text(encoding="utf-8").rstrip().endswith("</html>"):
            problems.append("report.html is cut short")
    cached = 0
    for gen in sorted((ev / "generations").glob("*.jsonl")):
        lines = gen.read_text(encoding="utf-8").splitlines()
        if not lines or json_header(lines[0]) is None:
            if lines:
                problems.append(f"generations/{gen.name} has no valid header line")
            continue
        body = lines[1:]
        good = sum(_parses(ln) for ln in body)
        if good < len(body) - 1:  # only the last line may be cut short (it is generated again)
            problems.append(f"generations/{gen.name} has unreadable lines before its end")
        cached += good
    parts.append(f"{cached} generations cached")
    if written:
        parts.append("eval: " + ",".join(written))
    notes = []
    leftovers = temp_leftovers(paths.run)
    if leftovers:
        notes.append("temp left: " + ",".join(leftovers))
    return "; ".join(parts), problems, notes


def json_header(line: str) -> dict | None:
    try:
        data = json.loads(line)
    except ValueError:
        return None
    return data if isinstance(data, dict) and "cache_key" in data else None


def _parses(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except ValueError:
        return False


def trials_03(trained: Path, work: Path, n: int, rng: random.Random, say: Callable[[str], None],
              report: Report, sample: bool = False) -> None:
    ref_root = work / "ref03"
    shutil.copytree(trained, ref_root)
    eval_03 = [*EVAL_03, *(["eval.do_sample=true"] if sample else [])]
    ref_args = [f"paths.root={ref_root}", *TRAIN_02, *MODEL_ARG, *eval_03]
    start = time.monotonic()
    rc, stage = run_to_end("03_merge_fp16.py", ref_args, work / "ref03.log")
    total = time.monotonic() - start
    if rc != 0:
        raise RuntimeError(f"the uninterrupted 03 run failed: {stage.last_error()}")
    ref = stage_paths(ref_args)
    rows = int(EVAL_03[0].split("=")[1])
    say(f"03 uninterrupted{' (eval.do_sample=true)' if sample else ''}: {total:.1f} s")
    for i in range(1, n + 1):
        root = work / f"m03-{i}"
        shutil.copytree(trained, root)
        args = [f"paths.root={root}", *TRAIN_02, *MODEL_ARG, *eval_03]
        paths = stage_paths(args)
        kind = rng.choice(["delay", "merged-write", "generating", "reports-write"])
        if kind == "delay":
            delay = rng.uniform(0.5, total)
            moment, ready = f"{delay:.2f} s after the start", (lambda: True)
        elif kind == "merged-write":
            delay = rng.uniform(0.0, 0.5)
            moment, ready = f"merged_fp16/ being built, +{delay * 1000:.0f} ms", temp_appears(paths.run, ".merged_fp16.tmp-")
        elif kind == "generating":
            delay = rng.uniform(0.0, 0.3)

            def ready() -> bool:
                return any(len(p.read_bytes().splitlines()) >= 2 for p in (paths.eval / "generations").glob("*.jsonl"))

            moment = f"generations being cached, +{delay * 1000:.0f} ms"
        else:
            delay = 0.0
            moment, ready = "a report file being written", temp_appears(paths.eval, ".")
        stage = Stage("03_merge_fp16.py", args, work / f"m03-{i}.log")
        at = stage.kill_when(ready, delay)
        trial = Trial("03", 0, moment + (f" (t={at:.1f} s)" if at is not None else " (ended first)"),
                      killed=at is not None)
        trial.on_disk, trial.problems, trial.notes = check_after_kill_03(paths, rows)
        rc, rerun = run_to_end("03_merge_fp16.py", args, work / f"m03-{i}-rerun.log")
        if rc != 0:
            trial.problems.append(f"the re-run failed (exit {rc}): {rerun.last_error()}")
        else:
            if "taking over the lock" in rerun.output():
                trial.notes.append("stale lock taken over")
            same_csv = (paths.eval / "side_by_side.csv").read_bytes() == (ref.eval / "side_by_side.csv").read_bytes()
            got = json.loads((paths.eval / "metrics.json").read_text())["models"]
            want = json.loads((ref.eval / "metrics.json").read_text())["models"]
            if not same_csv:
                trial.problems.append("side_by_side.csv differs from the uninterrupted run's")
            if got != want:
                trial.problems.append("metrics differ from the uninterrupted run's")
        trial.number = len(report.trials) + 1
        report.trials.append(trial)
        say(f"03 trial {i}: {trial.moment}: {trial.on_disk}: {trial.outcome}")


# --------------------------------------------------------------------------- all together

MODEL_ARG: list[str] = []


def run_trials(workdir: Path, n02: int = 24, n01: int = 4, n03: int = 4, seed: int = 0,
               model_dir: Path | None = None, say: Callable[[str], None] | None = None,
               sample_03: bool = False) -> Report:
    """Run the kill trials under ``workdir``; return the report (the test calls this).
    ``sample_03``: 03 samples (eval.do_sample=true) instead of decoding greedily."""
    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    rng = random.Random(seed)
    report = Report()
    start = time.monotonic()
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    if model_dir is None:
        model_dir = work / "tiny-llama"
        if not (model_dir / "config.json").is_file():
            build_tiny_model(model_dir)
    MODEL_ARG[:] = [f"model.name={model_dir}"]

    need_02 = n02 > 0 or n03 > 0
    if need_02:
        base = work / "base02"  # raw rows + prepared data, copied into every chain
        raw = base / "data" / "raw" / "trn.jsonl"
        raw.parent.mkdir(parents=True, exist_ok=True)
        raw.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(64)), encoding="utf-8")
        rc, stage = run_to_end("01_prepare.py", [f"paths.root={base}", *TRAIN_02, *MODEL_ARG], work / "base02.log")
        if rc != 0:
            raise RuntimeError(f"preparing the 02 data failed: {stage.last_error()}")
        ref_root = work / "ref02"
        shutil.copytree(base, ref_root)
        ref_args = [f"paths.root={ref_root}", *TRAIN_02, *MODEL_ARG]
        ref = stage_paths(ref_args)
        stage = Stage("02_sft_qlora.py", ref_args, work / "ref02.log")
        first_ckpt = None
        seen: dict[int, float] = {}
        while stage.proc.poll() is None:
            for name in names(ref.checkpoints):
                step = checkpoints.checkpoint_step(Path(name))
                if step is not None and step not in seen:
                    seen[step] = stage.elapsed
            time.sleep(0.005)
        total = stage.elapsed
        if stage.wait() != 0:
            raise RuntimeError(f"the uninterrupted 02 run failed: {stage.last_error()}")
        steps = sorted(seen)
        first_ckpt = seen[steps[0]] if steps else total / 2
        interval = (seen[steps[-1]] - first_ckpt) / max(1, len(steps) - 1) if len(steps) > 1 else 1.0
        timing = {"total": total, "first_checkpoint": first_ckpt, "save_interval": interval}
        say(f"02 uninterrupted: {total:.1f} s, first checkpoint at {first_ckpt:.1f} s, "
            f"a checkpoint every {interval:.2f} s")
        if n02 > 0:
            trials_02(base, work, ref, timing, n02, rng, say, report)
        if n03 > 0:
            trials_03(ref_root, work, n03, rng, say, report, sample_03)
    if n01 > 0:
        trials_01(work, n01, rng, say, report)
    report.seconds = time.monotonic() - start
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="kill_trials.py", description=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--trials-02", type=int, default=24, help="kills of 02 in all (default 24)")
    ap.add_argument("--trials-01", type=int, default=4, help="kills of 01 (default 4)")
    ap.add_argument("--trials-03", type=int, default=4, help="kills of 03 (default 4)")
    ap.add_argument("--sample-03", action="store_true",
                    help="03 samples (eval.do_sample=true; default: greedy)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default 0)")
    ap.add_argument("--workdir", help="folder for the runs (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs of every run)")
    args = ap.parse_args(argv)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="prodesc-kill-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally below runs
    try:
        report = run_trials(work, args.trials_02, args.trials_01, args.trials_03, args.seed,
                            sample_03=args.sample_03)
    finally:
        stop_all()
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work folder: {work}", file=sys.stderr)
    print(report.table())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
