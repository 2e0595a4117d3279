"""Sudoku helpers: a bitmask solver, an offline puzzle generator and TRM's augmentation.

Boards are flat sequences of 81 ints in row-major order, 0 for a blank and 1..9 for a
digit. The solver keeps one 9-bit mask of used digits per row, column and box, fills
every naked single it finds in a sweep, and branches on the most constrained cell; it is
pure Python but fast enough to generate thousands of unique-solution puzzles a minute.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dataset.stream import seeded_rng

NUM_CELLS = 81
ALL_DIGITS = 0x1FF
"""Bit d-1 set means digit d is allowed."""

ROW_OF = [index // 9 for index in range(NUM_CELLS)]
COL_OF = [index % 9 for index in range(NUM_CELLS)]
BOX_OF = [(index // 27) * 3 + (index % 9) // 3 for index in range(NUM_CELLS)]
POPCOUNT = [bin(mask).count("1") for mask in range(ALL_DIGITS + 1)]
DIGITS_OF_MASK = [[digit for digit in range(1, 10) if mask >> (digit - 1) & 1] for mask in range(ALL_DIGITS + 1)]


def _used_masks(board: Sequence[int]) -> tuple[list[int], list[int], list[int]] | None:
    """Used-digit masks of rows, columns and boxes; None if a given clashes with another."""
    rows, cols, boxes = [0] * 9, [0] * 9, [0] * 9
    for index, digit in enumerate(board):
        if digit:
            bit = 1 << (digit - 1)
            row, col, box = ROW_OF[index], COL_OF[index], BOX_OF[index]
            if (rows[row] | cols[col] | boxes[box]) & bit:
                return None
            rows[row] |= bit
            cols[col] |= bit
            boxes[box] |= bit
    return rows, cols, boxes


def _place_singles(empties, rows, cols, boxes, placed):
    """Sweep the empty cells, placing every naked single, until a sweep places nothing.

    Returns (cells still empty, the one with the fewest candidates, its candidate mask),
    or None when a cell has no candidate left (a dead end).
    """
    while True:
        progress = False
        remaining = []
        best_cell, best_mask, best_count = -1, 0, 10
        for cell in empties:
            row, col, box = ROW_OF[cell], COL_OF[cell], BOX_OF[cell]
            mask = ~(rows[row] | cols[col] | boxes[box]) & ALL_DIGITS
            count = POPCOUNT[mask]
            if count == 0:
                return None
            if count == 1:
                # A naked single: place it now; later cells of this sweep see it.
                rows[row] |= mask
                cols[col] |= mask
                boxes[box] |= mask
                placed.append((cell, mask.bit_length()))
                progress = True
            else:
                remaining.append(cell)
                if count < best_count:
                    best_cell, best_mask, best_count = cell, mask, count
        empties = remaining
        if not empties or not progress:
            return empties, best_cell, best_mask


def _search(empties, rows, cols, boxes, limit, placed, solutions, digit_order) -> int:
    """Count solutions (up to `limit`) of the sub-problem; append found boards' fills.

    `placed` is the list of (cell, digit) fixed so far on this branch; a complete branch
    appends a copy of it to `solutions`. Masks are owned by the caller's copy.
    """
    swept = _place_singles(empties, rows, cols, boxes, placed)
    if swept is None:
        return 0
    empties, best_cell, best_mask = swept
    if not empties:
        solutions.append(list(placed))
        return 1
    # No single left: branch on the cell with the fewest candidates. Its mask is exact
    # because the last sweep placed nothing.
    others = [cell for cell in empties if cell != best_cell]
    row, col, box = ROW_OF[best_cell], COL_OF[best_cell], BOX_OF[best_cell]
    candidates = DIGITS_OF_MASK[best_mask]
    if digit_order is not None:
        candidates = [digit for digit in digit_order if best_mask >> (digit - 1) & 1]
    found = 0
    for digit in candidates:
        bit = 1 << (digit - 1)
        sub_rows, sub_cols, sub_boxes = rows[:], cols[:], boxes[:]
        sub_rows[row] |= bit
        sub_cols[col] |= bit
        sub_boxes[box] |= bit
        branch = placed + [(best_cell, digit)]
        found += _search(others, sub_rows, sub_cols, sub_boxes, limit - found, branch, solutions, digit_order)
        if found >= limit:
            break
    return found


def _solve_boards(board: Sequence[int], limit: int, digit_order=None) -> tuple[int, list[list[int]]]:
    """(number of solutions up to `limit`, the solved boards found)."""
    board = [int(value) for value in board]
    if len(board) != NUM_CELLS or any(value < 0 or value > 9 for value in board):
        raise ValueError("a Sudoku board is 81 ints in 0..9")
    masks = _used_masks(board)
    if masks is None:
        return 0, []
    empties = [index for index, value in enumerate(board) if value == 0]
    fills: list[list[tuple[int, int]]] = []
    count = _search(empties, *masks, limit, [], fills, digit_order)
    solved = []
    for fill in fills:
        solution = board[:]
        for cell, digit in fill:
            solution[cell] = digit
        solved.append(solution)
    return count, solved


def count_solutions(board: Sequence[int], limit: int = 2) -> int:
    """Number of solutions of `board`, counting no further than `limit`."""
    return _solve_boards(board, limit)[0]


def solve(board: Sequence[int]) -> list[int] | None:
    """One solution of `board` (81 ints, 0 blank), or None if it has none."""
    count, solved = _solve_boards(board, 1)
    return solved[0] if count else None


def is_valid_solution(boards: np.ndarray) -> np.ndarray:
    """Whether each board of [..., 81] is a complete, valid Sudoku grid (bool [...])."""
    grids = np.asarray(boards).reshape(-1, 9, 9)
    boxes = grids.reshape(-1, 3, 3, 3, 3).transpose(0, 1, 3, 2, 4).reshape(-1, 9, 9)
    target = np.arange(1, 10)
    valid = np.ones(grids.shape[0], dtype=bool)
    for units in (grids, grids.transpose(0, 2, 1), boxes):
        valid &= (np.sort(units, axis=-1) == target).all(axis=(1, 2))
    return valid.reshape(np.asarray(boards).shape[:-1])


def random_solution(rng: np.random.Generator) -> list[int]:
    """A random complete grid: random diagonal boxes, completed with random branching."""
    board = [0] * NUM_CELLS
    for box in range(3):
        digits = rng.permutation(9) + 1
        for position in range(9):
            board[(box * 3 + position // 3) * 9 + box * 3 + position % 3] = int(digits[position])
    # Diagonal boxes share no row, column or box, so this board always has solutions.
    digit_order = [int(digit) + 1 for digit in rng.permutation(9)]
    return _solve_boards(board, 1, digit_order)[1][0]


def _removal_keeps_uniqueness(givens: list[int], cell: int, digit: int) -> bool:
    """Whether blanking `cell` (holding `digit`) leaves a puzzle with a single solution.

    The current givens have exactly one solution, so the blanked puzzle has another one
    exactly when some solution puts a different digit in `cell`: try each such digit.
    """
    givens[cell] = 0
    masks = _used_masks(givens)
    row, col, box = ROW_OF[cell], COL_OF[cell], BOX_OF[cell]
    others = ~(masks[0][row] | masks[1][col] | masks[2][box]) & ALL_DIGITS & ~(1 << (digit - 1))
    unique = True
    empties = [index for index, value in enumerate(givens) if value == 0 and index != cell]
    for other in DIGITS_OF_MASK[others]:
        bit = 1 << (other - 1)
        rows, cols, boxes = masks[0][:], masks[1][:], masks[2][:]
        rows[row] |= bit
        cols[col] |= bit
        boxes[box] |= bit
        if _search(empties, rows, cols, boxes, 1, [], [], None):
            unique = False
            break
    givens[cell] = digit
    return unique


def generate_puzzle(rng: np.random.Generator, min_givens: int, max_givens: int) -> tuple[list[int], list[int]]:
    """A (puzzle, solution) pair with exactly one solution and min..max givens.

    Draws a target number of givens uniformly in [min_givens, max_givens] and blanks
    cells of a random solution in random order while the solution stays unique, until
    the target is met. One pass makes the puzzle minimal (a cell that could not be
    blanked never can be later, as blanking only adds solutions), so when the target is
    below what the pass reaches the puzzle keeps its minimum; a minimum above
    `max_givens` (rare) is thrown away and a new solution drawn.
    """
    if not 17 <= min_givens <= max_givens <= NUM_CELLS:
        raise ValueError("need 17 <= min_givens <= max_givens <= 81")
    while True:
        target = int(rng.integers(min_givens, max_givens + 1))
        solution = random_solution(rng)
        givens = solution[:]
        num_givens = NUM_CELLS
        for cell in rng.permutation(NUM_CELLS).tolist():
            if num_givens <= target:
                break
            if _removal_keeps_uniqueness(givens, cell, solution[cell]):
                givens[cell] = 0
                num_givens -= 1
        if num_givens <= max_givens:
            # Independent check by the plain counter: exactly one solution, the one we hold.
            count, solved = _solve_boards(givens, 2)
            if count != 1 or solved[0] != solution:
                raise AssertionError("generated Sudoku is not uniquely solvable; the removal check is wrong")
            return givens, solution


def augment_boards(
    puzzle: np.ndarray, solution: np.ndarray, num_copies: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`num_copies` random symmetry copies of one (puzzle, solution) pair, [num_copies, 81] each.

    Each copy relabels digits 1..9 (0 stays blank), transposes with probability 1/2,
    shuffles the 3 bands and the rows inside each band, and the 3 stacks and the
    columns inside each stack; the same map is applied to puzzle and solution.
    """
    # Random permutations as argsorts of uniform draws, one per copy.
    bands = np.argsort(rng.random((num_copies, 3)), axis=1)  # (A, 3)
    rows_in_band = np.argsort(rng.random((num_copies, 3, 3)), axis=2)  # (A, 3, 3)
    stacks = np.argsort(rng.random((num_copies, 3)), axis=1)
    cols_in_stack = np.argsort(rng.random((num_copies, 3, 3)), axis=2)
    transpose = rng.random(num_copies) < 0.5  # (A,)
    digit_perm = np.argsort(rng.random((num_copies, 9)), axis=1) + 1  # (A, 9)
    digit_map = np.concatenate([np.zeros((num_copies, 1), dtype=np.int64), digit_perm], axis=1)  # (A, 10)

    row_source = (bands[:, :, None] * 3 + rows_in_band).reshape(num_copies, 9, 1)  # (A, 9, 1)
    col_source = (stacks[:, :, None] * 3 + cols_in_stack).reshape(num_copies, 1, 9)  # (A, 1, 9)
    # New cell (r, c) takes old cell (row_source[r], col_source[c]) of the (maybe transposed) board.
    source = np.where(
        transpose[:, None, None], col_source * 9 + row_source, row_source * 9 + col_source
    ).reshape(num_copies, NUM_CELLS)  # (A, 81)
    copies = []
    for board in (puzzle, solution):
        moved = np.asarray(board)[source]  # (A, 81)
        copies.append(np.take_along_axis(digit_map, moved, axis=1))
    return copies[0], copies[1]


def generate_puzzle_at(
    index: int, keys: tuple[int, ...], min_givens: int, max_givens: int
) -> tuple[np.ndarray, np.ndarray]:
    """Puzzle number `index` of a generated set: `generate_puzzle` seeded by (*keys, index).

    Seeding by index makes the set independent of how many worker processes build it.
    Returns (puzzle, solution) as uint8 [81] arrays.
    """
    puzzle, solution = generate_puzzle(seeded_rng(*keys, index), min_givens, max_givens)
    return np.array(puzzle, dtype=np.uint8), np.array(solution, dtype=np.uint8)
