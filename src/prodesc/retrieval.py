"""The examples in the prompt (``data.example_words``): each title is shown to the model together
with the most similar products of the prepared training split (``data.examples`` of them), their
titles and the start of their descriptions, so the model can borrow the wording real descriptions
of such products use.

Similarity is the Jaccard index of the two titles' word sets (lower-cased runs of letters and
digits). A training row never gets itself. Ties, titles that share no word with any training
title among them, go to the earliest training rows. :class:`TitleIndex` finds the best ones for a
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
MAX_EXAMPLES = 5
"""Most examples a title is shown with (data.examples)."""
SCORE_CELLS = 1 << 22
"""Titles scored at once x training titles: bounds the dense score matrix (32 MiB of float64)."""

Example = tuple[str, str]
"""(title, description cut to data.example_words words) of a training row; a title is shown with
data.examples of them, the most similar first."""


def titles_line(examples: Sequence[Example]) -> str:
    """The examples' titles on one line, " | " between them (side_by_side.csv, 04's printout)."""
    return " | ".join(title for title, _ in examples)


def stored_examples(titles: Any, contents: Any) -> list[Example]:
    """A row's examples from its example_title/example_content columns: one list entry per
    example, or one text each in data prepared before data.examples existed (None: no example)."""
    if titles is None:
        return []
    if isinstance(titles, str):
        return [(titles, contents)]
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
        """For each title, the row of the most similar training title (-1 when there is none:
        an empty index, or a one-row index whose only row is excluded). ``exclude[i]``: a row
        title i may not get (its own, for a training title), or -1. ``progress(n)`` is called
        after each batch of n titles."""
        return [rows[0] if rows else -1 for rows in self.nearest_k(titles, 1, exclude, progress)]

    def nearest_k(
        self,
        titles: Sequence[str],
        k: int,
        exclude: Sequence[int] | None = None,
        progress: Callable[[int], Any] | None = None,
    ) -> list[list[int]]:
        """For each title, the rows of the ``k`` most similar training titles, most similar first
        (the earliest row first among equals); fewer when the index holds fewer allowed rows.
        ``exclude`` and ``progress`` as in :meth:`nearest`."""
        import numpy as np

        n = self.size
        if not n:
            return [[] for _ in titles]
        batch = max(1, SCORE_CELLS // n)
        out: list[list[int]] = []
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
            every = np.arange(len(chunk))
            picks = []
            for _ in range(min(k, n)):  # k passes of argmax: the first of equals, the earliest row
                best = score.argmax(axis=1)
                picks.append(np.where(score[every, best] < 0, -1, best))
                score[every, best] = -1.0
            out += [[int(r) for r in rows if r >= 0] for rows in np.stack(picks, axis=1).tolist()]
            if progress is not None:
                progress(len(chunk))
        return out


class ExampleFinder:
    """A training split's titles and descriptions: :meth:`examples` gives a new title's examples
    (the web page and 04, which take any title)."""

    def __init__(self, titles: Sequence[str], contents: Sequence[str], words: int, count: int = 1) -> None:
        self.titles, self.contents = list(titles), list(contents)
        self.words, self.count = words, count
        self.index = TitleIndex(self.titles)

    def examples(self, title: str) -> list[Example]:
        """The ``count`` most similar training products, most similar first (none: an empty split)."""
        rows = self.index.nearest_k([title], self.count)[0]
        return [(self.titles[row], cut(self.contents[row], self.words)) for row in rows]
