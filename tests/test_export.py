"""05_export: GGUF files + round-trip check, the Ollama Modelfile, the Hub push, refusals.

The Hub cannot be reached from the tests: a stand-in for huggingface_hub's HfApi (FakeHub) records
what would be created and uploaded. Everything else is real: llama.cpp's converter (installed by
00_install into its own folder), transformers' GGUF loader, the stage's merge.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import (
    EVAL_OVERRIDES,
    PYTHON,
    SRC,
    run_stage_subprocess,
    stage_env,
    stage_paths,
    tiny_overrides,
    write_embedded_adapter,
    write_prepared,
    write_tiny_adapter,
)
from prodesc import export, install
from prodesc.generate import render_prompts
from prodesc.templates import BUILTIN, PromptTemplate

SECRET = "hf_TESTTOKEN0123456789abcdefSECRET"


def run(overrides: list[str]) -> int:
    return export.main(["--preset", "cpu", *overrides])


def leftovers(paths) -> list[str]:
    """What a failed export left in the run folder (export/ or its temporary siblings)."""
    return sorted(p.name for p in paths.run.glob("*") if p.name.startswith((".export", "export")))


# --------------------------------------------------------------------------- bad input: one line, exit 2


def tiny_run(tiny_model_dir, tmp_path, *extra):
    overrides = tiny_overrides(tiny_model_dir, tmp_path / "root", *EVAL_OVERRIDES, *extra)
    _, paths = stage_paths(overrides)
    write_prepared(paths)
    write_tiny_adapter(tiny_model_dir, paths.adapter)
    return overrides, paths


@pytest.mark.parametrize(
    "case, extra, env, message",
    [
        ("no model", None, {}, "error: nothing to export in "),
        ("unknown type", ["export.gguf=q5_k"], {}, "error: config key 'export.gguf' must be one of f16, q8_0, q4_k_m; got 'q5_k'"),
        ("repo not user/name", ["hub.repo=just-a-name"], {}, "error: config key 'hub.repo' 'just-a-name' is not a Hub repository id"),
        ("no token", ["hub.repo=me/descriptions", "export.gguf=[]"], {}, "error: hub.repo=me/descriptions needs a Hugging Face token"),
        ("no llama-quantize", ["export.gguf=q4_k_m"], {"PATH": "/usr/bin:/bin"}, "error: q4_k_m needs llama.cpp's llama-quantize"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, extra, env, message, tiny_model_dir, tmp_path):
    if extra is None:  # a run with prepared data but neither merged_fp16/ nor adapter/
        overrides = tiny_overrides(tiny_model_dir, tmp_path / "root", *EVAL_OVERRIDES)
        _, paths = stage_paths(overrides)
        write_prepared(paths)
    else:  # a trained run (prepared data + adapter); the bad setting is given to 05 only
        overrides, paths = tiny_run(tiny_model_dir, tmp_path)
        overrides = [*overrides, *extra]
    before = files_under(paths.root)
    res = subprocess.run([PYTHON, str(SRC / "05_export.py"), "--preset", "cpu", *overrides],
                         env={**no_token_env(), **env}, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith(message), res.stderr
    assert "Traceback" not in res.stderr
    assert files_under(paths.root) == before  # not even merged_fp16/
    assert leftovers(paths) == []


def files_under(root) -> list:
    """Every file under ``root`` but the run's lock (the run folder is created to hold it)."""
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.name != "run.lock")


def no_token_env() -> dict[str, str]:
    env = stage_env()
    env.pop("HF_TOKEN", None)
    return env


def test_a_converter_failure_is_one_line_and_leaves_no_export(tiny_model_dir, tmp_path):
    # The tiny test tokenizer is one llama.cpp does not know: its converter stops, and the
    # temporary export folder goes with it.
    if not (install.converter_dir() / "convert_hf_to_gguf.py").is_file():
        pytest.skip("the GGUF converter is not installed (src/00_install.py)")
    overrides, paths = tiny_run(tiny_model_dir, tmp_path)
    res = run_stage_subprocess("05_export.py", overrides)
    assert res.returncode == 2, res.stderr
    assert re.match(r"error: convert_hf_to_gguf failed \(exit \d+\): ", res.stderr.strip().splitlines()[-1])
    assert leftovers(paths) == []
    assert (paths.merged / "merge_check.json").is_file()  # the merge itself (03's code) is complete


@pytest.mark.parametrize("types", [["q4_k_m"], ["f16", "q4_k_m"]])
def test_q4_k_m_is_quantized_from_the_f16_file_by_llama_quantize(types, tmp_path, monkeypatch):
    # llama.cpp's tools are not installed here: run_tool stands in for both (it records the command
    # and writes the output file), so this checks the commands and which files are kept.
    from prodesc.paths import RunPaths

    paths = RunPaths(root=tmp_path, run_name="r", prepared_name="p")
    commands = []

    def fake_tool(cmd, name):
        commands.append((name, cmd))
        out = cmd[cmd.index("--outfile") + 1] if "--outfile" in cmd else cmd[2]
        Path(out).write_bytes(b"GGUF")

    monkeypatch.setattr(export, "run_tool", fake_tool)
    files, seconds = export.write_gguf(paths, tmp_path, types)
    assert list(files) == types and set(seconds) == set(types)
    assert [name for name, _ in commands] == ["convert_hf_to_gguf", "llama-quantize"]
    assert commands[0][1][-5:] == ["--outtype", "f16", "--outfile", str(tmp_path / "r-f16.gguf"), str(paths.merged)]
    assert commands[1][1] == ["llama-quantize", str(tmp_path / "r-f16.gguf"), str(tmp_path / "r-q4_k_m.gguf"), "Q4_K_M"]
    assert sorted(p.name for p in tmp_path.glob("*.gguf")) == sorted(f"r-{t}.gguf" for t in types)


# --------------------------------------------------------------------------- Modelfile


def ollama_render(modelfile: str, title: str) -> str:
    """Ollama's Go template as the Modelfile's TEMPLATE uses it: the literal text, the escaped
    '{{' actions and {{ .Prompt }} (the only field used) replaced by the title."""
    body = re.search(r'^TEMPLATE """(.*?)"""$', modelfile, re.S | re.M).group(1)
    assert set(re.findall(r"{{.*?}}", body)) <= {"{{ .Prompt }}", '{{ "{{" }}'}
    return re.sub(r'{{ "{{" }}|{{ \.Prompt }}', lambda m: title if "Prompt" in m.group() else "{{", body)


@pytest.mark.parametrize(
    "template",
    [
        BUILTIN["chat"],
        BUILTIN["descfmt"],
        PromptTemplate(name="braces", kind="chat", system='Answer in {{json}} with "quotes"', prompt="Item: {title}"),
    ],
    ids=["chat", "descfmt", "braces"],
)
def test_modelfile_template_renders_the_prompt_03_uses(template, tiny_model_dir, tmp_path):
    cfg, paths = stage_paths(tiny_overrides(tiny_model_dir, tmp_path / "root"))
    shutil.copytree(tiny_model_dir, paths.merged)  # stands in for a merged model: tokenizer + generation config
    text = export.modelfile(cfg, paths, template, "tiny-f16.gguf")
    title = "Acme Stainless Kettle 1.7 l {with} \"quotes\""
    from transformers import AutoTokenizer

    expected = render_prompts(AutoTokenizer.from_pretrained(str(paths.merged)), template, [title])[0]
    assert ollama_render(text, title) == expected
    assert "FROM ./tiny-f16.gguf" in text.splitlines()
    params = [line.split(" ", 2)[1:] for line in text.splitlines() if line.startswith("PARAMETER ")]
    assert ["stop", '"<|im_end|>"'] in params and ["stop", '"<|im_start|>"'] in params  # EOS + the turn token
    # the cpu preset decodes greedily with repetition_penalty 1.2 and 96 new tokens
    assert ["temperature", "0"] in params and ["num_predict", str(cfg.eval.max_new_tokens)] in params
    assert ["repeat_penalty", str(cfg.eval.repetition_penalty)] in params and ["repeat_last_n", "-1"] in params


def test_modelfile_names_settings_ollama_lacks_and_samples_when_eval_does(tiny_model_dir, tmp_path):
    cfg, paths = stage_paths(tiny_overrides(
        tiny_model_dir, tmp_path / "root", "eval.do_sample=true", "eval.temperature=0.7", "eval.top_p=0.9",
        "eval.top_k=40", "eval.no_repeat_ngram_size=3", "eval.stop_at_turn=false",
    ))
    shutil.copytree(tiny_model_dir, paths.merged)
    text = export.modelfile(cfg, paths, BUILTIN["chat"], "x.gguf")
    params = [line.split(" ", 2)[1:] for line in text.splitlines() if line.startswith("PARAMETER ")]
    assert ["temperature", "0.7"] in params and ["top_p", "0.9"] in params and ["top_k", "40"] in params
    assert [p for p in params if p[0] == "stop"] == [["stop", '"<|im_end|>"']]
    assert "# Not available in Ollama: eval.no_repeat_ngram_size=3" in text


# --------------------------------------------------------------------------- Hub (a stand-in for its API)


class FakeHub:
    """Stands in for huggingface_hub.HfApi (the Hub cannot be reached from the tests): records the
    repository it would create and the files of the commit; ``refuse`` makes create_repo answer
    with that HTTP status, as the Hub does for a bad token."""

    instances: list["FakeHub"] = []
    refuse: int | None = None

    def __init__(self, token=None):
        self.token = token
        self.repos: list[dict] = []
        self.commits: list[dict] = []
        FakeHub.instances.append(self)

    def create_repo(self, repo_id, **kw):
        if FakeHub.refuse:
            import httpx
            from huggingface_hub.errors import HfHubHTTPError

            request = httpx.Request("POST", "https://huggingface.co/api/repos/create")
            raise HfHubHTTPError("Invalid credentials", response=httpx.Response(FakeHub.refuse, request=request))
        self.repos.append({"repo_id": repo_id, **kw})

    def create_commit(self, repo_id, operations, commit_message, **kw):
        files = {}
        for op in operations:
            data = op.path_or_fileobj
            files[op.path_in_repo] = data if isinstance(data, bytes) else open(data, "rb").read()
        self.commits.append({"repo_id": repo_id, "files": files, "message": commit_message})
        return None


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeHub.instances, FakeHub.refuse = [], None
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    return FakeHub


METRICS = {"rows": 6, "seed": 42, "models": {
    "base": {"rouge1": 0.1, "rouge2": 0.02, "rougeL": 0.08, "bleu": 1.5, "chrf": 12.0, "words_mean": 40.0},
    "tuned": {"rouge1": 0.25, "rouge2": 0.07, "rougeL": 0.19, "bleu": 4.25, "chrf": 21.5, "words_mean": 55.5},
}}


def test_hub_push_uploads_adapter_merged_and_card_private_and_never_the_token(
    tiny_model_dir, tmp_path, fake_hub, capfd
):
    overrides, paths = tiny_run(tiny_model_dir, tmp_path, "hub.repo=me/kettle-writer", "hub.merged=true", "export.gguf=[]")
    paths.eval.mkdir(parents=True)
    (paths.eval / "metrics.json").write_text(json.dumps(METRICS))
    assert run(overrides) == 0
    (api,) = fake_hub.instances
    assert api.token == SECRET  # given to the client, and nowhere else (below)
    assert api.repos == [{"repo_id": "me/kettle-writer", "private": True, "exist_ok": True}]
    (commit,) = api.commits
    files = commit["files"]
    adapter = sorted(p.name for p in paths.adapter.iterdir() if p.is_file() and p.name != "README.md")
    merged = sorted(f"merged/{p.name}" for p in paths.merged.iterdir() if p.is_file())
    assert sorted(files) == sorted(["README.md", *adapter, *merged])
    assert files["adapter_model.safetensors"] == (paths.adapter / "adapter_model.safetensors").read_bytes()
    card = files["README.md"].decode()
    assert card.startswith("---\n") and "library_name: peft" in card
    assert f"`{tiny_model_dir}`" in card  # the base model
    assert "| tuned | 0.2500 | 0.0700 | 0.1900 | 4.2500 | 21.5000 | 55.5000 |" in card
    assert '"prompt": "Product title: {title}"' in card and BUILTIN["chat"].system in card
    assert 'AutoPeftModelForCausalLM.from_pretrained("me/kettle-writer")' in card
    assert 'subfolder="merged"' in card and "ollama" not in card.lower()  # no GGUF pushed
    out, err = capfd.readouterr()
    assert "Hugging Face token from $HF_TOKEN" in err
    written = [p for p in paths.root.rglob("*") if p.is_file()]
    assert all(SECRET.encode() not in p.read_bytes() for p in written)
    assert all(SECRET.encode() not in data for data in files.values())
    assert SECRET not in out + err


def test_public_when_asked_and_a_refused_token_is_one_line(tiny_model_dir, tmp_path, fake_hub, capfd):
    overrides, paths = tiny_run(tiny_model_dir, tmp_path, "hub.repo=me/kettle-writer", "hub.private=false", "export.gguf=[]")
    assert run(overrides) == 0
    assert fake_hub.instances[-1].repos[0]["private"] is False
    assert "Not evaluated yet" in fake_hub.instances[-1].commits[0]["files"]["README.md"].decode()
    capfd.readouterr()
    fake_hub.refuse = 401
    assert run(overrides) == 2
    err = capfd.readouterr().err
    assert err.strip().splitlines()[-1] == (
        "error: the Hub refused the push to me/kettle-writer (HTTP 401): check a token with write access to it"
    )
    assert SECRET not in err


# --------------------------------------------------------------------------- slow: the embedded model


@pytest.mark.slow
def test_embedded_model_gguf_round_trip(tmp_path, fake_hub, capfd):
    """01 on the bundled sample, a small random LoRA on SmolLM2-135M, then 05 (merging on the fly):
    f16 and q8_0 GGUF files, the f16 file giving the merged model's greedy outputs on 8 titles."""
    import importlib.metadata
    import time

    import gguf

    from prodesc import prepare

    if not (install.converter_dir() / "convert_hf_to_gguf.py").is_file():
        pytest.skip("the GGUF converter is not installed (src/00_install.py)")
    overrides = [f"paths.root={tmp_path}", "paths.run=e2e", "eval.max_new_tokens=24", "eval.rows=8",
                 "hub.repo=me/smol-descriptions"]
    assert prepare.main(["--preset", "cpu", *overrides]) == 0
    cfg, paths = stage_paths(overrides)
    write_embedded_adapter(cfg, paths)
    start = time.monotonic()
    assert run(overrides) == 0
    seconds = time.monotonic() - start
    check = json.loads((paths.export / "export_check.json").read_text())
    f16, q8 = check["gguf"]["f16"], check["gguf"]["q8_0"]
    assert check["checked"] == 8 and f16["equal"] == 8 and f16["passed"]
    assert f16["outputs"] == check["merged_outputs"] and all(check["merged_outputs"])
    assert q8["rougeL_vs_merged"] >= export.MIN_ROUGE_L and q8["passed"] == check["passed"] is True
    assert 0.45 < q8["bytes"] / f16["bytes"] < 0.6
    print(f"\n05 on SmolLM2-135M: {seconds:.0f} s; f16 {f16['bytes'] / 2**20:.1f} MiB in {f16['convert_s']} s, "
          f"{f16['equal']}/8 equal; q8_0 {q8['bytes'] / 2**20:.1f} MiB in {q8['convert_s']} s, {q8['equal']}/8 "
          f"equal, ROUGE-L {q8['rougeL_vs_merged']}")
    # the Modelfile serves the smaller file; the push carries the GGUF files and the Modelfile
    assert "FROM ./e2e-q8_0.gguf" in (paths.export / "Modelfile").read_text().splitlines()
    files = fake_hub.instances[-1].commits[-1]["files"]
    assert {"gguf/e2e-f16.gguf", "gguf/e2e-q8_0.gguf", "gguf/Modelfile"} <= set(files)
    assert "ollama create e2e -f Modelfile" in files["README.md"].decode()
    # the venv's gguf (transformers' GGUF loader, 02's embedded model) is still 0.19.0, from site-packages
    assert importlib.metadata.version("gguf") == "0.19.0" and install.CONVERTER_FOLDER not in gguf.__file__
    # a second run reuses the export
    capfd.readouterr()
    assert run(overrides) == 0
    assert "already exported" in capfd.readouterr().err
