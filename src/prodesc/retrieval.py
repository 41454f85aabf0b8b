"""The example in the prompt (``data.example_words``): each title is shown to the model together
with the most similar product of the prepared training split, its title and the start of its
description, so the model can borrow the wording real descriptions
of such products use.

Similarity is the Jaccard index of the two titles' word sets (lower-cased runs of letters and
digits). A training row never gets itself. Ties, titles that share no word with any training
title among them, go to the earliest training row. :class:`TitleIndex` finds the best one for a
batch of titles at a time with numpy (an inverted index of the training titles' words and one
dense score row per title), so 01 handles a 10,000-row training split in seconds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

WORD = re.compile(r"[a-z0-9]+")
MAX_TRAIN_ROWS = 200_000
"""Largest training split 01 searches for examples: every title is compared with every training
title, so the work grows with the square of the split (bench/retrieval.py measures it)."""
SCORE_CELLS = 1 << 22
"""Titles scored at once x training titles: bounds the dense score matrix (32 MiB of float64)."""

Example = tuple[str, str]
"""(title, description cut to data.example_words words) of a training row. A title's examples are
a list: the most similar training row's, or none."""


def titles_line(examples: Sequence[Example]) -> str:
    """The examples' titles on one line, " | " between them (side_by_side.csv, 04's printout)."""
    return " | ".join(title for title, _ in examples)


def stored_examples(titles: Any, contents: Any) -> list[Example]:
    """A row's examples from its example_title/example_content columns (None: no example)."""
    if titles is None:
        return []
    return list(zip(titles, contents))


def title_words(title: str) -> set[str]:
    return set(WORD.findall(title.lower()))


def cut(content: str, words: int) -> str:
    """The first ``words`` words of a description, with " …" when some were left out."""
    parts = content.split()
    return " ".join(parts[:words]) + (" …" if len(parts) > words else "")


class TitleIndex:
    """The training titles' words, to find each title's most similar training title."""

    def __init__(self, titles: Sequence[str]) -> None:
        import numpy as np

        vocab: dict[str, int] = {}
        postings: list[list[int]] = []
        lengths = []
        for row, title in enumerate(titles):
            words = title_words(title)
            lengths.append(len(words))
            for word in words:
                token = vocab.setdefault(word, len(vocab))
                if token == len(postings):
                    postings.append([])
                postings[token].append(row)
        self.vocab = vocab
        self.postings = [np.asarray(p, dtype=np.int64) for p in postings]
        self.lengths = np.asarray(lengths, dtype=np.float64)
        self.size = len(lengths)

    def nearest(
        self,
        titles: Sequence[str],
        exclude: Sequence[int] | None = None,
        progress: Callable[[int], Any] | None = None,
    ) -> list[int]:
        """For each title, the row of the most similar training title (the earliest row among
        equals; -1 when there is none: an empty index, or a one-row index whose only row is
        excluded). ``exclude[i]``: a row title i may not get (its own, for a training title), or
        -1. ``progress(n)`` is called after each batch of n titles."""
        import numpy as np

        n = self.size
        if not n:
            return [-1 for _ in titles]
        batch = max(1, SCORE_CELLS // n)
        out: list[int] = []
        for start in range(0, len(titles), batch):
            chunk = titles[start:start + batch]
            flat, query_lengths = [], []
            for i, title in enumerate(chunk):
                words = title_words(title)
                query_lengths.append(len(words))
                flat += [self.postings[t] + i * n for t in (self.vocab.get(w) for w in words) if t is not None]
            shared = np.bincount(
                np.concatenate(flat) if flat else np.zeros(0, dtype=np.int64), minlength=len(chunk) * n
            ).reshape(len(chunk), n).astype(np.float64)
            union = np.asarray(query_lengths, dtype=np.float64)[:, None] + self.lengths[None, :] - shared
            score = shared / np.maximum(union, 1.0)
            if exclude is not None:
                own = np.asarray(exclude[start:start + len(chunk)], dtype=np.int64)
                mine = np.flatnonzero(own >= 0)
                score[mine, own[mine]] = -1.0
            best = score.argmax(axis=1)  # the first of equals: the earliest row
            out += np.where(score[np.arange(len(chunk)), best] < 0, -1, best).tolist()
            if progress is not None:
                progress(len(chunk))
        return out


class ExampleFinder:
    """A training split's titles and descriptions: :meth:`examples` gives a new title's examples
    (the web page and 04, which take any title)."""

    def __init__(self, titles: Sequence[str], contents: Sequence[str], words: int) -> None:
        self.titles, self.contents = list(titles), list(contents)
        self.words = words
        self.index = TitleIndex(self.titles)

    def examples(self, title: str) -> list[Example]:
        """The most similar training product, as a list of one (none: an empty split)."""
        row = self.index.nearest([title])[0]
        return [(self.titles[row], cut(self.contents[row], self.words))] if row >= 0 else []
