"""ARC grids: tokens, the 30x30 canvas, augmentations and their inverses.

Shared by `dataset/puzzles/arc_builder.py` (which encodes augmented puzzles) and
`evaluators/arc.py` (which decodes predictions and undoes the augmentation), so that the
two sides agree on every convention:

- Tokens: 0 pad, 1 end-of-grid marker, 2..11 colours 0..9 (vocabulary 12).
- A grid of h x w sits at (row, col) inside a 30x30 canvas; the end marker fills the row
  below it (columns col..col+w-1) and the column right of it (rows row..row+h-1) where
  these fall inside the canvas. The canvas is flattened row-major to 900 tokens.
- An augmented copy applies a colour mapping (colour 0 fixed, 1..9 permuted) and then
  one of 8 dihedral transforms; its puzzle name is `<id>|||t<k>|||<10 mapped digits>`
  (the identity copy keeps the plain `<id>`), as in TRM's public code.
"""

from __future__ import annotations

import hashlib

import numpy as np

MAX_GRID_SIZE = 30
"""Side of the canvas; larger grids cannot be encoded."""
SEQ_LEN = MAX_GRID_SIZE * MAX_GRID_SIZE
VOCAB_SIZE = 12
PAD_ID = 0
END_OF_GRID_ID = 1
COLOUR_OFFSET = 2
"""Token of colour c is c + COLOUR_OFFSET."""
NUM_COLOURS = 10
NUM_DIHEDRAL = 8
PUZZLE_ID_SEPARATOR = "|||"
BLANK_IDENTIFIER_NAME = "<blank>"
"""Name of identifier 0 (padded rows) and of unused identifiers in `identifiers.json`."""

# Transform k undone by transform DIHEDRAL_INVERSE[k]: rotations by 90 and 270 degrees undo
# each other, every other transform is its own inverse.
DIHEDRAL_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)
IDENTITY_MAPPING = np.arange(NUM_COLOURS, dtype=np.uint8)


def dihedral_transform(grid: np.ndarray, k: int) -> np.ndarray:
    """Apply dihedral transform `k` (0..7) to a 2-D grid; numbering as in TRM's code.

    0 identity, 1/2/3 rotation by 90/180/270 degrees counter-clockwise, 4 left-right flip,
    5 up-down flip, 6 transpose, 7 anti-transpose.
    """
    if k == 0:
        return grid
    if k in (1, 2, 3):
        return np.rot90(grid, k=k)
    if k == 4:
        return np.fliplr(grid)
    if k == 5:
        return np.flipud(grid)
    if k == 6:
        return grid.T
    if k == 7:
        return np.fliplr(np.rot90(grid, k=1))
    raise ValueError(f"dihedral transform id must be in 0..7, got {k}")


def inverse_dihedral_transform(grid: np.ndarray, k: int) -> np.ndarray:
    """Undo `dihedral_transform(., k)`."""
    return dihedral_transform(grid, DIHEDRAL_INVERSE[k])


def augment_grid(grid: np.ndarray, k: int, mapping: np.ndarray) -> np.ndarray:
    """Recolour `grid` with `mapping` (colour c -> mapping[c]) then apply transform `k`."""
    return np.ascontiguousarray(dihedral_transform(mapping[grid], k))


def invert_augmentation(grid: np.ndarray, k: int, mapping: np.ndarray) -> np.ndarray:
    """Undo `augment_grid(., k, mapping)`."""
    inverse_mapping = np.argsort(mapping).astype(np.uint8)
    return np.ascontiguousarray(inverse_mapping[inverse_dihedral_transform(grid, k)])


def augmented_name(puzzle_id: str, k: int, mapping: np.ndarray) -> str:
    """Puzzle name recording the augmentation; the identity keeps the plain id."""
    if k == 0 and np.array_equal(mapping, IDENTITY_MAPPING):
        return puzzle_id
    digits = "".join(str(int(colour)) for colour in mapping)
    return f"{puzzle_id}{PUZZLE_ID_SEPARATOR}t{k}{PUZZLE_ID_SEPARATOR}{digits}"


def parse_augmented_name(name: str) -> tuple[str, int, np.ndarray]:
    """(original puzzle id, transform id, colour mapping) of an augmented puzzle name."""
    parts = name.split(PUZZLE_ID_SEPARATOR)
    if len(parts) == 1:
        return name, 0, IDENTITY_MAPPING.copy()
    if len(parts) != 3 or not parts[1].startswith("t") or len(parts[2]) != NUM_COLOURS:
        raise ValueError(f"puzzle name {name!r} is not <id>{PUZZLE_ID_SEPARATOR}t<k>{PUZZLE_ID_SEPARATOR}<10 digits>")
    mapping = np.array([int(digit) for digit in parts[2]], dtype=np.uint8)
    if sorted(mapping.tolist()) != list(range(NUM_COLOURS)):
        raise ValueError(f"puzzle name {name!r}: colour mapping is not a permutation of 0..9")
    return parts[0], int(parts[1][1:]), mapping


def to_grid(rows) -> np.ndarray:
    """An ARC grid (list of lists of colours 0..9) as a uint8 array, checked."""
    grid = np.asarray(rows, dtype=np.int64)
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"an ARC grid must be a non-empty 2-D list, got shape {grid.shape}")
    if grid.min() < 0 or grid.max() >= NUM_COLOURS:
        raise ValueError(f"ARC colours must be in 0..9, got {grid.min()}..{grid.max()}")
    return grid.astype(np.uint8)


def paint_grid(canvas: np.ndarray, grid: np.ndarray, row: int, col: int) -> None:
    """Write `grid` and its end markers into a zeroed (30, 30) token canvas at (row, col)."""
    height, width = grid.shape
    canvas[row : row + height, col : col + width] = grid + COLOUR_OFFSET
    if row + height < MAX_GRID_SIZE:
        canvas[row + height, col : col + width] = END_OF_GRID_ID
    if col + width < MAX_GRID_SIZE:
        canvas[row : row + height, col + width] = END_OF_GRID_ID


def encode_grid(grid: np.ndarray, row: int = 0, col: int = 0) -> np.ndarray:
    """The 900 tokens of `grid` placed at (row, col) in the canvas (uint8)."""
    canvas = np.zeros((MAX_GRID_SIZE, MAX_GRID_SIZE), dtype=np.uint8)
    paint_grid(canvas, grid, row, col)
    return canvas.reshape(SEQ_LEN)


def crop_shapes(tokens: np.ndarray) -> np.ndarray:
    """(rows, cols) of the decoded grid of each of (B, 900) token rows, as a (B, 2) array.

    As TRM's evaluator: the grid is the largest rectangle of colour tokens anchored at the
    top-left; the width allowed at row r is the shortest run of colour tokens from column
    0 over rows 0..r, and the (rows, width) of largest area wins (the first one on ties).
    A row whose top-left is no colour gives (0, 0).
    """
    canvas = np.asarray(tokens).reshape(-1, MAX_GRID_SIZE, MAX_GRID_SIZE)  # (B, 30, 30)
    is_colour = (canvas >= COLOUR_OFFSET) & (canvas < COLOUR_OFFSET + NUM_COLOURS)
    # Run length from column 0: index of the first non-colour, 30 when the row is all colour.
    runs = np.where(is_colour.all(axis=2), MAX_GRID_SIZE, np.argmin(is_colour, axis=2))  # (B, 30)
    widths = np.minimum.accumulate(runs, axis=1)  # (B, 30)
    areas = np.arange(1, MAX_GRID_SIZE + 1) * widths  # (B, 30)
    best = np.argmax(areas, axis=1)  # (B,)
    best_widths = widths[np.arange(len(best)), best]
    rows = np.where(best_widths > 0, best + 1, 0)
    return np.stack([rows, best_widths], axis=1)


def crop_grid(tokens: np.ndarray, shape: tuple[int, int] | np.ndarray | None = None) -> np.ndarray:
    """Decode 900 tokens into colours 0..9 (uint8), cropped as `crop_shapes` says.

    `shape` may pass the row's result of `crop_shapes` when it was computed for a batch.
    """
    rows, cols = crop_shapes(tokens)[0] if shape is None else shape
    canvas = np.asarray(tokens).reshape(MAX_GRID_SIZE, MAX_GRID_SIZE)
    return (canvas[:rows, :cols] - COLOUR_OFFSET).astype(np.uint8)


def grid_hash(grid: np.ndarray) -> str:
    """A digest of a grid's shape and colours (equal grids, equal digests)."""
    grid = np.ascontiguousarray(grid, dtype=np.uint8)
    digest = hashlib.sha256(np.asarray(grid.shape, dtype=np.int64).tobytes())
    digest.update(grid.tobytes())
    return digest.hexdigest()
