"""Maze helpers: an offline generator, breadth-first search and the dihedral transforms.

A maze is a square grid of characters over `# SGo` (wall, open, start, goal, path),
stored as a 2-D numpy array of single-character strings ('<U1'). The label of a maze is
the same grid with the open cells of the shortest start-goal path marked `o`.

Generated mazes are trees: the open cells are carved one at a time by a depth-first
growth that only opens a wall cell touching exactly one open cell, so the open cells
never form a cycle and the path between two cells is unique (hence the label is too).
Depth-first growth gives long winding corridors, like the Maze-Hard set.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from dataset.stream import seeded_rng

WALL, OPEN, START, GOAL, PATH = "#", " ", "S", "G", "o"
CHARSET = "# SGo"
"""Token id of a character = its position here + 1 (0 is padding)."""

STEPS = ((-1, 0), (1, 0), (0, -1), (0, 1))


def default_min_path_length(size: int) -> int:
    """Default hardness threshold: 110 steps for 30x30 (Maze-Hard), scaled with the area."""
    return max(1, round(110 * size * size / 900))


def carve_tree_maze(rng: np.random.Generator, size: int) -> np.ndarray:
    """A size x size grid of walls and open cells whose open cells form a tree.

    Growing-tree carving inside a one-cell wall border: from the most recently opened
    cell (three times in four; a random earlier one otherwise, for side branches) open a
    random wall neighbour that touches no other open cell.
    """
    if size < 4:
        raise ValueError("a maze needs size >= 4")
    # Flat Python lists: per-cell numpy indexing would dominate the run time.
    is_open = [False] * (size * size)
    inside = [0 < index // size < size - 1 and 0 < index % size < size - 1 for index in range(size * size)]
    offsets = (-size, size, -1, 1)
    first = int(rng.integers(1, size - 1)) * size + int(rng.integers(1, size - 1))
    is_open[first] = True
    frontier = [first]
    # Each loop turn opens or retires one cell (at most 2 * size**2 turns) and uses at
    # most 3 draws, so 8 * size**2 draws never run out.
    draws = iter(rng.random(8 * size * size).tolist())
    while frontier:
        pick = len(frontier) - 1 if next(draws) < 0.75 else int(next(draws) * len(frontier))
        cell = frontier[pick]
        choices = [
            cell + offset
            for offset in offsets
            if inside[cell + offset]
            and not is_open[cell + offset]
            and sum(is_open[cell + offset + step] for step in offsets) == 1
        ]
        if not choices:
            frontier.pop(pick)
            continue
        chosen = choices[int(next(draws) * len(choices))]
        is_open[chosen] = True
        frontier.append(chosen)
    return np.where(np.array(is_open).reshape(size, size), OPEN, WALL)


def bfs(grid: np.ndarray, start: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Distances from `start` over non-wall cells (-1 unreachable) and shortest-path counts.

    Path counts are capped at 2, which is all that uniqueness checks need.
    """
    num_rows, num_cols = grid.shape
    passable = (grid != WALL).ravel().tolist()
    distance = [-1] * (num_rows * num_cols)
    num_paths = [0] * (num_rows * num_cols)
    source = start[0] * num_cols + start[1]
    distance[source], num_paths[source] = 0, 1
    queue = deque([source])
    while queue:
        cell = queue.popleft()
        row, col = divmod(cell, num_cols)
        neighbours = []
        if row > 0:
            neighbours.append(cell - num_cols)
        if row < num_rows - 1:
            neighbours.append(cell + num_cols)
        if col > 0:
            neighbours.append(cell - 1)
        if col < num_cols - 1:
            neighbours.append(cell + 1)
        for nxt in neighbours:
            if not passable[nxt]:
                continue
            if distance[nxt] == -1:
                distance[nxt] = distance[cell] + 1
                queue.append(nxt)
            if distance[nxt] == distance[cell] + 1:
                num_paths[nxt] = min(2, num_paths[nxt] + num_paths[cell])
    shape = (num_rows, num_cols)
    return np.array(distance).reshape(shape), np.array(num_paths).reshape(shape)


def find_cell(grid: np.ndarray, char: str) -> tuple[int, int]:
    """Position of the single cell holding `char`."""
    rows, cols = np.nonzero(grid == char)
    if len(rows) != 1:
        raise ValueError(f"expected exactly one {char!r} in the maze, found {len(rows)}")
    return int(rows[0]), int(cols[0])


def solve_maze(question: np.ndarray) -> tuple[np.ndarray, int, int]:
    """(label grid with one shortest S-G path marked `o`, its length in steps, paths count capped at 2).

    Raises ValueError when the goal cannot be reached.
    """
    start, goal = find_cell(question, START), find_cell(question, GOAL)
    distance, num_paths = bfs(question, start)
    if distance[goal] < 0:
        raise ValueError("the goal cannot be reached from the start")
    label = question.copy()
    # Walk back from the goal, each step to a neighbour one step closer to the start.
    row, col = goal
    while distance[row, col] > 1:
        for d_row, d_col in STEPS:
            prev = (row + d_row, col + d_col)
            inside = 0 <= prev[0] < question.shape[0] and 0 <= prev[1] < question.shape[1]
            if inside and distance[prev] == distance[row, col] - 1:
                break
        row, col = prev
        label[row, col] = PATH
    return label, int(distance[goal]), int(num_paths[goal])


def generate_maze(
    rng: np.random.Generator, size: int, min_path_length: int, max_tries: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """A (question, label) pair whose unique shortest path has >= `min_path_length` steps.

    Carves a tree maze, puts S on a random open cell and G on a random open cell at
    least `min_path_length` steps away; tries up to 4 starts per maze, then redraws it.
    """
    for _ in range(max_tries):
        grid = carve_tree_maze(rng, size)
        open_cells = np.argwhere(grid == OPEN)
        # A few starts per maze: most random starts have far cells, some sit centrally.
        for start in open_cells[rng.permutation(len(open_cells))[:4]]:
            start = (int(start[0]), int(start[1]))
            distance, _ = bfs(grid, start)
            far = np.argwhere(distance >= min_path_length)
            if len(far) == 0:
                continue
            goal = tuple(int(value) for value in far[rng.integers(len(far))])
            grid[start] = START
            grid[goal] = GOAL
            label, length, num_paths = solve_maze(grid)
            if num_paths != 1 or length < min_path_length:
                raise AssertionError("a tree maze must have one shortest path of the chosen length")
            return grid, label
    raise ValueError(
        f"no {size}x{size} maze with a path of {min_path_length}+ steps in {max_tries} tries; "
        "lower --min-path-length"
    )


def dihedral(grid: np.ndarray, index: int) -> np.ndarray:
    """The `index`-th (0..7) of the 8 rotations and reflections of a square grid (0 = identity)."""
    if not 0 <= index < 8:
        raise ValueError("dihedral transform index is 0..7")
    rotated = np.rot90(grid, k=index % 4)
    return np.ascontiguousarray(rotated.T if index >= 4 else rotated)


def encode(grids: np.ndarray) -> np.ndarray:
    """Token ids (1..5) of grids of characters, flattened: [..., rows, cols] -> [..., rows*cols]."""
    grids = np.asarray(grids, dtype="<U1")
    codes = grids.view(np.uint32).reshape(*grids.shape[:-2], -1)  # Unicode code points
    table = np.zeros(128, dtype=np.int32)
    for index, char in enumerate(CHARSET):
        table[ord(char)] = index + 1
    tokens = table[np.minimum(codes, 127)]
    if (tokens == 0).any():
        raise ValueError(f"maze grids may only hold the characters {CHARSET!r}")
    return tokens


def decode(tokens: np.ndarray, size: int) -> np.ndarray:
    """Inverse of `encode` for one maze: [size*size] token ids -> [size, size] characters."""
    chars = np.array(list(CHARSET))
    return chars[np.asarray(tokens).reshape(size, size) - 1]


def generate_maze_at(
    index: int, keys: tuple[int, ...], size: int, min_path_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Maze number `index` of a generated set: `generate_maze` seeded by (*keys, index)."""
    return generate_maze(seeded_rng(*keys, index), size, min_path_length)
