"""python bench/make_full_trn.py OUT [--rows 2248619] [--seed 0] [--boilerplate]

Write a deterministic, realistic stand-in for AmazonTitles-1.3MM ``trn.json`` (JSON Lines; gzip
when OUT ends in .gz) for benchmarks. Never writes into the repository.

Shape, from the figures in ../shared/data/README.md:
- 2,248,619 rows by default; ~38% with empty content;
- title length lognormal around median 54 / mean 61 characters, capped at 1,999;
- content length lognormal around median 398 / mean 619 / p75 ~800, plus a long tail up to
  197,622 characters (a handful of rows);
- HTML entities (&#8217; &#8211; &amp; ...) and a few tags as the raw file has them;
- ~1% exact duplicates; ``target_ind``/``target_rel`` arrays; ``uid`` strings;
- with --boilerplate, what 01 cuts out of descriptions, in the sample's shares: Amazon's edition
  note after 32% of the non-empty descriptions (glued or spaced) and a trade review's copyright
  line after 18% (drawn from a second seeded generator, so the rest of the file is as without it).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import sys
from pathlib import Path

FULL_ROWS = 2_248_619
EMPTY_SHARE = 0.38
TITLE_MEDIAN, TITLE_SIGMA, TITLE_MAX = 54, 0.494, 1999
CONTENT_MEDIAN, CONTENT_SIGMA, CONTENT_MAX = 398, 0.94, 197_622
LONG_TAIL_EVERY = 150_000  # one row in this many gets a 20k-197k character description
DUPLICATE_SHARE = 0.01

WORDS = (
    "the a and of for with to in this is your on by from durable soft premium classic new set pack "
    "kit book novel edition guide story author series volume paperback hardcover cd dvd music album "
    "live deluxe kitchen steel stainless cotton leather wireless charger cable case cover black white "
    "blue red green small large inch size fits easy clean use gift kids women men adult toy game "
    "puzzle camera lens light lamp garden tool drill battery pet dog cat food bowl baby bottle "
    "organic natural vitamin shampoo cream brush office paper pen notebook desk chair table storage "
    "box bag travel outdoor sport ball shoes boots jacket shirt dress quality design perfect every "
    "day features includes made high comfortable lightweight compact portable adjustable"
).split()
ENTITIES = ["&#8217;", "&#8211;", "&#8212;", "&amp;", "&quot;", "&#8220;", "&#8221;", "&nbsp;", "&#174;"]
TAGS = ["<br>", "<br />", "<b>", "</b>", "<p>", "</p>"]
NOTES = ("--This text refers to thePaperbackedition.", "--This text refers to an alternateHardcoveredition.",
         "--This text refers to an out of print or unavailable edition of this title.")
BYLINES = ("Copyright 1991 Reed Business Information, Inc.",
           "Copyright © Reed Business Information, a division of Reed Elsevier Inc. All rights reserved.")
NOTE_SHARE, BYLINE_SHARE = 0.32, 0.18  # of the 200 non-empty sample rows: 64 and 37


def corpus(rng: random.Random, size: int) -> str:
    """A long run of words with entities and tags sprinkled in; rows are slices of it."""
    parts: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(WORDS)
        roll = rng.random()
        if roll < 0.02:
            word = word + rng.choice(ENTITIES) + "s"
        elif roll < 0.025:
            word = rng.choice(TAGS) + word
        elif roll < 0.08:
            word = word.capitalize() + "."
        parts.append(word)
        length += len(word) + 1
    return " ".join(parts)


def lognormal_length(rng: random.Random, median: int, sigma: float, cap: int) -> int:
    return max(1, min(cap, int(math.exp(math.log(median) + sigma * rng.gauss(0, 1)))))


def rows(n: int, seed: int, boilerplate: bool = False):
    rng = random.Random(seed)
    extra = random.Random(seed + 1)
    text = corpus(rng, 4_000_000)
    span = len(text) - CONTENT_MAX - 1
    recent: list[tuple[str, str]] = []
    for i in range(n):
        if recent and rng.random() < DUPLICATE_SHARE:
            title, content = rng.choice(recent)
        else:
            start = rng.randrange(span)
            title = text[start : start + lognormal_length(rng, TITLE_MEDIAN, TITLE_SIGMA, TITLE_MAX)].strip()
            if rng.random() < EMPTY_SHARE:
                content = ""
            else:
                if i % LONG_TAIL_EVERY == LONG_TAIL_EVERY // 2:
                    size = rng.randrange(20_000, CONTENT_MAX + 1)
                else:
                    size = lognormal_length(rng, CONTENT_MEDIAN, CONTENT_SIGMA, CONTENT_MAX)
                start = rng.randrange(span)
                content = text[start : start + size].strip()
                if boilerplate:
                    if extra.random() < BYLINE_SHARE:
                        content += extra.choice(BYLINES)
                    if extra.random() < NOTE_SHARE:
                        content += extra.choice(NOTES)
                if len(recent) < 1000:
                    recent.append((title, content))
                else:
                    recent[rng.randrange(1000)] = (title, content)
        k = rng.randrange(1, 12)
        yield {
            "uid": f"{rng.randrange(10**10):010d}",
            "title": title,
            "content": content,
            "target_ind": [rng.randrange(1_305_265) for _ in range(k)],
            "target_rel": [1.0] * k,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], usage=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="file to write (.gz = gzip-compressed)")
    parser.add_argument("--rows", type=int, default=FULL_ROWS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--boilerplate", action="store_true",
                        help="add edition notes and review copyright lines in the sample's shares")
    args = parser.parse_args(argv)
    repo = Path(__file__).resolve().parents[1]
    if args.out.resolve().is_relative_to(repo):
        parser.error("write the generated file outside the repository")
    tmp = args.out.with_name(args.out.name + ".partial")
    opener = gzip.open if args.out.suffix == ".gz" else open
    with opener(tmp, "wt", encoding="utf-8") as fh:
        for i, row in enumerate(rows(args.rows, args.seed, args.boilerplate)):
            fh.write(json.dumps(row, ensure_ascii=False))
            fh.write("\n")
            if i % 500_000 == 0 and i:
                print(f"{i:,} rows", file=sys.stderr)
    tmp.replace(args.out)
    print(f"wrote {args.rows:,} rows to {args.out} ({args.out.stat().st_size / 1e6:,.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
