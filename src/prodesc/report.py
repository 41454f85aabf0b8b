"""Evaluation outputs: side-by-side CSVs, a metrics bar chart and a standalone HTML report.

CSV files are UTF-8 with a byte-order mark and every cell quoted, so Excel and Google Sheets
open them with accents intact and newlines kept inside cells. Every data string in the HTML
report is escaped with ``html.escape``. Every file is written atomically.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prodesc import atomic
from prodesc.retrieval import titles_line

MAIN_METRICS = ("rouge1", "rouge2", "rougeL", "bleu", "chrf", "semantic_similarity")
"""Metrics drawn in metrics.png (BLEU and chrF, on a 0-100 scale, are divided by 100)."""

TABLE_METRICS = (
    "rouge1",
    "rouge2",
    "rougeL",
    "bleu",
    "chrf",
    "semantic_similarity",
    "words_mean",
    "words_median",
    "empty_rate",
    "title_echo_rate",
    "rows",
)
EXAMPLES = 20
"""Rows in improved_examples.csv, worst_regressions.csv and the HTML sample."""


def side_by_side_rows(
    rows: Sequence[dict[str, Any]], outputs: dict[str, list[str]], rouge_l: dict[str, list[float]]
) -> list[dict[str, Any]]:
    """One dict per evaluated row: row (its index in the evaluated split: the key to join on, as
    uid is empty where the raw file has none), uid, title, (example_title: the titles of the
    examples in the prompt, with data.example_words, joined by " | "), reference,
    <label>_output..., rougeL_<label>..., rougeL_delta (tuned - base). ``outputs``/``rouge_l`` are
    keyed by model label; base and tuned come first."""
    labels = list(outputs)
    table = []
    for i, row in enumerate(rows):
        item: dict[str, Any] = {"row": row["row"], "uid": row["uid"], "title": row["title"]}
        if "examples" in row:
            item["example_title"] = titles_line(row["examples"])
        item["reference"] = row["content"]
        for label in labels:
            item[f"{label}_output"] = outputs[label][i]
        for label in labels:
            item[f"rougeL_{label}"] = round(rouge_l[label][i], 6)
        if "base" in rouge_l and "tuned" in rouge_l:
            item["rougeL_delta"] = round(rouge_l["tuned"][i] - rouge_l["base"][i], 6)
        table.append(item)
    return table


def long_row_metrics(
    rows: Sequence[dict[str, Any]], per_row: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Every per-row score of every model, one line per (model, row): row, uid, model, rouge1, ..."""
    return [
        {"row": row["row"], "uid": row["uid"], "model": label, **scores[i]}
        for label, scores in per_row.items()
        for i, row in enumerate(rows)
    ]


def csv_bytes(table: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> bytes:
    """``table`` as CSV: UTF-8 with BOM, every cell quoted, CRLF between records."""
    cols = list(columns or (table[0].keys() if table else []))
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    writer.writerow(cols)
    for item in table:
        writer.writerow([item.get(c, "") for c in cols])
    return buf.getvalue().encode("utf-8-sig")


def write_csv(path: Path, table: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> None:
    atomic.write_bytes(path, csv_bytes(table, columns))


def gains_and_losses(table: Sequence[dict[str, Any]], n: int = EXAMPLES) -> tuple[list, list]:
    """(rows where the tuned model gained most over the base, rows where it lost most)."""
    scored = [r for r in table if "rougeL_delta" in r]
    up = sorted((r for r in scored if r["rougeL_delta"] > 0), key=lambda r: -r["rougeL_delta"])[:n]
    down = sorted((r for r in scored if r["rougeL_delta"] < 0), key=lambda r: r["rougeL_delta"])[:n]
    return up, down


def plot_metrics(path: Path, summaries: dict[str, dict[str, Any]], title: str = "") -> None:
    """A grouped bar chart of the main metrics per model (0-1 scale), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m for m in MAIN_METRICS if all(isinstance(s.get(m), (int, float)) for s in summaries.values())]
    labels = list(summaries)
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(min(12.0, 2.0 + 1.2 * len(names) * max(1, len(labels)) ** 0.5), 4.2))
    for j, label in enumerate(labels):
        values = [_unit(m, summaries[label][m]) for m in names]
        xs = [i + (j - (len(labels) - 1) / 2) * width for i in range(len(names))]
        bars = ax.bar(xs, values, width, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(range(len(names)), [_display(m) for m in names])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (0-1)")
    ax.set_title(title or "metrics per model")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic.write_bytes(path, buf.getvalue())


def _unit(metric: str, value: float) -> float:
    return value / 100.0 if metric in ("bleu", "chrf") else value


def _display(metric: str) -> str:
    return {"bleu": "BLEU/100", "chrf": "chrF/100", "semantic_similarity": "semantic"}.get(metric, metric)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d1d1f;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #d0d7de;padding:6px 8px;vertical-align:top;text-align:left}
th{background:#f3f4f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.text{white-space:pre-wrap;max-width:360px}.meta{color:#57606a;font-size:13px}
img{max-width:100%}
"""


def html_report(
    summaries: dict[str, dict[str, Any]],
    table: Sequence[dict[str, Any]],
    meta: dict[str, Any],
    png: bytes | None = None,
    sample: int = EXAMPLES,
) -> str:
    """A standalone HTML page: run facts, the metrics table, the chart and a sample of rows."""
    e = html.escape
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(str(meta.get('title', 'prodesc evaluation')))}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(str(meta.get('title', 'prodesc evaluation')))}</h1>",
        '<table class="meta">',
    ]
    for key, value in meta.items():
        if key != "title":
            parts.append(f"<tr><th>{e(str(key))}</th><td>{e(str(value))}</td></tr>")
    parts.append("</table><h2>Metrics</h2><table><tr><th>metric</th>")
    parts += [f"<th>{e(label)}</th>" for label in summaries]
    parts.append("</tr>")
    for metric in TABLE_METRICS:
        parts.append(f"<tr><th>{e(metric)}</th>")
        parts += [f'<td class="num">{e(_fmt(s.get(metric, "")))}</td>' for s in summaries.values()]
        parts.append("</tr>")
    parts.append("</table>")
    if png:
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<img alt="metrics per model" src="data:image/png;base64,{data}">')
    parts.append(
        _rows_table(table[:sample], f"Side by side (first {min(sample, len(table))} of {len(table)} rows)")
    )
    up, down = gains_and_losses(table, n=5)
    if up or down:
        parts.append(_rows_table(up, "Largest gains of the fine-tuned model (ROUGE-L)"))
        parts.append(_rows_table(down, "Largest regressions of the fine-tuned model (ROUGE-L)"))
    parts.append("</body></html>")
    return "\n".join(parts)


def _rows_table(rows: Sequence[dict[str, Any]], heading: str) -> str:
    e = html.escape
    if not rows:
        return f"<h2>{e(heading)}</h2><p>no rows</p>"
    cols = list(rows[0].keys())
    out = [f"<h2>{e(heading)}</h2><table><tr>"] + [f"<th>{e(c)}</th>" for c in cols] + ["</tr>"]
    for row in rows:
        out.append("<tr>")
        for c in cols:
            value = row.get(c, "")
            cls = "num" if isinstance(value, (int, float)) else "text"
            out.append(f'<td class="{cls}">{e(_fmt(value))}</td>')
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def write_all(
    folder: Path,
    summaries: dict[str, dict[str, Any]],
    table: list[dict[str, Any]],
    meta: dict[str, Any],
) -> dict[str, Path]:
    """side_by_side.csv, improved_examples.csv, worst_regressions.csv, metrics.png, report.html."""
    folder = Path(folder)
    files = {
        name: folder / name
        for name in (
            "side_by_side.csv",
            "improved_examples.csv",
            "worst_regressions.csv",
            "metrics.png",
            "report.html",
        )
    }
    columns = list(table[0].keys()) if table else ["uid", "title", "reference"]
    write_csv(files["side_by_side.csv"], table, columns)
    up, down = gains_and_losses(table)
    write_csv(files["improved_examples.csv"], up, columns)
    write_csv(files["worst_regressions.csv"], down, columns)
    plot_metrics(files["metrics.png"], summaries, str(meta.get("title", "")))
    png = files["metrics.png"].read_bytes()
    atomic.write_text(files["report.html"], html_report(summaries, table, meta, png))
    return files
