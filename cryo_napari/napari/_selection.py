"""Selections of particles in a 2-D view of latent space (no Qt: used by the explorer and benchmarks).

A :class:`Selection` is a name, the sorted particle indices it holds and, when it was drawn,
the polygon it was drawn with (in the explorer's current ``space``/``axes``). Lasso, rectangle
and ellipse selectors all end as polygons; membership is
``matplotlib.path.Path.contains_points`` (through :mod:`cryo_napari.analysis.polygon` when it is
in this build), made fast by a :class:`PointGrid` built once per view: only points in grid cells
that a polygon edge touches are tested one by one, so 10⁶ points select in < 50 ms.
The polygon JSON is the format ``cryo-napari filter --polygon`` reads::

    {"space": "umap" | "pca" | "z", "axes": [i, j], "vertices": [[x, y], ...],
     "run": "<path or null>", "epoch": <int or null>}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryo_napari.errors import InputError

SPACES = ("umap", "pca", "z")


def _contains(xy: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    try:
        from cryo_napari.analysis.polygon import points_in_polygon
    except ImportError:  # the analysis package is not in this build
        from matplotlib.path import Path as MplPath

        return MplPath(vertices).contains_points(xy, radius=0.0)
    return points_in_polygon(xy, vertices)


class PointGrid:
    """Points ``xy`` (N, 2) binned into a ``G × G`` grid once, so that polygons select fast.

    Built once per embedding (≈ 15 ms for 10⁶ points); :meth:`select` then tests exactly only
    the points in grid cells that a polygon edge touches. Cells no edge touches are wholly
    inside or wholly outside; each connected group of them is decided by one cell centre.
    """

    def __init__(self, xy, G: int = 512):
        xy = np.asarray(xy)
        self.xy = xy
        self.G = int(G)
        self.lo = np.array([np.min(xy[:, 0]), np.min(xy[:, 1])], float) if len(xy) else np.zeros(2)
        hi = np.array([np.max(xy[:, 0]), np.max(xy[:, 1])], float) if len(xy) else np.ones(2)
        span = np.maximum(hi - self.lo, 1e-12)
        self.cell = span / self.G * (1 + 1e-9)
        ij = np.floor((xy - self.lo) / self.cell).astype(np.int64)
        np.clip(ij, 0, self.G - 1, out=ij)
        self.cell_id = (ij[:, 0] * self.G + ij[:, 1]).astype(np.int32)

    def _edge_cells(self, v: np.ndarray) -> np.ndarray:
        """Boolean (G, G): cells any polygon edge passes through, dilated by one cell."""
        from scipy.ndimage import binary_dilation

        a, b = v, np.roll(v, -1, axis=0)
        steps = np.ceil(np.max(np.abs(b - a) / self.cell, axis=1) * 4).astype(int) + 1
        t = np.concatenate([np.linspace(0, 1, k + 1) for k in steps])
        e = np.repeat(np.arange(len(v)), steps + 1)
        pts = a[e] + (b[e] - a[e]) * t[:, None]
        ij = np.floor((pts - self.lo) / self.cell).astype(np.int64)
        np.clip(ij, 0, self.G - 1, out=ij)
        edge = np.zeros((self.G, self.G), bool)
        edge[ij[:, 0], ij[:, 1]] = True
        return binary_dilation(edge, structure=np.ones((3, 3), bool))

    def select(self, vertices) -> np.ndarray:
        """Indices (sorted int64) of the points strictly inside ``vertices`` (V, 2)."""
        from scipy.ndimage import label

        v = _check_vertices(vertices)
        edge = self._edge_cells(v)
        labels, n = label(~edge)
        inside_cell = np.zeros((self.G, self.G), bool)
        if n:
            flat = labels.ravel()
            first = np.full(n + 1, -1, np.int64)
            order = np.flatnonzero(flat)
            first[flat[order[::-1]]] = order[::-1]  # first cell of each component
            reps = first[1:]
            centres = self.lo + (np.stack([reps // self.G, reps % self.G], 1) + 0.5) * self.cell
            comp_inside = np.concatenate([[False], _contains(centres, v)])
            inside_cell = comp_inside[labels]
        flat_inside = inside_cell.ravel()
        mask = flat_inside[self.cell_id]
        check = np.flatnonzero(edge.ravel()[self.cell_id])
        if len(check):
            mask[check] = _contains(np.asarray(self.xy[check], dtype=float), v)
        return np.flatnonzero(mask).astype(np.int64)


def _check_vertices(vertices) -> np.ndarray:
    v = np.asarray(vertices, dtype=float)
    if v.ndim != 2 or v.shape[1] != 2 or len(v) < 3 or not np.isfinite(v).all():
        raise InputError(None, f"a polygon needs at least 3 finite (x, y) vertices, got shape {v.shape}")
    return v


def select_in_polygon(xy, vertices, grid: PointGrid | None = None) -> np.ndarray:
    """Indices (sorted, int64) of points ``xy`` (N, 2) strictly inside polygon ``vertices`` (V, 2).

    Identical to ``Path(vertices).contains_points(xy)``; with a prebuilt :class:`PointGrid` of the
    same points (the explorer keeps one per embedding) only points near the polygon's edges are
    tested one by one. Without a grid, points outside the polygon's bounding box are dropped
    first.
    """
    v = _check_vertices(vertices)
    if grid is not None:
        return grid.select(v)
    xy = np.asarray(xy)
    lo, hi = v.min(0), v.max(0)
    x, y = xy[:, 0], xy[:, 1]
    cand = np.flatnonzero((x >= lo[0]) & (x <= hi[0]) & (y >= lo[1]) & (y <= hi[1]))
    if len(cand) == 0:
        return cand.astype(np.int64)
    inside = _contains(np.asarray(xy[cand], dtype=float), v)
    return cand[inside].astype(np.int64)


def rectangle_vertices(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Corners (4, 2) of the axis-aligned rectangle spanned by two corners."""
    xa, xb = sorted((x0, x1))
    ya, yb = sorted((y0, y1))
    return np.array([[xa, ya], [xb, ya], [xb, yb], [xa, yb]], dtype=float)


def ellipse_vertices(x0: float, y0: float, x1: float, y1: float, n: int = 64) -> np.ndarray:
    """Polygon (n, 2) approximating the ellipse inscribed in the box spanned by two corners."""
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    rx, ry = abs(x1 - x0) / 2, abs(y1 - y0) / 2
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


@dataclass
class Selection:
    """A named set of particle indices (sorted unique int64), with its polygon if drawn."""

    name: str
    indices: np.ndarray
    vertices: np.ndarray | None = None
    space: str | None = None
    axes: tuple | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.indices = np.unique(np.asarray(self.indices, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.indices)


def union(name: str, sels) -> Selection:
    """All particles in any of ``sels``."""
    return Selection(name, np.unique(np.concatenate([s.indices for s in sels])) if sels else [])


def intersection(name: str, sels) -> Selection:
    """Particles in every one of ``sels``."""
    out = sels[0].indices
    for s in sels[1:]:
        out = np.intersect1d(out, s.indices, assume_unique=True)
    return Selection(name, out)


def invert(name: str, sel: Selection, n: int) -> Selection:
    """Particles ``0..n-1`` not in ``sel``."""
    mask = np.ones(n, bool)
    mask[sel.indices] = False
    return Selection(name, np.flatnonzero(mask))


def save_indices(path, sel: Selection) -> Path:
    """Write the indices as an int64 ``.npy`` (atomic)."""
    from cryo_napari.jobs.atomic import save_npy_atomic

    return save_npy_atomic(path, sel.indices)


def load_indices(path, name: str | None = None) -> Selection:
    """Read an indices ``.npy`` back as a selection."""
    path = Path(path)
    try:
        ind = np.load(path)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"not a readable .npy file ({exc})") from None
    if ind.ndim != 1 or not np.issubdtype(ind.dtype, np.integer):
        raise InputError(path, f"indices must be a 1-D integer array, got {ind.dtype} {ind.shape}")
    return Selection(name or path.stem, ind)


def polygon_document(sel: Selection, run=None, epoch=None) -> dict:
    """The polygon JSON object of a drawn selection."""
    if sel.vertices is None:
        raise InputError(None, f"selection {sel.name!r} was not drawn (combined selections have no polygon)")
    return {"space": sel.space, "axes": [int(a) for a in sel.axes],
            "vertices": np.asarray(sel.vertices, float).tolist(),
            "run": None if run is None else str(run), "epoch": None if epoch is None else int(epoch)}


def save_polygon(path, sel: Selection, run=None, epoch=None) -> Path:
    """Write the selection's polygon JSON (atomic; shared format with ``filter --polygon``)."""
    doc = polygon_document(sel, run, epoch)
    try:
        from cryo_napari.analysis.polygon import Polygon, write_polygon
    except ImportError:
        from cryo_napari.jobs.atomic import write_text_atomic

        return write_text_atomic(path, json.dumps(doc, indent=1) + "\n")
    return write_polygon(path, Polygon(np.asarray(doc["vertices"]), doc["space"], tuple(doc["axes"]),
                                       doc["run"], doc["epoch"]))


def load_polygon(path) -> dict:
    """Read a polygon JSON into a dict with ``space``, ``axes``, ``vertices`` (V, 2), ``run``, ``epoch``."""
    try:
        from cryo_napari.analysis.polygon import read_polygon
    except ImportError:
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
            doc["vertices"] = np.asarray(doc["vertices"], float)
            doc["axes"] = tuple(int(a) for a in doc.get("axes", (0, 1)))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(path, f"not a polygon JSON file ({exc})") from None
        if doc.get("space") not in SPACES:
            raise InputError(path, f"space must be one of {', '.join(SPACES)}")
        return doc
    p = read_polygon(path)
    return {"space": p.space, "axes": tuple(p.axes), "vertices": np.asarray(p.vertices, float),
            "run": p.run, "epoch": p.epoch}


def export_particles(particles, dst, sel: Selection) -> Path:
    """Write the subset of a ``.star`` / ``.cs`` particle file holding ``sel``'s particles.

    Uses :mod:`cryo_napari.analysis.filtering` when it is in this build, else the io subset
    writers. Indices refer to rows of ``particles``.
    """
    src, dst = Path(particles), Path(dst)
    try:
        from cryo_napari.analysis import filtering  # noqa: F401
        write_subset = getattr(filtering, "write_particle_subset", None)
    except ImportError:
        write_subset = None
    if write_subset is not None:
        return Path(write_subset(src, dst, sel.indices))
    if src.suffix.lower() == ".star":
        from cryo_napari.io.star import write_star_subset

        return write_star_subset(src, dst, sel.indices)
    if src.suffix.lower() == ".cs":
        from cryo_napari.io.cryosparc import write_cs_subset

        return write_cs_subset(src, dst, sel.indices)
    raise InputError(src, "filtered export needs a .star or .cs particle file (save indices for stacks)")
