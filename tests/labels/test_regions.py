"""Connected regions of a mask (Edge Impulse boxes), checked against a plain flood fill."""

from __future__ import annotations

import time
from collections import deque

import numpy as np
import pytest

from syncd.labels.masks import Mask
from syncd.labels.regions import Region, region_boxes


def make_mask(index: np.ndarray, names: dict[int, str]) -> Mask:
    counts = {k: int((index == k).sum()) for k in names if (index == k).any()}
    return Mask(index=index.astype(np.uint8), names=names, colours={}, counts=counts)


def flood_fill(index: np.ndarray, classes: set[int]) -> list[tuple]:
    """The obvious per-pixel algorithm (8-connectivity), as the oracle."""
    h, w = index.shape
    seen = np.zeros(index.shape, dtype=bool)
    out = []
    for y in range(h):
        for x in range(w):
            k = int(index[y, x])
            if k not in classes or seen[y, x]:
                continue
            queue, ys, xs = deque([(y, x)]), [], []
            seen[y, x] = True
            while queue:
                a, b = queue.popleft()
                ys.append(a)
                xs.append(b)
                for da in (-1, 0, 1):
                    for db in (-1, 0, 1):
                        c, d = a + da, b + db
                        if 0 <= c < h and 0 <= d < w and not seen[c, d] and index[c, d] == k:
                            seen[c, d] = True
                            queue.append((c, d))
            out.append((k, min(ys), min(xs), max(ys), max(xs), len(ys)))
    return sorted(out)


def as_tuples(regions: list[Region]) -> list[tuple]:
    return [(r.index, r.y, r.x, r.y + r.height - 1, r.x + r.width - 1, r.pixels) for r in regions]


@pytest.mark.parametrize("seed", range(6))
def test_random_masks_match_a_flood_fill(seed):
    rng = np.random.default_rng(seed)
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(1, 24, size=2))
        classes = int(rng.integers(1, 5))
        index = rng.integers(0, classes + 1, size=(h, w)).astype(np.uint8)
        if seed % 2:  # blobs instead of noise: smooth a coarse grid up
            coarse = rng.integers(0, classes + 1, size=(h // 3 + 1, w // 3 + 1)).astype(np.uint8)
            index = np.kron(coarse, np.ones((3, 3), dtype=np.uint8))[:h, :w]
        names = {k: f"c{k}" for k in range(1, classes + 1)}
        assert as_tuples(region_boxes(make_mask(index, names))) == flood_fill(index, set(names))


def test_diagonal_neighbours_are_one_region_and_background_is_none():
    index = np.array([[1, 0, 0],
                      [0, 1, 0],
                      [0, 0, 2]])
    regions = region_boxes(make_mask(index, {1: "car", 2: "bus"}))
    assert regions == [Region("car", 1, x=0, y=0, width=2, height=2, pixels=2),
                       Region("bus", 2, x=2, y=2, width=1, height=1, pixels=1)]


def test_index_zero_is_a_class_when_the_map_names_it():
    index = np.array([[0, 1], [1, 1]])
    regions = region_boxes(make_mask(index, {0: "bg", 1: "car"}))
    assert [(r.label, r.pixels) for r in regions] == [("bg", 1), ("car", 3)]


def test_min_pixels_drops_specks_and_an_empty_mask_has_no_boxes():
    index = np.zeros((10, 10), dtype=np.uint8)
    index[1:5, 1:5] = 1
    index[8, 8] = 1
    mask = make_mask(index, {1: "car"})
    assert len(region_boxes(mask)) == 2
    assert region_boxes(mask, min_pixels=2) == [Region("car", 1, x=1, y=1, width=4, height=4, pixels=16)]
    assert region_boxes(make_mask(np.zeros((4, 4)), {1: "car"})) == []


def test_a_long_snake_is_one_region_quickly():
    # The worst shape for label propagation: one path winding through the whole image.
    n = 1500
    index = np.zeros((n, n), dtype=np.uint8)
    index[::2] = 1
    index[1::4, -1] = 1
    index[3::4, 0] = 1
    start = time.perf_counter()
    regions = region_boxes(make_mask(index, {1: "snake"}))
    assert time.perf_counter() - start < 2.0
    assert regions == [Region("snake", 1, x=0, y=0, width=n, height=n, pixels=int(index.sum()))]
