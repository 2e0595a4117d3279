"""The epoch order (dataset.stream.EpochOrder, FeistelPermutation): a permutation per
epoch at every size, position-pure (any number of processes, exact resume), O(batch)
memory at 10^9 rows, and statistically indistinguishable from a uniform shuffle on the
statistics SGD cares about (z-scores against the formulas of a random permutation; the
same statistics flag weak orders, so they can fail)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from dataset.stream import EpochOrder, FeistelPermutation, seeded_rng

SIZES = [1, 2, 3, 4, 5, 7, 8, 16, 17, 31, 64, 97, 1000, 4096, 65521, 65536, 65537, 999_983, 10**6]
"""Primes, powers of two and their neighbours, 1 and 2, up to 10^6."""


def feistel(num_rows: int, seed: int = 0, num_rounds: int = EpochOrder.NUM_ROUNDS) -> FeistelPermutation:
    return FeistelPermutation(num_rows, seeded_rng(seed, 1).integers(0, 2**64, size=num_rounds, dtype=np.uint64))


@pytest.mark.parametrize("num_rows", SIZES)
def test_feistel_is_a_permutation_with_its_inverse(num_rows):
    permutation = feistel(num_rows)
    rows = permutation(np.arange(num_rows))
    np.testing.assert_array_equal(np.sort(rows), np.arange(num_rows))
    np.testing.assert_array_equal(permutation.inverse(rows), np.arange(num_rows))
    with pytest.raises(ValueError, match="outside"):
        permutation(np.array([num_rows]))


@pytest.mark.parametrize("num_rows", [1, 2, 999, EpochOrder.EXACT_BELOW - 1, EpochOrder.EXACT_BELOW, 10**6 + 3])
def test_each_epoch_visits_every_row_once_and_epochs_differ(num_rows):
    order = EpochOrder(seed=5, num_rows=num_rows)
    stream = order.rows(0, 3 * num_rows)  # three epochs back to back, in one call
    epochs = stream.reshape(3, num_rows)
    for epoch in epochs:
        np.testing.assert_array_equal(np.sort(epoch), np.arange(num_rows))
    if num_rows > 2:
        assert not np.array_equal(epochs[0], epochs[1])
        assert not np.array_equal(EpochOrder(6, num_rows).rows(0, num_rows), epochs[0])


@pytest.mark.parametrize("num_rows", [37, 100_003])
def test_rows_depend_on_the_position_alone(num_rows):
    """The same rows for 1, 2 and 3 processes, and for a fresh order resumed mid-epoch
    (also across an epoch boundary)."""
    global_batch, start = 12, 5 * num_rows - 18  # batches 1 and 2 straddle the boundary
    walked = EpochOrder(seed=2, num_rows=num_rows)
    single = [walked.rows(start + step * global_batch, global_batch) for step in range(4)]
    for world_size in (2, 3):
        local = global_batch // world_size
        ranks = [EpochOrder(seed=2, num_rows=num_rows) for _ in range(world_size)]
        for step in range(4):
            joined = np.concatenate([ranks[r].rows(start + step * global_batch + r * local, local)
                                     for r in range(world_size)])
            np.testing.assert_array_equal(joined, single[step])
    resumed = EpochOrder(seed=2, num_rows=num_rows)
    np.testing.assert_array_equal(resumed.rows(start + 2 * global_batch, global_batch), single[2])


def test_a_billion_rows_spot_checked_in_small_memory():
    num_rows = 10**9
    order = EpochOrder(seed=11, num_rows=num_rows)
    positions = np.sort(seeded_rng(3).choice(num_rows, size=5000, replace=False))
    tracemalloc.start()
    rows = order.rows(3 * num_rows + 123_456_789, 4096)  # a batch in the fourth epoch
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2 * 2**20, f"{peak} bytes for 4096 rows"
    assert len(np.unique(rows)) == 4096 and rows.min() >= 0 and rows.max() < num_rows
    permutation = order._epoch_order(3)
    spot = permutation(positions)
    assert len(np.unique(spot)) == len(positions) and spot.min() >= 0 and spot.max() < num_rows
    np.testing.assert_array_equal(permutation.inverse(spot), positions)
    np.testing.assert_array_equal(order.rows(3 * num_rows + positions[7], 1), spot[7:8])


# ---------------------------------------------------------------------------- quality


def quality_z_scores(order: np.ndarray, next_order: np.ndarray, batch: int = 256) -> dict[str, float]:
    """z-scores of statistics of `order` (row at each position of one epoch) against their
    mean and spread under a uniform random permutation of n rows; `next_order` is the
    next epoch's order. |z| < 6 is what a uniform shuffle gives (except once in ~10^9)."""
    n = len(order)
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    scores = {}
    # Where rows land: a 32 x 32 table of (where a row is stored, where it is read) against
    # the uniform n / 1024 per cell; chi-square with (32 - 1)^2 degrees of freedom.
    cells = np.bincount((np.arange(n) * 32 // n) * 32 + position * 32 // n, minlength=1024)
    chi_square = ((cells - n / 1024) ** 2 / (n / 1024)).sum()
    scores["landing"] = (chi_square - 961) / np.sqrt(2 * 961)
    # Neighbours on disk (often the same document) in the same batch: P = (batch - 1) / (n - 1).
    together = (position[:-1] // batch == position[1:] // batch).sum()
    expected = (n - 1) * (batch - 1) / (n - 1)
    scores["neighbours_in_a_batch"] = (together - expected) / np.sqrt(expected)
    # Consecutive reads from nearby rows: P(|X - Y| < d) for two distinct uniform rows.
    d = n // 1000
    near = (np.abs(np.diff(order)) < d).sum()
    p_near = (d - 1) * (2 * n - d) / (n * (n - 1))
    scores["consecutive_reads_nearby"] = (near - (n - 1) * p_near) / np.sqrt((n - 1) * p_near)
    # Displacement |row - position|: mean (n^2 - 1) / (3n), per-element sd ~ n / sqrt(18).
    displacement = np.abs(order - np.arange(n)).mean()
    scores["displacement"] = (displacement - (n * n - 1) / (3 * n)) / (n / np.sqrt(18) / np.sqrt(n))
    # A row's place in this epoch and the next: correlation ~ N(0, 1 / n).
    next_position = np.empty(n, dtype=np.int64)
    next_position[next_order] = np.arange(n)
    scores["epoch_to_epoch"] = np.corrcoef(position, next_position)[0, 1] * np.sqrt(n)
    return scores


NUM_ROWS = 2**20 - 3


def test_the_order_passes_the_statistics_of_a_uniform_shuffle():
    for seed in (0, 1):
        order = EpochOrder(seed=seed, num_rows=NUM_ROWS)
        scores = quality_z_scores(order.rows(0, NUM_ROWS), order.rows(NUM_ROWS, NUM_ROWS))
        assert all(abs(z) < 6 for z in scores.values()), scores
    exact = [seeded_rng(9, epoch).permutation(NUM_ROWS) for epoch in (0, 1)]
    assert all(abs(z) < 6 for z in quality_z_scores(*exact).values())


def test_the_statistics_flag_weak_orders():
    n = NUM_ROWS
    identity = np.arange(n)
    block = 256  # a shuffled order of blocks of 256 stored rows, in order inside each block
    blocks = (seeded_rng(1).permutation(n // block + 1)[:, None] * block + np.arange(block)).ravel()
    weak = {
        "identity": (identity, identity),
        "affine": ((identity * 40503 + 17) % n, (identity * 9973 + 5) % n),
        "blocks": (blocks[blocks < n], blocks[blocks < n]),
        "one_round_feistel": (feistel(n, num_rounds=1)(identity), feistel(n, 1, num_rounds=1)(identity)),
        "two_round_feistel": (feistel(n, num_rounds=2)(identity), feistel(n, 1, num_rounds=2)(identity)),
    }
    for name, (order, next_order) in weak.items():
        scores = quality_z_scores(order, next_order)
        assert max(abs(z) for z in scores.values()) > 6, (name, scores)
