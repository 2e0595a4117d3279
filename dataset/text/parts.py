"""De-duplication across the parts of a dataset built on many machines, without rewriting
a shard (`dataset/exclude_duplicate_documents.py` is its command line).

Each part built with `--packing documents` stores one record per document of each split
(`<split>/documents.npy`: the key of its text and its rows). Read in the order training
reads them (`resolve_mlm_paths`), the parts' documents are one list; every document whose
key appeared earlier in it is a repeat, and its rows go to `<split>/excluded_rows.npy` of
its part, which the loader skips. Within a part the builder already removed repeats
(`--dedup documents`), so the parts with their exclusions hold the documents that one
build of all the inputs would keep, in the same order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import UserError
from dataset.stream import open_npy
from dataset.text.format import (
    DOCUMENTS_FILE,
    EXCLUDED_ROWS_FILE,
    SPLITS,
    load_mlm_metadata,
    read_mlm_metadata,
    resolve_mlm_paths,
)


@dataclass
class Exclusions:
    """What `exclude_repeated_documents` found: rows to skip per (part, split)."""

    rows: dict[tuple[str, str], np.ndarray]
    """(part folder, split) -> sorted row indices of that part's split to skip."""
    num_documents: int
    """Repeated documents, all parts together."""


def find_repeated_documents(paths: list[str]) -> Exclusions:
    """The rows of every document that repeats an earlier one of the parts named by `paths`."""
    parts = resolve_mlm_paths(paths)
    load_mlm_metadata(parts)  # refuses parts of different tokenizers or formats
    segments, keys = [], []
    for part in parts:
        if read_mlm_metadata(part).packing != "documents":
            raise UserError(f"{part} was built with --packing full: its rows mix documents, so none can be "
                            "excluded; build the parts with --packing documents")
        for split in SPLITS:
            path = Path(part) / split / DOCUMENTS_FILE
            if not path.is_file():
                raise UserError(f"{path} is missing: {part} was built before documents were recorded; rebuild it")
            records = np.asarray(open_npy(path))
            segments.append((part, split, records))
            keys.append(records["key"])
    all_keys = np.concatenate(keys) if keys else np.zeros(0, dtype=np.uint64)
    repeated = np.ones(len(all_keys), dtype=bool)
    repeated[np.unique(all_keys, return_index=True)[1]] = False  # the first of each key stays
    rows, start = {}, 0
    for part, split, records in segments:
        chosen = records[repeated[start : start + len(records)]]
        start += len(records)
        ranges = [np.arange(first, first + count) for first, count in zip(chosen["first_row"], chosen["num_rows"])]
        rows[(part, split)] = np.sort(np.concatenate(ranges)) if ranges else np.zeros(0, dtype=np.int64)
    return Exclusions(rows, int(repeated.sum()))


def write_exclusions(exclusions: Exclusions) -> None:
    """Write each part's `<split>/excluded_rows.npy` (replacing an older one, atomically)."""
    for (part, split), rows in exclusions.rows.items():
        final = Path(part) / split / EXCLUDED_ROWS_FILE
        temporary = final.with_name(f".{final.name}.tmp")
        with open(temporary, "wb") as file:
            np.save(file, rows.astype(np.int64))
        os.replace(temporary, final)
