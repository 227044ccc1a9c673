"""Voxels ↔ mesh: where each voxel of a map box sits in a tetrahedral mesh.

Mesh points are (x, y, z) in voxel units of the mesh box ``N`` (:mod:`cryo_napari.methods.flex.mesh`);
a map of box ``D`` covers the same physical box, both centred on voxel ``D // 2`` / ``N // 2``.
Used by the flow (per-voxel displacement = barycentric mix of its tetra's vertex displacements),
the generator and the reconstruction.
"""

from __future__ import annotations

import numpy as np

from cryo_napari.methods.flex.mesh import TetraMesh


def box_to_mesh_position(x: np.ndarray, D: int, N: int) -> np.ndarray:
    """Positions ``x`` in voxels of box D → the same physical positions in voxels of the mesh box N
    (both boxes centred on voxel ``D // 2`` / ``N // 2``)."""
    return x if D == N else (np.asarray(x, np.float64) - D // 2) * (N / D) + N // 2


def nearest_mesh_voxel(x: np.ndarray, D: int, N: int) -> np.ndarray:
    """Index (int64, clipped to 0 … N−1) of the mesh-box voxel nearest to box-D positions ``x``."""
    return np.clip(np.rint(box_to_mesh_position(x, D, N)).astype(np.int64), 0, N - 1)


def voxel_barycentrics(mesh: TetraMesh, D: int | None = None):
    """Tetra and barycentric coordinates of the masked voxels of a box ``D`` (default the mesh box).

    For ``D != N`` a voxel at ``x`` (box D) sits at ``(x − D/2)·N/D + N/2`` in the mesh box and
    uses the tetra of the nearest mesh voxel (barycentrics may then be slightly negative, i.e. a
    linear extrapolation across a cell face).

    Returns
    -------
    flat_index : (M,) int64 voxel indices into a flattened (D, D, D) [z, y, x] volume.
    cell : (M,) int64 cell of each voxel.
    bary : (M, 4) float64, summing to 1; ``bary @ points[cells[cell]]`` is the voxel position
        in mesh units.
    """
    N = mesh.N
    D = N if D is None else int(D)
    k = np.arange(D)
    zz, yy, xx = np.meshgrid(k, k, k, indexing="ij")
    pos = np.stack([xx, yy, zz], -1).reshape(-1, 3).astype(np.float64)
    pos = box_to_mesh_position(pos, D, N)
    near = nearest_mesh_voxel(pos, N, N)
    cell = mesh.tetraidx_map[near[:, 2], near[:, 1], near[:, 0]].astype(np.int64)
    inside = np.nonzero(cell >= 0)[0]
    cell = cell[inside]
    P = mesh.points[mesh.cells[cell]]  # (M, 4, 3)
    Tm = (P[:, :3] - P[:, 3:4]).transpose(0, 2, 1)  # (M, 3, 3) columns p_i − p_3
    lam = np.linalg.solve(Tm, (pos[inside] - P[:, 3])[..., None])[..., 0]
    bary = np.concatenate([lam, 1 - lam.sum(1, keepdims=True)], 1)
    return inside.astype(np.int64), cell, bary
