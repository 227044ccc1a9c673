"""Tetrahedral meshes for flexible refinement (3DFlex "Mesh Prep").

Coordinates: mesh points are (x, y, z) in **voxel units** of the mesh box ``N`` (voxel ``[z, y, x]``
of the map sits at point ``(x, y, z)``; the rotation centre is voxel ``N // 2``).

Construction (documented choices):

- Solvent mask (when none is given): the map low-passed to 10 Å, thresholded at
  ``threshold_frac`` (default 0.15) × its maximum, dilated by 2 Å (binary ``mask``) with a 5 Å
  raised-cosine pad (``mask_soft``).
- A regular grid of ``cells`` cubes across the box, each cube of the mask split into the 6
  Freudenthal (Kuhn) tetrahedra that share the cube's main diagonal. The split is the same in
  every cube, so neighbouring cubes share faces (a conforming mesh) and the tetrahedron holding a
  point follows from sorting its fractional coordinates. tetgen is not used: it is an extra
  compiled dependency, and a regular grid gives well-shaped cells of a known size, which is what
  the rigidity prior needs.
- Custom topology: a label volume assigns each tetrahedron the majority label of its voxels
  (the cube's majority when it holds none). Every segment gets its own copy of the vertices it
  uses; copies are merged only along the fused pairs of ``fuse`` ("0>3,0>4,3>2", parent>child,
  which must form one tree), so unfused neighbours can slide apart.

The pickle schema is cryoSPARC's mesh dict: ``tm_points``, ``tm_cells``, ``tm_tetraidx_map``,
``tm_rweights``, ``mask``, ``mask_soft``, ``N``, ``psize_A``; segment fields are our names
(``tm_segments``: (C,) segment label per cell, ``tm_fuse``: (E, 2) parent/child label pairs,
``tm_segment_labels``: the segment labels), as no public cryosparc-tools reference for them was
found. Plain ``pickle.load`` gives numpy arrays and Python numbers only.
"""

from __future__ import annotations

import pickle
from collections import deque
from dataclasses import dataclass, field
from itertools import permutations
from pathlib import Path

import numpy as np
from scipy import ndimage

from cryo_napari.errors import InputError
from cryo_napari.jobs.atomic import atomic_path
from cryo_napari.methods.flex.mesh_files import write_ply_surface, write_vtk_tetra

#: the 6 Freudenthal tetrahedra of a unit cube: axis orders (x=0, y=1, z=2)
_PERMS = list(permutations(range(3)))


@dataclass
class TetraMesh:
    """A tetrahedral mesh over a map box (see module docstring for units)."""

    points: np.ndarray  # (P, 3) float, xyz voxel units
    cells: np.ndarray  # (C, 4) int
    rweights: np.ndarray  # (C,) rigidity weights
    cell_segment: np.ndarray  # (C,) int segment label (0 when no segments)
    tetraidx_map: np.ndarray  # (N, N, N) int32 [z, y, x], −1 in solvent
    mask: np.ndarray  # (N, N, N) float32 binary
    mask_soft: np.ndarray  # (N, N, N) float32 in [0, 1]
    N: int
    psize_A: float
    fuse: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))

    # -- pickle (cryoSPARC schema) -----------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "tm_points": np.asarray(self.points, np.float32), "tm_cells": np.asarray(self.cells, np.int64),
            "tm_tetraidx_map": np.asarray(self.tetraidx_map, np.int32),
            "tm_rweights": np.asarray(self.rweights, np.float32), "mask": np.asarray(self.mask, np.float32),
            "mask_soft": np.asarray(self.mask_soft, np.float32), "N": int(self.N), "psize_A": float(self.psize_A),
            "tm_segments": np.asarray(self.cell_segment, np.int64),
            "tm_segment_labels": np.unique(np.asarray(self.cell_segment, np.int64)),
            "tm_fuse": np.asarray(self.fuse, np.int64).reshape(-1, 2),
        }

    def to_pickle(self, path) -> Path:
        """Write the mesh dict with plain pickle (atomic)."""
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                pickle.dump(self.to_dict(), f, protocol=4)
        return Path(path)

    @classmethod
    def from_dict(cls, d: dict, source="mesh") -> "TetraMesh":
        for k in ("tm_points", "tm_cells", "tm_tetraidx_map", "N"):
            if k not in d:
                raise InputError(source, f"mesh dict has no '{k}'")
        pts = np.asarray(d["tm_points"], np.float64)
        cells = np.asarray(d["tm_cells"], np.int64)
        N = int(d["N"])
        tmap = np.asarray(d["tm_tetraidx_map"], np.int64).astype(np.int32)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise InputError(source, f"tm_points must be (P, 3), got {pts.shape}")
        if cells.ndim != 2 or cells.shape[1] != 4:
            raise InputError(source, f"tm_cells must be (C, 4), got {cells.shape}")
        if len(cells) and (cells.min() < 0 or cells.max() >= len(pts)):
            raise InputError(source, "tm_cells refers to a point that does not exist")
        if tmap.shape != (N, N, N):
            raise InputError(source, f"tm_tetraidx_map shape {tmap.shape} is not N³ with N={N}")
        if tmap.max() >= len(cells):
            raise InputError(source, "tm_tetraidx_map refers to a cell that does not exist")
        C = len(cells)
        mask = np.asarray(d.get("mask", tmap >= 0), np.float32)
        return cls(pts, cells, np.asarray(d.get("tm_rweights", np.ones(C)), np.float64).reshape(C),
                   np.asarray(d.get("tm_segments", np.zeros(C)), np.int64).reshape(C), tmap, mask,
                   np.asarray(d.get("mask_soft", mask), np.float32), N, float(d.get("psize_A", 1.0)),
                   np.asarray(d.get("tm_fuse", np.zeros((0, 2))), np.int64).reshape(-1, 2))

    @classmethod
    def from_pickle(cls, path) -> "TetraMesh":
        path = Path(path)
        try:
            with open(path, "rb") as f:
                d = pickle.load(f)
        except FileNotFoundError:
            raise InputError(path, "no such mesh file") from None
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as exc:
            raise InputError(path, f"not a mesh pickle ({exc})") from None
        if not isinstance(d, dict):
            raise InputError(path, "mesh pickle does not hold a dict")
        return cls.from_dict(d, path)

    # -- geometry -----------------------------------------------------------------------------
    def boundary_faces(self) -> tuple[np.ndarray, np.ndarray]:
        """Triangles (F, 3) of cell faces not shared with another cell, and their cell (F,)."""
        return boundary_faces(self.cells)

    def surface_for_napari(self, color_by: str = "segment"):
        """Boundary surface for ``viewer.add_surface``: (vertices (V, 3) zyx, faces (F, 3), values (V,)).

        ``color_by``: ``"segment"`` (label of a cell using the vertex) or ``"rigidity"``.
        """
        faces, owner = self.boundary_faces()
        per_cell = self.cell_segment if color_by == "segment" else self.rweights
        values = np.zeros(len(self.points), np.float32)
        values[faces.reshape(-1)] = np.repeat(per_cell[owner], 3)
        return self.points[:, ::-1].astype(np.float32).copy(), faces.astype(np.int64), values

    def write_preview(self, path) -> Path:
        """Write a preview: ``.vtk`` (legacy ASCII unstructured grid of the tetrahedra with cell
        data segment/rigidity; pyvista/ParaView read it) or ``.ply`` (boundary surface)."""
        path = Path(path)
        with atomic_path(path) as tmp:
            if path.suffix.lower() == ".vtk":
                write_vtk_tetra(tmp, self.points, self.cells, self.cell_segment, self.rweights)
            else:
                v, f, vals = self.surface_for_napari()
                write_ply_surface(tmp, v[:, ::-1], f, vals)
        return path


def boundary_faces(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Faces of tetrahedra (C, 4) used by exactly one cell: (F, 3) triangles and owner cells (F,)."""
    faces = np.concatenate([cells[:, [1, 2, 3]], cells[:, [0, 3, 2]], cells[:, [0, 1, 3]], cells[:, [0, 2, 1]]])
    owner = np.tile(np.arange(len(cells)), 4)
    key = np.sort(faces, axis=1)
    _, inv, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    single = counts[inv.reshape(-1)] == 1
    return faces[single], owner[single]


def solvent_mask(vol: np.ndarray, apix: float, threshold_frac: float = 0.15, lowpass_A: float = 10.0,
                 dilate_A: float = 2.0, pad_A: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Binary and soft solvent masks (D, D, D) float32 from a map (module docstring)."""
    import torch

    from cryo_napari.geometry.fourier import lowpass_3d

    lp = lowpass_3d(torch.from_numpy(np.array(vol, np.float32)), lowpass_A, apix).numpy()
    binary = lp > threshold_frac * lp.max()
    if not binary.any():
        raise ValueError("the map is empty: no voxel above the mask threshold")
    dist = ndimage.distance_transform_edt(~binary) * apix  # Å
    mask = dist <= dilate_A
    t = np.clip((dist - dilate_A) / max(pad_A, 1e-6), 0, 1)
    soft = 0.5 * (1 + np.cos(np.pi * t))
    return mask.astype(np.float32), soft.astype(np.float32)


def parse_fuse(spec, labels, source="--fuse") -> np.ndarray:
    """Parse "0>3,0>4,3>2" into (E, 2) parent/child pairs and check that they form one tree.

    Raises InputError (one line) on bad syntax, unknown labels, a child with two parents, a
    cycle, or edges that do not connect into one tree.
    """
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return np.zeros((0, 2), np.int64)
    if isinstance(spec, str):
        pairs = []
        for tok in spec.replace(" ", "").split(","):
            if not tok:
                continue
            parts = tok.split(">")
            try:
                a, b = (int(p) for p in parts)
            except ValueError:
                raise InputError(source, f"'{tok}' is not 'PARENT>CHILD' with integer segment labels") from None
            pairs.append((a, b))
        edges = np.array(pairs, np.int64).reshape(-1, 2)
    else:
        edges = np.asarray(spec, np.int64).reshape(-1, 2)
    labels = set(int(x) for x in labels)
    for a, b in edges:
        for s in (a, b):
            if s not in labels:
                raise InputError(source, f"segment {s} does not exist (segments: {sorted(labels)})")
        if a == b:
            raise InputError(source, f"segment {a} is fused to itself")
    children = [int(b) for _, b in edges]
    dup = sorted({c for c in children if children.count(c) > 1})
    if dup:
        raise InputError(source, f"segment {dup[0]} has more than one parent; the fuse graph must be a tree")
    nodes = set(edges.reshape(-1).tolist())
    roots = nodes - set(children)
    if not roots:
        raise InputError(source, "the fuse graph has a cycle; it must be a tree")
    # breadth-first from the root: a tree reaches every node exactly once
    adj = {}
    for a, b in edges:
        adj.setdefault(int(a), []).append(int(b))
    seen, queue = set(), deque(sorted(roots)[:1])
    while queue:
        n = queue.popleft()
        if n in seen:
            raise InputError(source, "the fuse graph has a cycle; it must be a tree")
        seen.add(n)
        queue.extend(adj.get(n, []))
    if seen != nodes:
        raise InputError(source, f"the fuse graph is not one tree (segments {sorted(nodes - seen)} are not "
                                 f"reached from root {sorted(roots)[0]}, or it has a cycle)")
    return edges


def _grid_tetra(N: int, cells: int, mask: np.ndarray):
    """Grid points, tetrahedra (cube-local vertex ids), their cube, and the voxel → tetra map."""
    s = N / cells
    n1 = cells + 1
    z, y, x = np.nonzero(mask)
    f = np.stack([x, y, z], 1) / s  # grid coordinates
    cube = np.minimum(np.floor(f).astype(np.int64), cells - 1)
    frac = f - cube
    # Freudenthal tetra: descending order of the fractional coordinates
    order = np.argsort(-frac, axis=1, kind="stable")
    perm_id = {p: i for i, p in enumerate(_PERMS)}
    pid = np.array([perm_id[tuple(o)] for o in order], np.int64) if len(order) else np.zeros(0, np.int64)
    cube_lin = (cube[:, 2] * cells + cube[:, 1]) * cells + cube[:, 0]
    active = np.unique(cube_lin)
    # every tetra of every active cube
    cz, cy, cx = active // (cells * cells), (active // cells) % cells, active % cells
    corner = np.stack([cx, cy, cz], 1)
    tets, tet_cube = [], []
    for p in _PERMS:
        v = [corner]
        cur = corner.copy()
        for axis in p:
            cur = cur.copy()
            cur[:, axis] += 1
            v.append(cur)
        vid = np.stack([(c[:, 2] * n1 + c[:, 1]) * n1 + c[:, 0] for c in v], 1)
        tets.append(vid)
        tet_cube.append(np.arange(len(active)))
    tets = np.stack(tets, 1).reshape(-1, 4)  # (A*6, 4) ordered cube-major
    tet_cube = np.stack(tet_cube, 1).reshape(-1)
    vox_cube = np.searchsorted(active, cube_lin)
    vox_tet = vox_cube * 6 + pid
    g = np.arange(n1)
    gz, gy, gx = np.meshgrid(g, g, g, indexing="ij")
    grid_pts = np.stack([gx.ravel(), gy.ravel(), gz.ravel()], 1) * s
    return grid_pts, tets, tet_cube, (z, y, x), vox_tet


def _majority(labels: np.ndarray, groups: np.ndarray, n_groups: int, default) -> np.ndarray:
    out = np.full(n_groups, default, dtype=np.int64)
    if len(labels) == 0:
        return out
    uniq, lab_idx = np.unique(labels, return_inverse=True)
    counts = np.zeros((n_groups, len(uniq)), np.int64)
    np.add.at(counts, (groups, lab_idx), 1)
    has = counts.sum(1) > 0
    out[has] = uniq[counts[has].argmax(1)]
    return out


def make_tetramesh(vol, apix: float, mask=None, cells: int = 20, segments=None, fuse=None, rigid=(),
                   rigidity_min: float = 0.5, stiffen_periphery: float = 3.0, threshold_frac: float = 0.15,
                   mask_soft=None) -> TetraMesh:
    """Build a :class:`TetraMesh` over a consensus map.

    Parameters
    ----------
    vol : (N, N, N) consensus map.
    apix : voxel size in Å.
    mask : optional (N, N, N) solvent mask (> 0.5 is inside); made from ``vol`` when None.
    cells : cubes across the box (tetrahedra are 1/6 of a cube).
    segments : optional (N, N, N) integer label volume (each value inside the mask is a segment).
    fuse : "PARENT>CHILD,..." or (E, 2) pairs of segments whose shared vertices are merged.
    rigid : segment labels whose cells get rigidity weight 20.
    rigidity_min : weight of empty cells (dense cells get 1.0).
    stiffen_periphery : factor on the weight of cells with a face on the mesh boundary.
    """
    vol = np.asarray(vol, np.float32)
    N = vol.shape[-1]
    if vol.shape != (N, N, N):
        raise ValueError(f"map must be cubic, got {vol.shape}")
    if not 1 <= cells <= N:
        raise ValueError(f"cells must be in 1..{N}, got {cells}")
    if mask is None:
        mask_b, soft = solvent_mask(vol, apix, threshold_frac)
    else:
        mask_b = (np.asarray(mask) > 0.5).astype(np.float32)
        soft = np.asarray(mask if mask_soft is None else mask_soft, np.float32)
        if mask_b.shape != vol.shape:
            raise ValueError(f"mask shape {mask_b.shape} differs from the map {vol.shape}")
        if not mask_b.any():
            raise ValueError("the mask is empty")
    grid_pts, tets, tet_cube, (z, y, x), vox_tet = _grid_tetra(N, cells, mask_b > 0.5)
    T = len(tets)

    # segment of each tetra
    if segments is None:
        tet_seg = np.zeros(T, np.int64)
        edges = np.zeros((0, 2), np.int64)
    else:
        seg = np.rint(np.asarray(segments)).astype(np.int64)
        if seg.shape != vol.shape:
            raise InputError("--segments", f"label volume shape {seg.shape} differs from the map {vol.shape}")
        vlab = seg[z, y, x]
        cube_lab = _majority(vlab, tet_cube[vox_tet], tet_cube.max() + 1, int(np.bincount(vlab - vlab.min()).argmax() + vlab.min()))
        tet_seg = _majority(vlab, vox_tet, T, -(10**9))
        empty = tet_seg == -(10**9)
        tet_seg[empty] = cube_lab[tet_cube[empty]]
        edges = parse_fuse(fuse, np.unique(tet_seg), "--fuse")
    for r in rigid:
        if r not in set(tet_seg.tolist()):
            raise InputError("--rigid", f"segment {r} does not exist (segments: {sorted(set(tet_seg.tolist()))})")

    # one vertex copy per (segment, grid vertex); merge copies along fused pairs (union-find)
    keys = np.stack([np.repeat(tet_seg, 4), tets.reshape(-1)], 1)
    uk, inv = np.unique(keys, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    parent = np.arange(len(uk))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    lookup = {(int(s), int(v)): i for i, (s, v) in enumerate(uk)}
    for a, b in edges:
        shared = np.intersect1d(uk[uk[:, 0] == a, 1], uk[uk[:, 0] == b, 1])
        if len(shared) == 0:
            raise InputError("--fuse", f"segments {a} and {b} do not touch, so they cannot be fused")
        for v in shared:
            ra, rb = find(lookup[(int(a), int(v))]), find(lookup[(int(b), int(v))])
            parent[rb] = ra
    roots = np.array([find(i) for i in range(len(uk))])
    _, vid = np.unique(roots, return_inverse=True)
    cells_arr = vid[inv].reshape(T, 4)
    points = np.zeros((vid.max() + 1, 3))
    points[vid] = grid_pts[uk[:, 1]]

    tmap = np.full((N, N, N), -1, np.int32)
    tmap[z, y, x] = vox_tet

    # rigidity weights from the low-passed density in each cell
    dens = np.zeros(T)
    cnt = np.zeros(T)
    np.add.at(dens, vox_tet, vol[z, y, x])
    np.add.at(cnt, vox_tet, 1)
    mean = np.where(cnt > 0, dens / np.maximum(cnt, 1), 0.0)
    hi = np.percentile(mean[cnt > 0], 90) if (cnt > 0).any() else 1.0
    rw = rigidity_min + (1 - rigidity_min) * np.clip(mean / max(hi, 1e-12), 0, 1)
    _, owner = boundary_faces(tets)  # geometric boundary (before segment splitting)
    periph = np.zeros(T, bool)
    periph[owner] = True
    rw[periph] *= stiffen_periphery
    for r in rigid:
        rw[tet_seg == r] = 20.0
    return TetraMesh(points, cells_arr, rw, tet_seg, tmap, mask_b, soft, N, float(apix), edges)
