"""Where every artifact lives: one function resolves the root, one class builds every path.

The artifact root is chosen in this order (:func:`resolve_root`):

1. ``--root DIR`` on the command line (or ``paths.root=DIR``);
2. the environment variable ``PRODESC_ROOT``;
3. in Colab, ``/content/drive/MyDrive/prodesc`` -- and if Drive is not mounted, an error, never a
   silent write to the VM's local disk, which vanishes with the runtime;
4. elsewhere, ``./artifacts`` under the current folder.

Layout under the root (:class:`RunPaths`)::

    data/raw/                      trn.json, trn.json.gz or the dataset's zip you put there
    data/prepared/<name>/          01: DatasetDict (train/validation/test) + manifest.json
    models/<name>/                 converted base models (the embedded SmolLM2)
    runs/<run>/config.yaml         the resolved config of the run
    runs/<run>/checkpoints/        02: checkpoint-<step>/ (resume from here)
    runs/<run>/adapter/            02: the final LoRA adapter
    runs/<run>/merged_fp16/        03: the merged 16-bit model
    runs/<run>/eval/               03: side_by_side.csv, metrics.json, report.html
    runs/<run>/export/             05: GGUF files, Modelfile, export_check.json
    runs/<run>/logs/               TensorBoard events, loss_history.csv, loss_curve.png
    runs/<run>/run.lock            held while 02, 03 or 05 writes the run (prodesc.runlock)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prodesc.errors import ConfigError, UserError

if TYPE_CHECKING:  # paths.py stays stdlib-only: 00_install uses it before PyYAML is installed
    from prodesc.config import Config

ROOT_ENV = "PRODESC_ROOT"
"""Environment variable that sets the artifact root when --root is not given."""

COLAB_ENV_MARKERS = ("COLAB_RELEASE_TAG", "COLAB_GPU", "COLAB_BACKEND_VERSION")
"""Variables the Colab runtime sets in every process, `!python` subprocesses included."""

COLAB_DRIVE_MOUNT = Path("/content/drive")
COLAB_ROOT_IN_DRIVE = Path("MyDrive") / "prodesc"
LOCAL_ROOT = Path("artifacts")
RAW_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz", ".zip")


def in_colab(environ: os._Environ | dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return any(marker in env for marker in COLAB_ENV_MARKERS)


def is_mounted(path: Path) -> bool:
    """True when ``path`` is a mount point (Drive is a FUSE mount at /content/drive)."""
    return os.path.ismount(path)


def resolve_root(
    cli_root: str | None = None,
    environ: os._Environ | dict[str, str] | None = None,
    drive_mount: Path = COLAB_DRIVE_MOUNT,
) -> tuple[Path, str]:
    """Return (absolute root, where it came from). The one place the root is decided."""
    env = os.environ if environ is None else environ
    if cli_root:
        return Path(cli_root).expanduser().resolve(), "--root"
    if env.get(ROOT_ENV):
        return Path(env[ROOT_ENV]).expanduser().resolve(), f"${ROOT_ENV}"
    if in_colab(env):
        if not is_mounted(drive_mount) or not (drive_mount / "MyDrive").is_dir():
            raise UserError(
                f"running in Colab but Google Drive is not mounted at {drive_mount}: run "
                "`from google.colab import drive; drive.mount('/content/drive')` first, "
                "or pass --root to write elsewhere (files outside Drive vanish with the runtime)"
            )
        return drive_mount / COLAB_ROOT_IN_DRIVE, "Colab Drive"
    return (Path.cwd() / LOCAL_ROOT).resolve(), "local default"


@dataclass(frozen=True)
class RunPaths:
    """Every path the pipeline reads or writes, built from the root, the config and the run name."""

    root: Path
    run_name: str
    prepared_name: str

    @classmethod
    def from_config(cls, cfg: Config, root: Path) -> "RunPaths":
        return cls(root=Path(root), run_name=cfg.run_name, prepared_name=prepared_name(cfg))

    # data
    @property
    def raw_dir(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def prepared_root(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def prepared(self) -> Path:
        return self.prepared_root / self.prepared_name

    @property
    def prepared_dataset(self) -> Path:
        return self.prepared / "dataset"

    @property
    def prepared_manifest(self) -> Path:
        return self.prepared / "manifest.json"

    # models
    @property
    def models(self) -> Path:
        return self.root / "models"

    def model_dir(self, name: str) -> Path:
        return self.models / name

    # run
    @property
    def run(self) -> Path:
        return self.root / "runs" / self.run_name

    @property
    def config_file(self) -> Path:
        return self.run / "config.yaml"

    @property
    def data_record(self) -> Path:
        """The prepared data a run trained on (its manifest's fingerprint), written by 02 when it
        starts: a resume on data 01 has since rebuilt differently is refused."""
        return self.run / "prepared_data.json"

    @property
    def checkpoints(self) -> Path:
        return self.run / "checkpoints"

    @property
    def adapter(self) -> Path:
        return self.run / "adapter"

    @property
    def merged(self) -> Path:
        return self.run / "merged_fp16"

    @property
    def eval(self) -> Path:
        return self.run / "eval"

    @property
    def export(self) -> Path:
        """05: the GGUF files, the Ollama Modelfile and export_check.json."""
        return self.run / "export"

    @property
    def logs(self) -> Path:
        return self.run / "logs"

    @property
    def lock(self) -> Path:
        """Held by 02, 03 and 05 while they write the run (prodesc.runlock): one run, one writer."""
        return self.run / "run.lock"

    def inside_root(self, value: str, what: str) -> Path:
        """A user-given path: absolute as given; relative ones are inside the root and may not
        climb out of it."""
        path = Path(value).expanduser()
        if path.is_absolute():
            return path
        resolved = (self.root / path).resolve()
        if not resolved.is_relative_to(self.root.resolve()):
            raise ConfigError(
                f"{what} '{value}' points outside the root {self.root}: "
                "give an absolute path if you mean it"
            )
        return resolved

    def raw_source(self, source: str, what: str = "data.source") -> Path:
        """The raw data file: ``source`` (the setting ``what``) if set (a bare file name is also
        looked up in data/raw/), else the one raw file in data/raw/ (a zip counts as one; among
        several unpacked files, the one named trn.*, as the release names its training file)."""
        if source:
            path = self.inside_root(source, what)
            in_raw = self.raw_dir / source
            if not path.exists() and Path(source).name == source and in_raw.exists():
                return in_raw
            return path
        found = sorted(
            p for p in self.raw_dir.glob("*") if p.is_file() and p.name.endswith(RAW_SUFFIXES)
        )
        if not found:
            raise UserError(
                f"no raw data in {self.raw_dir}: copy trn.json.gz or the dataset's zip there, or set "
                "data.source=/path/to/trn.json.gz (or data.source=bundled for the sample)"
            )
        training = [p for p in found if p.name.startswith("trn.")]
        archives = [p for p in found if p.suffix == ".zip"]
        if len(found) > 1 and len(training) == 1 and not archives:  # the release unpacked: trn.*, tst.*
            return training[0]
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise UserError(
                f"several raw files in {self.raw_dir} ({names}): pick one with data.source=<file>"
            )
        return found[0]


def prepared_name(cfg: Config) -> str:
    """``data.name``, or ``<source>-<template>-<hash of the data settings>``."""
    if cfg.data.name:
        return cfg.data.name
    source = cfg.data.source or "raw"
    stem = Path(source).name
    for suffix in (".gz", ".zip", ".jsonl", ".json", ".yaml", ".yml"):
        stem = stem.removesuffix(suffix)
    template = Path(cfg.data.template).stem
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{stem}-{template}")
    return f"{safe}-{cfg.fingerprint('data')[:8]}-s{cfg.seed}"
