"""Mark the documents that repeat across the parts of an MLM dataset, so that training
skips them (the shards are not rewritten).

    python dataset/exclude_duplicate_documents.py data/wiki-parts          # a folder of parts
    python dataset/exclude_duplicate_documents.py 'data/wiki-parts/part_*' # or a glob, or a list

The parts are taken in the order training reads them (a folder's parts sorted by name,
a glob's matches sorted); the first copy of each document is kept and the rows of every
later copy are written to `<part>/<split>/excluded_rows.npy`, which the loader honours.
Run it again after adding or rebuilding a part: it recomputes every part's list. The
parts must be built with `--packing documents` (the default), which records each
document's key and rows in `<split>/documents.npy` (`dataset/text/parts.py`).
"""

from __future__ import annotations

from core.cli import argument_parser
from core.errors import run_cli
from dataset.text.parts import find_repeated_documents, write_exclusions


def main(argv: list[str] | None = None) -> None:
    """Find the repeated documents of the parts and write each part's excluded rows."""
    parser = argument_parser(__doc__)
    parser.add_argument("parts", nargs="+", help="dataset folders, a folder of parts, or quoted globs")
    args = parser.parse_args(argv)
    exclusions = find_repeated_documents(args.parts)
    write_exclusions(exclusions)
    num_rows = sum(len(rows) for rows in exclusions.rows.values())
    num_parts = len({part for part, _ in exclusions.rows})
    print(f"{exclusions.num_documents} repeated documents ({num_rows} sequences) excluded across {num_parts} parts")


if __name__ == "__main__":
    run_cli(main)
