"""Mesh preview files for viewers: a tetrahedral VTK grid and a PLY boundary surface.

Plain ASCII writers (no pyvista needed to write); :meth:`cryo_napari.methods.flex.mesh.TetraMesh.write_preview`
calls them through an atomic temporary file.
"""

from __future__ import annotations


def write_ply_surface(path, vertices_xyz, faces, values) -> None:
    """ASCII PLY of a triangle surface: vertices (V, 3) x, y, z with a float ``value`` each, faces (F, 3)."""
    with open(path, "w") as f:
        f.write("ply\nformat ascii 1.0\n")
        f.write(f"element vertex {len(vertices_xyz)}\nproperty float x\nproperty float y\nproperty float z\n")
        f.write("property float value\n")
        f.write(f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n")
        for (a, b, c), v in zip(vertices_xyz, values):
            f.write(f"{a:.4f} {b:.4f} {c:.4f} {v:.4f}\n")
        for t in faces:
            f.write(f"3 {t[0]} {t[1]} {t[2]}\n")


def write_vtk_tetra(path, points, cells, cell_segment, rweights) -> None:
    """Legacy ASCII VTK unstructured grid: points (P, 3) x, y, z, tetrahedra ``cells`` (C, 4) with
    cell data ``segment`` (C,) int and ``rigidity`` (C,) float (pyvista and ParaView read it)."""
    P, C = points, cells
    with open(path, "w") as f:
        f.write("# vtk DataFile Version 3.0\ncryo_napari tetrahedral mesh\nASCII\nDATASET UNSTRUCTURED_GRID\n")
        f.write(f"POINTS {len(P)} float\n")
        f.writelines(f"{a:.4f} {b:.4f} {c:.4f}\n" for a, b, c in P)
        f.write(f"CELLS {len(C)} {5 * len(C)}\n")
        f.writelines(f"4 {a} {b} {c} {d}\n" for a, b, c, d in C)
        f.write(f"CELL_TYPES {len(C)}\n")
        f.write("10\n" * len(C))
        f.write(f"CELL_DATA {len(C)}\nSCALARS segment int 1\nLOOKUP_TABLE default\n")
        f.writelines(f"{int(s)}\n" for s in cell_segment)
        f.write("SCALARS rigidity float 1\nLOOKUP_TABLE default\n")
        f.writelines(f"{w:.4f}\n" for w in rweights)
