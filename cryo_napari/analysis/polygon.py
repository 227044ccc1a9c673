"""Polygon selections in a 2-D view of latent space (shared by ``filter --polygon`` and the napari lasso).

File format (JSON)::

    {"space": "umap" | "pca" | "z", "axes": [i, j], "vertices": [[x, y], ...],
     "run": "<path or null>", "epoch": <int or null>}

``space`` names the coordinates the vertices are in (UMAP embedding, PCA scores, or raw latent
values), ``axes`` the two columns of that space shown on the x and y axes (0-based). Points
strictly inside the polygon (``matplotlib.path.Path.contains_points``) are selected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryo_napari.errors import InputError

SPACES = ("umap", "pca", "z")


@dataclass
class Polygon:
    """A polygon in columns ``axes`` of coordinate ``space``; ``vertices`` (V, 2)."""

    vertices: np.ndarray
    space: str = "umap"
    axes: tuple = (0, 1)
    run: str | None = None
    epoch: int | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"space": self.space, "axes": [int(a) for a in self.axes],
                "vertices": np.asarray(self.vertices, float).tolist(),
                "run": None if self.run is None else str(self.run),
                "epoch": None if self.epoch is None else int(self.epoch)}

    def select(self, coords: np.ndarray) -> np.ndarray:
        """Boolean mask (N,) of rows of ``coords`` (N, ≥2) whose ``axes`` columns lie inside."""
        coords = np.asarray(coords)
        i, j = self.axes
        if coords.ndim != 2 or max(i, j) >= coords.shape[1]:
            raise InputError(None, f"polygon axes {list(self.axes)} do not fit {self.space} coordinates of shape {coords.shape}")
        return points_in_polygon(coords[:, [i, j]], self.vertices)


def points_in_polygon(xy, vertices) -> np.ndarray:
    """Boolean mask (N,): which points ``xy`` (N, 2) lie strictly inside ``vertices`` (V, 2)."""
    from matplotlib.path import Path as MplPath

    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    v = np.asarray(vertices, dtype=float)
    if v.ndim != 2 or v.shape[1] != 2 or len(v) < 3:
        raise InputError(None, f"a polygon needs at least 3 (x, y) vertices, got shape {v.shape}")
    return MplPath(v).contains_points(xy, radius=0.0)


def read_polygon(path) -> Polygon:
    """Read and check a polygon JSON file."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    try:
        doc = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or "vertices" not in doc:
        raise InputError(path, "a polygon file is a JSON object with 'vertices'")
    space = doc.get("space", "umap")
    if space not in SPACES:
        raise InputError(path, f"space must be one of {', '.join(SPACES)}, got {space!r}")
    axes = doc.get("axes", [0, 1])
    try:
        axes = tuple(int(a) for a in axes)
        v = np.asarray(doc["vertices"], dtype=float)
    except (TypeError, ValueError):
        raise InputError(path, "axes must be two integers and vertices a list of [x, y] pairs") from None
    if len(axes) != 2 or min(axes) < 0:
        raise InputError(path, f"axes must be two non-negative integers, got {list(axes)}")
    if v.ndim != 2 or v.shape[1] != 2 or len(v) < 3 or not np.isfinite(v).all():
        raise InputError(path, f"vertices must be at least 3 finite [x, y] pairs, got shape {v.shape}")
    epoch = doc.get("epoch")
    extra = {k: val for k, val in doc.items() if k not in ("space", "axes", "vertices", "run", "epoch")}
    return Polygon(v, space, axes, doc.get("run"), None if epoch is None else int(epoch), extra)


def write_polygon(path, polygon: Polygon) -> Path:
    """Write ``polygon`` as JSON (atomic)."""
    from cryo_napari.jobs.atomic import write_text_atomic

    return write_text_atomic(path, json.dumps(polygon.to_dict(), indent=1) + "\n")
