"""Loss history of a training run: ``loss_history.csv`` and ``loss_curve.png`` under ``logs/``.

Both are rebuilt from the Trainer's ``state.log_history``, which is saved in every checkpoint and
restored on resume: after a crash and a resume the history holds exactly the logged steps of the
checkpointed run plus the new ones, never the lost steps the crashed process logged after its last
checkpoint. matplotlib (Agg backend) is imported only when a plot is drawn. Also: the one-line
estimate of the run's time that 02 logs once the first steps are timed.
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from prodesc.atomic import write_bytes, write_text
from prodesc.cli import log

HISTORY_FIELDS = ("step", "epoch", "train_loss", "eval_loss")


def history_rows(log_history: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per logged step: ``step, epoch, train_loss, eval_loss`` (empty where not logged)."""
    rows: dict[int, dict[str, Any]] = {}
    for entry in log_history:
        step = entry.get("step")
        if step is None:
            continue
        if "loss" in entry:
            key = "train_loss"
        elif "eval_loss" in entry:
            key = "eval_loss"
        else:
            continue
        value = entry["loss"] if key == "train_loss" else entry["eval_loss"]
        row = rows.setdefault(int(step), {"step": int(step), "epoch": "", "train_loss": "", "eval_loss": ""})
        row[key] = float(value)
        if entry.get("epoch") is not None:
            row["epoch"] = round(float(entry["epoch"]), 6)
    return [rows[s] for s in sorted(rows)]


def write_history(path: Path, log_history: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Write ``loss_history.csv`` atomically; return its rows."""
    rows = history_rows(log_history)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())
    return rows


def read_history(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``loss_history.csv`` with numbers parsed (None where empty)."""
    with open(path, encoding="utf-8", newline="") as fh:
        out = []
        for row in csv.DictReader(fh):
            out.append({k: (None if row[k] == "" else (int(row[k]) if k == "step" else float(row[k])))
                        for k in HISTORY_FIELDS})
        return out


def plot_history(path: Path, rows: list[dict[str, Any]], title: str = "") -> None:
    """Draw train and validation loss against the step into a PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        for key, label, style in (("train_loss", "train", "-"), ("eval_loss", "validation", "o--")):
            pts = [(r["step"], r[key]) for r in rows if r[key] not in ("", None) and math.isfinite(r[key])]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        ax.set_title(title or "loss")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
    write_bytes(path, buf.getvalue())


def loss_callback(logs_dir: Path, title: str = ""):
    """A TrainerCallback that rewrites the CSV at every log and the plot at every save and at the end."""
    from transformers import TrainerCallback

    class LossHistoryCallback(TrainerCallback):
        def __init__(self) -> None:
            self.csv_path = Path(logs_dir) / "loss_history.csv"
            self.png_path = Path(logs_dir) / "loss_curve.png"

        def refresh(self, state: Any, plot: bool) -> None:
            if not state.is_world_process_zero:
                return
            rows = write_history(self.csv_path, state.log_history)
            if plot:
                plot_history(self.png_path, rows, title)

        def on_log(self, args, state, control, **kwargs):
            self.refresh(state, plot=False)

        def on_save(self, args, state, control, **kwargs):
            self.refresh(state, plot=True)

        def on_train_end(self, args, state, control, **kwargs):
            self.refresh(state, plot=True)

    return LossHistoryCallback()


def eta_callback(describe: Callable[[float, int, int], str], after_steps: int = 3):
    """A TrainerCallback that logs one estimate, once ``after_steps`` steps have been timed (or at
    the last step of a shorter run): the first step of the process is not timed (it includes
    compilation and warm-up).
    ``describe(seconds_per_step, step, max_steps)`` words the estimate."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.start: float | None = None
            self.first_step = 0
            self.done = False

        def on_step_end(self, args, state, control, **kwargs):
            if self.done or not state.is_world_process_zero:
                return
            if self.start is None:
                self.start, self.first_step = time.perf_counter(), state.global_step
                return
            timed = state.global_step - self.first_step
            if timed >= after_steps or (timed and state.global_step >= state.max_steps):
                self.done = True
                per_step = (time.perf_counter() - self.start) / timed
                log(describe(per_step, state.global_step, state.max_steps))

    return StepTimer()
