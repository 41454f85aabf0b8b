"""What choosing among MBR candidates costs: rouge_score's own ROUGE-L vs prodesc's (CPU, no model).

    python bench/mbr_choice.py [--titles 8] [--samples 8] [--references 40]

For each of --titles rounds, --samples descriptions of the bundled sample stand in for the
candidates of one title and --references others for eval.mbr_references. The same choices are
timed side by side: with rouge_score's RougeScorer per pair (a table of len(a) x len(b) cells,
each text tokenized again for every pair), and with prodesc.metrics.agreement (each text tokenized
once, bit-parallel LCS), both against the other candidates and against the references. Prints the
times, the ratios, and checks that both pick the same candidate every time.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from prodesc import metrics  # noqa: E402
from prodesc.prepare import BUNDLED_SAMPLE  # noqa: E402


def library_choice(candidates: list[str], references: list[str]) -> int:
    """The same choice with rouge_score's scorer for every pair, each pair of candidates scored
    once (ROUGE-L F is symmetric): what prodesc computed before."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    n = len(candidates)
    if references:
        means = [sum(scorer.score(r, c)["rougeL"].fmeasure for r in references) / len(references)
                 for c in candidates]
    else:
        pair = [[0.0] * n for _ in range(n)]
        for i in range(n):
            for j in range(i + 1, n):
                pair[i][j] = pair[j][i] = scorer.score(candidates[j], candidates[i])["rougeL"].fmeasure
        means = [sum(row) / (n - 1) for row in pair]
    return max(range(n), key=lambda i: (means[i], -i))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--titles", type=int, default=8)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--references", type=int, default=40)
    args = ap.parse_args()

    with open(BUNDLED_SAMPLE, encoding="utf-8") as fh:
        texts = [t for t in (str(json.loads(line).get("content") or "") for line in fh) if t.strip()]
    rng = random.Random(0)
    rounds = [rng.sample(texts, args.samples + args.references) for _ in range(args.titles)]
    words = sum(len(t.split()) for r in rounds for t in r) / sum(len(r) for r in rounds)
    print(f"{args.titles} titles x {args.samples} candidates; {args.references} references; "
          f"{words:.0f} words per text (bundled sample)", flush=True)
    for label, refs_of in (("against each other", lambda r: []),
                           (f"against {args.references} references", lambda r: r[args.samples:])):
        start = time.perf_counter()
        slow = [library_choice(r[: args.samples], refs_of(r)) for r in rounds]
        t_lib = time.perf_counter() - start
        start = time.perf_counter()
        fast = [metrics.mbr_choice(r[: args.samples], "rougeL", refs_of(r)) for r in rounds]
        t_ours = time.perf_counter() - start
        same = sum(a == b for a, b in zip(slow, fast))
        print(f"{label:>24}: rouge_score {t_lib:6.2f} s   prodesc {t_ours:5.2f} s   "
              f"ratio {t_lib / t_ours:5.1f}x   same choice {same}/{len(rounds)}", flush=True)
        if same != len(rounds):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
