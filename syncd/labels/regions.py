"""Connected regions of a class-index mask and their bounding boxes, in numpy alone.

Edge Impulse takes boxes, not masks, so a mask becomes one box per connected region of each
class. scipy.ndimage.label would do it, but scipy is a 40 MB dependency for one function on
small ARM boards; this is the same result (8-connectivity) with a few vectorised passes:

1. Runs: each row is cut into runs of equal class index (``np.diff`` on the flat array).
2. Links: runs of the same class in adjacent rows touch when their column ranges overlap or
   meet diagonally; every such pair is found with ``searchsorted`` on the run starts (a run
   is asked for the runs below it at its first column, one left of it and one past its end,
   and for the run above it at its first column: together that is every touching pair).
3. Components: union-find on the run graph, vectorised: hook every root to the smallest
   root it touches (``np.minimum.at``), then pointer-jump until every run points at its
   root; repeat until no link joins two roots.
4. Boxes: min/max row and column per component with ``reduceat``.

The graph has one node per run, far fewer than pixels for real masks (a 4K mask with 20
blobby classes has about 10^5 runs), so the whole thing takes tens of milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported by the functions below, when a mask is converted (see
    import numpy as np  # syncd.labels.masks): a daemon whose items have no mask never pays for it


@dataclass(frozen=True)
class Region:
    """One connected region of one class: the box in pixels (``x, y`` top-left, inclusive
    size) and its pixel count."""

    label: str
    index: int
    x: int
    y: int
    width: int
    height: int
    pixels: int


def _components(parent: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Root of every node after joining the edges ``(u[i], v[i])``; roots are the smallest
    node of their component. The invariant ``parent[x] <= x`` rules out cycles."""
    import numpy as np
    for _ in range(10_000):
        pu, pv = parent[u], parent[v]
        joined = pu != pv
        if not joined.any():
            return parent
        lo = np.minimum(pu[joined], pv[joined])
        hi = np.maximum(pu[joined], pv[joined])
        np.minimum.at(parent, hi, lo)
        while True:  # pointer jumping: every node ends up pointing at its root
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    raise RuntimeError("connected components did not converge")  # pragma: no cover (bounded by log n)


def region_boxes(mask, *, min_pixels: int = 1) -> list[Region]:
    """Boxes of the 8-connected regions of every class present in ``mask`` (a syncd.labels.masks.Mask).

    Regions smaller than ``min_pixels`` are left out (specks from anti-aliasing). The result is
    ordered by class index, then top-to-bottom, left-to-right: the same mask gives the same list.
    """
    import numpy as np
    index = mask.index
    h, w = index.shape
    is_class = np.zeros(256, dtype=bool)
    is_class[list(mask.counts)] = True
    if not is_class.any():
        return []
    flat = index.ravel()
    change = np.empty(flat.size, dtype=bool)
    change[0] = True
    np.not_equal(flat[1:], flat[:-1], out=change[1:])
    change[::w] = True  # a row always starts a run
    starts = np.flatnonzero(change)
    ends = np.empty_like(starts)  # exclusive
    ends[:-1] = starts[1:]
    ends[-1] = flat.size
    cls = flat[starts]
    row = starts // w
    col0 = starts - row * w
    col1 = ends - 1 - row * w  # inclusive

    fg = np.flatnonzero(is_class[cls])  # runs that belong to a class
    f_row, f_c0, f_c1 = row[fg], col0[fg], col1[fg]
    sources, queries = [], []
    below = f_row < h - 1
    for offset, valid in ((f_c0, below), (f_c1 + 1, below & (f_c1 + 1 < w)), (f_c0 - 1, below & (f_c0 > 0))):
        sources.append(fg[valid])
        queries.append((f_row[valid] + 1) * w + offset[valid])
    above = f_row > 0
    sources.append(fg[above])
    queries.append((f_row[above] - 1) * w + f_c0[above])
    src = np.concatenate(sources)
    dst = np.searchsorted(starts, np.concatenate(queries), side="right") - 1
    same = cls[src] == cls[dst]
    src, dst = src[same], dst[same]

    # Renumber foreground runs 0..m-1 for a compact union-find.
    node = np.full(starts.size, -1, dtype=np.int64)
    node[fg] = np.arange(fg.size)
    root = _components(np.arange(fg.size), node[src], node[dst])

    order = np.argsort(root, kind="stable")
    sorted_root = root[order]
    first = np.flatnonzero(np.r_[True, sorted_root[1:] != sorted_root[:-1]])
    run_pixels = (f_c1 - f_c0 + 1)[order]
    pixels = np.add.reduceat(run_pixels, first)
    y0 = np.minimum.reduceat(f_row[order], first)
    y1 = np.maximum.reduceat(f_row[order], first)
    x0 = np.minimum.reduceat(f_c0[order], first)
    x1 = np.maximum.reduceat(f_c1[order], first)
    comp_cls = cls[fg][order][first]

    keep = pixels >= min_pixels
    rows = sorted(zip(comp_cls[keep].tolist(), y0[keep].tolist(), x0[keep].tolist(), y1[keep].tolist(),
                      x1[keep].tolist(), pixels[keep].tolist()))
    return [Region(label=mask.names[k], index=k, x=xa, y=ya, width=xb - xa + 1, height=yb - ya + 1, pixels=n)
            for k, ya, xa, yb, xb, n in rows]
