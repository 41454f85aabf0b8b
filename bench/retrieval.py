"""python bench/retrieval.py [--sizes 10000 50000 200000] [--queries 2000]

What data.example_words costs in 01: finding each row's most similar training title.

Titles are made up (no data is read): 4-14 words drawn from a 50,000-word vocabulary with Zipf
weights, so a few words ("the", "for") are in most titles and most words in few, as in product
titles. For each training-split size it times building the index and searching a sample of
titles (training titles, each excluding itself), then gives the time for a whole 01 run of that
size: every training row plus 2,000 validation/test rows. Beside it, on a 2,000-title split, the
plain Python search that the definition reads as (the same answers are checked).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from prodesc.retrieval import TitleIndex, title_words  # noqa: E402

VOCAB = 50_000


def make_titles(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(VOCAB)]
    weights = [1.0 / (rank + 1) for rank in range(VOCAB)]
    return [" ".join(rng.choices(words, weights, k=rng.randint(4, 14))) for _ in range(n)]


def plain_search(train: list[str], queries: list[str], exclude: list[int]) -> list[int]:
    """One Python set comparison per pair (what scratch code would do)."""
    sets = [title_words(t) for t in train]
    out = []
    for i, q in enumerate(map(title_words, queries)):
        best, best_score = -1, -1.0
        for row, t in enumerate(sets):
            if row == exclude[i]:
                continue
            score = len(q & t) / (len(q | t) or 1)
            if score > best_score:
                best, best_score = row, score
        out.append(best)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    parser.add_argument("--queries", type=int, default=2000, help="titles searched per size (then scaled)")
    args = parser.parse_args()

    small = make_titles(2000, seed=1)
    own = list(range(len(small)))
    start = time.perf_counter()
    index = TitleIndex(small)
    fast = index.nearest(small, exclude=own)
    t_fast = time.perf_counter() - start
    start = time.perf_counter()
    slow = plain_search(small, small, own)
    t_slow = time.perf_counter() - start
    print(f"2,000 training titles, each searched (excluding itself): TitleIndex {t_fast:.2f} s, "
          f"plain Python {t_slow:.2f} s ({t_slow / t_fast:.0f}x); same answers: {fast == slow}")

    print(f"{'training rows':>14} {'index build':>12} {'per 1,000 titles':>17} {'01 run (train + 2,000)':>23}")
    for size in args.sizes:
        titles = make_titles(size, seed=size)
        start = time.perf_counter()
        index = TitleIndex(titles)
        build = time.perf_counter() - start
        picked = random.Random(0).sample(range(size), min(args.queries, size))
        start = time.perf_counter()
        index.nearest([titles[i] for i in picked], exclude=picked)
        per = (time.perf_counter() - start) / len(picked)
        total = build + per * (size + 2000)
        print(f"{size:>14,} {build:>10.2f} s {per * 1000:>15.2f} s {total:>21.0f} s")


if __name__ == "__main__":
    main()
