"""The text a trained vocabulary learns from (`--tokenizer-sample-mb`), drawn without
reading the whole corpus.

A corpus no larger than the sample is read whole. A larger one gives a seeded choice of
files, each file chosen with a chance proportional to its size on disk and without
repeats, one file per `SAMPLE_SHARE_BYTES` of the sample (all the files when there are
fewer), and from each chosen file the documents of its first share of the budget (on-disk
bytes, so compressed files give more text). A 20 GB corpus of 2,000 files and the default
100 MB sample: 100 files spread over the whole list by bytes, about 1 MB from each, and
100 MB read instead of 20 GB. The same seed and inputs give the same sample.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from dataset.stream import seeded_rng
from dataset.text.corpus import CorpusReader

SAMPLE_SHARE_BYTES = 1_000_000
"""On-disk bytes of the sample per chosen file: the sample spreads over sample / share files."""
SAMPLE_STREAM_KEY = 23


def sample_budgets(sizes: list[int], sample_bytes: int, seed: int) -> list[int]:
    """On-disk bytes to read from the start of each file (0: not sampled), summing to
    about `sample_bytes` (every byte when the corpus is no larger)."""
    total = sum(sizes)
    if total <= sample_bytes:
        return list(sizes)
    nonempty = np.flatnonzero(np.array(sizes) > 0)
    count = min(len(nonempty), max(1, -(-sample_bytes // SAMPLE_SHARE_BYTES)))
    weights = np.array([sizes[index] for index in nonempty], dtype=np.float64)
    rng = seeded_rng(seed, SAMPLE_STREAM_KEY)
    chosen = nonempty[rng.choice(len(nonempty), size=count, replace=False, p=weights / weights.sum())]
    budgets = [0] * len(sizes)
    left = sample_bytes
    # Smallest first: a file smaller than its share gives all it has, and the rest is shared
    # by the larger files, so the sample still reaches its size.
    for rank, index in enumerate(sorted(chosen, key=lambda index: sizes[index])):
        budgets[index] = min(sizes[index], -(-left // (count - rank)))
        left -= budgets[index]
    return budgets


def sample_documents(reader: CorpusReader, budgets: list[int]) -> Iterator[list[str]]:
    """The documents of the first `budgets[i]` on-disk bytes of each file of `reader`, in file order."""
    for path, budget in zip(reader.files, budgets):
        if budget == 0:
            continue
        start = reader.counters.bytes_on_disk
        reader_of_file = CorpusReader([Path(path)], reader.on_bad_line, reader.text_field)
        reader_of_file.counters = reader.counters  # counted as one reader (empty-corpus check, progress)
        whole = budget >= Path(path).stat().st_size  # compressed streams read ahead: do not stop early
        for document in reader_of_file.documents():
            yield document
            if not whole and reader.counters.bytes_on_disk - start >= budget:
                break
