"""python bench/quality_cv.py --source ../shared/data/amazon_titles_sample.jsonl --seeds 1 2 3 4 5

Base vs fine-tuned on real rows, over several seeded splits (repeated random sub-sampling).

One split of 200 rows leaves ~29 test rows: too few to tell a 0.3 chrF difference from noise. This
runs the whole pipeline (01 → 02 → 03 on the test split) once per seed; each seed re-draws the
train/validation/test split, the LoRA initialisation and the data order, and every row is scored
only by a model that did not train on it. The test rows of all seeds are then pooled (a row can be
in several seeds' test splits: each time it is scored by a different model) and reported as:

- per seed: ROUGE-1/2/L, BLEU, chrF, words, echo rate of the base and the fine-tuned model;
- pooled: the same over all test rows, with paired bootstrap 95% intervals of tuned − base
  (rows resampled; BLEU and chrF recomputed as corpus scores on each resample);
- how many seeds the fine-tuned model wins on each metric;
- two reference points that need no model, scored on the same rows: `constant`, one fixed text
  for every row (the training description with the highest mean ROUGE-L against the other
  training descriptions, or a seeded 500 of them: what a model that ignores the title could at
  best learn to write), and `nearest`, the training description of the most similar training
  title (word overlap).

With --split validation the same is done on each seed's validation split: compare recipes
there (one --name per recipe), then score the chosen one on the test splits.

With --without-edition-note every text (references, outputs, the two reference points) is scored
with Amazon's edition note cut out ("This text refers to an out of print or unavailable edition
of this title.", rawdata.EDITION_NOTE): a third of the sample's descriptions end with it,
and a model that learns to write it after every title gains ROUGE and BLEU without describing
anything. 01 cuts it from the data itself (data.drop_edition_note, the default), so this is for
runs prepared with data.drop_edition_note=false. The report is then
<name>-<split>-without-note.json. --without-review-byline does the same with the copyright line of
quoted trade reviews ("Copyright 1991 Reed Business Information, Inc.", data.drop_review_byline),
for runs prepared before 01 cut it (report: -without-byline; both flags: -without-note-byline).

Writes <root>/quality_cv/<name>-<split>.json (atomically) and prints a table. Each seed takes
about as long as the preset's 02 + 03 (cpu-quality: ~15 min on 2 cores). A finished seed is not redone (02 and 03 skip what is complete), so an
interrupted run resumes. Extra key=value arguments go to every stage (e.g.
eval.repetition_penalty=1.1).

With --train-seed-offset N each seed's model is trained with train.seed=seed+N: the same splits
and examples, another LoRA init, dropout and batch order. Run it with the same --seeds and another
--name to see how far the scores move from one training to the next.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from prodesc import metrics  # noqa: E402
from prodesc.atomic import write_text  # noqa: E402
from prodesc.rawdata import Boilerplate, boilerplate_for, cut_boilerplate  # noqa: E402

STAGES = ("01_prepare.py", "02_sft_qlora.py", "03_merge_fp16.py")
SCORES = ("rouge1", "rouge2", "rougeL", "bleu", "chrf")
MODELS = ("base", "tuned", "constant", "nearest")  # the last two need no model
MEDOID_POOL = 500  # training descriptions the constant is chosen from, at most


def run_seed(args: argparse.Namespace, seed: int) -> Path:
    """Run 01-03 for one seed; return its side_by_side.csv."""
    run = f"{args.name}-cv-s{seed}"
    retrain = [f"train.seed={seed + args.train_seed_offset}"] if args.train_seed_offset else []
    common = ["--preset", args.preset, "--root", str(args.root), f"data.source={args.source}",
              f"seed={seed}", f"paths.run={run}", *retrain, *args.overrides]
    folder = "eval" if args.split == "test" else "eval_validation"
    for stage in STAGES:
        start = time.time()
        extra = [f"eval.split={args.split}"] if stage.startswith("03") else []
        out = subprocess.run([sys.executable, str(REPO / "src" / stage), *common, *extra],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if out.returncode != 0:
            sys.exit(f"seed {seed}: {stage} failed (exit {out.returncode}): {out.stderr.strip()[-2000:]}")
        print(f"  seed {seed}: {stage} {time.time() - start:.0f} s", flush=True)
    return args.root / "runs" / run / folder / "side_by_side.csv"


def read_rows(csv_path: Path, seed: int) -> list[dict]:
    with open(csv_path, encoding="utf-8-sig", newline="") as f:
        return [dict(r, seed=seed) for r in csv.DictReader(f)]


def without_boilerplate(rows: list[dict], kinds: tuple[Boilerplate, ...]) -> None:
    """--without-edition-note / --without-review-byline: cut them out of every text the rows hold."""
    for row in rows:
        for key in ("reference", *(f"{m}_output" for m in MODELS)):
            row[key] = cut_boilerplate(row[key], kinds)


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def medoid(texts: list[str]) -> int:
    """Index of the text with the highest mean ROUGE-L F-measure against the others (the first on a
    tie): rouge_score's tokens, each text tokenized once, the LCS bit-parallel (Hyyro 2004)."""
    from rouge_score import tokenizers

    tok = tokenizers.DefaultTokenizer(use_stemmer=False)
    tokens = [tok.tokenize(t) for t in texts]
    masks = []
    for toks in tokens:
        m: dict[str, int] = {}
        for i, w in enumerate(toks):
            m[w] = m.get(w, 0) | 1 << i
        masks.append(m)

    def rouge_l(a: int, b: int) -> float:
        if not tokens[a] or not tokens[b]:
            return 0.0
        full = v = (1 << len(tokens[b])) - 1
        for w in tokens[a]:
            u = v & masks[b].get(w, 0)
            v = ((v + u) | (v - u)) & full
        lcs = len(tokens[b]) - v.bit_count()
        return 2 * lcs / (len(tokens[a]) + len(tokens[b])) if lcs else 0.0

    n = len(texts)
    total = [0.0] * n
    for a in range(n):
        for b in range(a + 1, n):
            score = rouge_l(a, b)
            total[a] += score
            total[b] += score
    return max(range(n), key=lambda i: (total[i], -i))


def add_reference_points(args: argparse.Namespace, seed: int, rows: list[dict]) -> None:
    """Add ``constant_output`` and ``nearest_output`` to each row, from the seed's training split."""
    from prodesc.config import load_config
    from prodesc.paths import RunPaths
    from prodesc.prepared import open_prepared

    cfg = load_config(args.preset, [f"data.source={args.source}", f"seed={seed}", *args.overrides])
    train = open_prepared(RunPaths.from_config(cfg, args.root), ("train",), ("title", "content"))[1]["train"]
    titles, contents = [words(t) for t in train["title"]], list(train["content"])
    # the medoid costs n² ROUGE-L pairs: over a seeded sample when the training split is large
    pool = contents if len(contents) <= MEDOID_POOL else random.Random(seed).sample(contents, MEDOID_POOL)
    constant = pool[medoid(pool)]
    for row in rows:
        query = words(row["title"])
        overlap = [len(query & t) / (len(query | t) or 1) for t in titles]  # Jaccard; first on a tie
        best = max(range(len(titles)), key=lambda i: (overlap[i], -i))
        row["constant_output"], row["nearest_output"] = constant, contents[best]


def scores(rows: list[dict], model: str) -> tuple[dict, list[dict]]:
    outputs = [r[f"{model}_output"] for r in rows]
    return metrics.evaluate(outputs, [r["reference"] for r in rows], [r["title"] for r in rows], semantic=False)


def corpus_stats(rows: list[dict], model: str) -> dict:
    """Per-row sacrebleu statistics (BLEU, chrF): a resample's corpus score is computed from their sum."""
    import numpy as np
    from sacrebleu.metrics import BLEU, CHRF

    outputs, refs = [r[f"{model}_output"] for r in rows], [r["reference"] for r in rows]
    stats = {}
    for name, scorer in (("bleu", BLEU()), ("chrf", CHRF())):
        per_row = np.array(scorer._extract_corpus_statistics(outputs, [refs]))
        stats[name] = (scorer, per_row)
    # the sum over all rows must give sacrebleu's own corpus scores (what metrics.json reports)
    full = [scorer._compute_score_from_stats(list(per_row.sum(0))).score for scorer, per_row in stats.values()]
    expected = metrics.corpus_bleu_chrf(outputs, refs)
    assert all(abs(a - b) < 1e-6 for a, b in zip(full, expected)), (full, expected)
    return stats


def bootstrap(rows: list[dict], per_row: dict[str, list[dict]], n: int, seed: int,
              other: str = "base", stats: dict | None = None) -> dict[str, list[float]]:
    """Paired bootstrap 95% intervals of tuned − ``other`` for every score (rows resampled together);
    ``stats``: the models' :func:`corpus_stats`, when already computed."""
    import numpy as np

    rng = np.random.default_rng(seed)
    size = len(rows)
    pair = ("tuned", other)
    rouge = {m: np.array([[r[k] for k in ("rouge1", "rouge2", "rougeL")] for r in per_row[m]]) for m in pair}
    stats = {m: stats[m] if stats else corpus_stats(rows, m) for m in pair}
    diffs: dict[str, list[float]] = {k: [] for k in SCORES}
    for _ in range(n):
        idx = rng.integers(0, size, size)
        for j, k in enumerate(("rouge1", "rouge2", "rougeL")):
            diffs[k].append(float((rouge["tuned"][idx, j] - rouge[other][idx, j]).mean()))
        for k in ("bleu", "chrf"):
            score = {m: stats[m][k][0]._compute_score_from_stats(list(stats[m][k][1][idx].sum(0))).score
                     for m in pair}
            diffs[k].append(score["tuned"] - score[other])
    return {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in diffs.items()}


def fmt(summary: dict) -> str:
    return (f"{summary['rouge1']:.3f}  {summary['rouge2']:.3f}  {summary['rougeL']:.3f}  "
            f"{summary['bleu']:5.2f}  {summary['chrf']:5.1f}  {summary['words_mean']:5.0f}  "
            f"{summary['title_echo_rate']:4.0%}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="real trn.json rows (JSON Lines, .json or .gz)")
    parser.add_argument("--preset", default="cpu-quality")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--root", type=Path, default=REPO / "artifacts")
    parser.add_argument("--name", default="", help="run name prefix (default: the preset): one per recipe")
    parser.add_argument("--split", choices=("test", "validation"), default="test",
                        help="score each seed's test split, or its validation split (to choose a recipe)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--without-edition-note", action="store_true",
                        help="score every text with Amazon's edition note cut out")
    parser.add_argument("--without-review-byline", action="store_true",
                        help="score every text with trade reviews' copyright lines cut out")
    parser.add_argument("--train-seed-offset", type=int, default=0,
                        help="train each seed with train.seed=seed+N (0: the seed's own): a second training")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides for every stage")
    args = parser.parse_args(argv)
    args.source = str(Path(args.source).resolve())
    args.name = args.name or args.preset

    cut = boilerplate_for(argparse.Namespace(drop_edition_note=args.without_edition_note,
                                             drop_review_byline=args.without_review_byline))
    rows: list[dict] = []
    header = "                  ROUGE-1 ROUGE-2 ROUGE-L  BLEU   chrF  words  echo"
    lines = [header]
    per_seed = {}
    for seed in args.seeds:
        seed_rows = read_rows(run_seed(args, seed), seed)
        add_reference_points(args, seed, seed_rows)
        if cut:
            without_boilerplate(seed_rows, cut)
        rows += seed_rows
        per_seed[seed] = {m: scores(seed_rows, m)[0] for m in MODELS}
        lines += [f"seed {seed:<3} {MODELS[0]:<8} {fmt(per_seed[seed][MODELS[0]])}",
                  *(f"         {m:<8} {fmt(per_seed[seed][m])}" for m in MODELS[1:])]
        print("\n".join(lines[-len(MODELS):]), flush=True)

    pooled, per_row = {}, {}
    for model in MODELS:
        pooled[model], per_row[model] = scores(rows, model)
    stats = {m: corpus_stats(rows, m) for m in MODELS}  # once per model, not once per comparison
    intervals = {other: bootstrap(rows, per_row, args.bootstrap, seed=0, other=other, stats=stats)
                 for other in MODELS if other != "tuned"}
    wins = {k: sum(per_seed[s]["tuned"][k] > per_seed[s]["base"][k] for s in args.seeds) for k in SCORES}
    lines += [f"pooled ({len(rows)} rows, {len({(r['title'], r['reference']) for r in rows})} distinct)",
              *(f"         {m:<8} {fmt(pooled[m])}" for m in MODELS),
              *(f"tuned - {other}, paired bootstrap 95%: "
                + ", ".join(f"{k} {lo:+.3f}..{hi:+.3f}" for k, (lo, hi) in iv.items())
                for other, iv in intervals.items()),
              f"seeds where tuned > base (of {len(args.seeds)}): "
              + ", ".join(f"{k} {v}" for k, v in wins.items())]
    print("\n".join(lines[-(len(MODELS) + len(intervals) + 2):]))
    report = {"preset": args.preset, "name": args.name, "split": args.split, "source": args.source,
              "seeds": args.seeds, "overrides": args.overrides,
              "train_seed_offset": args.train_seed_offset, "without_edition_note": args.without_edition_note,
              "without_review_byline": args.without_review_byline,
              "per_seed": per_seed, "pooled": pooled,
              "rows": len(rows), "bootstrap_95": intervals["base"],
              "bootstrap_95_vs": {m: iv for m, iv in intervals.items() if m != "base"},
              "seed_wins": wins, "table": lines}
    suffix = "-without" * bool(cut) + "".join(f"-{b.setting.rsplit('_')[-1]}" for b in cut)
    out = args.root / "quality_cv" / f"{args.name}-{args.split}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(report, indent=2))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
