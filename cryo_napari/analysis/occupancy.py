"""Occupancy of structural elements of an aligned atomic model in a set of maps.

For each map and each element (a chain, or a named residue range), the occupancy is either

* ``fraction``: the fraction of the element's atoms at which the map (sampled trilinearly at the
  atom position) is above the map's threshold, or
* ``density``: the mean map value at the element's atoms, divided by the largest such mean of that
  element over all maps (a normalised density sum, 0–1 for positive maps).

Atom positions (Å) go to voxels as ``(xyz - centre) / apix + D // 2`` with ``centre`` the model's
mean position (the convention of :mod:`cryo_napari.simulate.atoms`), or as
``(xyz - origin) / apix`` when the Å position of voxel (0, 0, 0) is given. Maps are indexed
[z, y, x].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryo_napari.errors import InputError


@dataclass
class Element:
    """A structural element: ``name`` and atom mask (n_atoms,)."""

    name: str
    mask: np.ndarray


def chain_elements(atoms: dict) -> list[Element]:
    """One element per chain, in order of appearance."""
    names = list(dict.fromkeys(atoms["chain"].tolist()))
    return [Element(f"chain {c}", atoms["chain"] == c) for c in names]


def read_residue_ranges(path, atoms: dict) -> list[Element]:
    """Elements from a text file with lines ``name chain start end`` (inclusive residue numbers;
    ``#`` starts a comment). Each element must select at least one atom."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 4:
            raise InputError(path, f"line {lineno}: expected 'name chain start end', got {line!r}")
        name, chain, a, b = parts
        try:
            a, b = int(a), int(b)
        except ValueError:
            raise InputError(path, f"line {lineno}: residue numbers must be integers, got {parts[2]!r} {parts[3]!r}") from None
        mask = (atoms["chain"] == chain) & (atoms["resseq"] >= min(a, b)) & (atoms["resseq"] <= max(a, b))
        if not mask.any():
            raise InputError(path, f"line {lineno}: no atoms in chain {chain} residues {a}-{b}")
        out.append(Element(name, mask))
    if not out:
        raise InputError(path, "no residue ranges")
    return out


def atom_voxels(xyz, D: int, apix: float, origin_A=None) -> np.ndarray:
    """Voxel coordinates (N, 3) as (x, y, z) of atom positions ``xyz`` (N, 3) Å."""
    xyz = np.asarray(xyz, float)
    if origin_A is None:
        return (xyz - xyz.mean(0)) / apix + D // 2
    return (xyz - np.asarray(origin_A, float)) / apix


def sample_map(vol, pos_xyz) -> np.ndarray:
    """Trilinear samples (N,) of ``vol`` (D, D, D) [z, y, x] at voxel positions (N, 3) (x, y, z);
    0 outside the box."""
    from scipy.ndimage import map_coordinates

    p = np.asarray(pos_xyz, float)
    return map_coordinates(np.asarray(vol, np.float64), [p[:, 2], p[:, 1], p[:, 0]], order=1, mode="constant", cval=0.0)


def default_threshold(vol) -> float:
    """Per-map threshold: mean + 3 s.d. of the voxels (a typical contour for a map in a box)."""
    v = np.asarray(vol, np.float64)
    return float(v.mean() + 3 * v.std())


def occupancy_matrix(maps, apix: float, atoms: dict, elements: list[Element], mode: str = "fraction",
                     threshold=None, origin_A=None) -> tuple[np.ndarray, list[float]]:
    """Occupancy (n_maps, n_elements) and the thresholds used (one per map).

    ``maps``: iterable of (D, D, D) arrays at pixel size ``apix`` (Å); ``threshold``: one value
    for all maps, a list (one per map), or None (:func:`default_threshold` per map).
    """
    maps = list(maps)
    if not maps:
        raise InputError(None, "no maps")
    out = np.zeros((len(maps), len(elements)))
    ths = []
    for i, vol in enumerate(maps):
        vol = np.asarray(vol)
        pos = atom_voxels(atoms["xyz"], vol.shape[-1], apix, origin_A)
        vals = sample_map(vol, pos)
        th = default_threshold(vol) if threshold is None else float(np.atleast_1d(threshold)[i if np.size(threshold) > 1 else 0])
        ths.append(th)
        for j, el in enumerate(elements):
            out[i, j] = (vals[el.mask] > th).mean() if mode == "fraction" else vals[el.mask].mean()
    if mode == "density":
        top = out.max(0)
        out = out / np.where(top > 0, top, 1.0)
    elif mode != "fraction":
        raise ValueError(f"mode must be 'fraction' or 'density', got {mode!r}")
    return out, ths


def cluster_order(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Leaf orders (rows, columns) from average-linkage hierarchical clustering (Euclidean)."""
    from scipy.cluster.hierarchy import leaves_list, linkage

    def order(m):
        return leaves_list(linkage(m, "average")) if len(m) > 2 else np.arange(len(m))

    return order(matrix), order(matrix.T)


def write_occupancy(matrix, map_names, element_names, outdir, title: str = "occupancy") -> dict:
    """Write ``occupancy.csv`` (maps × elements, input order) and ``occupancy.png`` (heatmap with
    both axes ordered by hierarchical clustering, dendrograms at the sides). Returns paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    from scipy.cluster.hierarchy import dendrogram, linkage

    from cryo_napari.jobs.atomic import atomic_path, write_text_atomic

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(matrix, index=list(map_names), columns=list(element_names))
    csv = write_text_atomic(out / "occupancy.csv", df.to_csv(float_format="%.4f"))
    ro, co = cluster_order(np.asarray(matrix))
    nr, nc = matrix.shape
    fig = plt.figure(figsize=(3.0 + 0.35 * nc, 3.0 + 0.25 * nr))
    ax = fig.add_axes([0.25, 0.28, 0.6, 0.5])
    im = ax.imshow(matrix[np.ix_(ro, co)], aspect="auto", cmap="viridis", vmin=0, vmax=max(1.0, float(matrix.max())))
    ax.set_xticks(range(nc), [element_names[i] for i in co], rotation=90, fontsize=7)
    ax.set_yticks(range(nr), [map_names[i] for i in ro], fontsize=7)
    if nc > 2:
        axt = fig.add_axes([0.25, 0.79, 0.6, 0.12])
        dendrogram(linkage(matrix.T, "average"), ax=axt, no_labels=True, color_threshold=0)
        axt.axis("off")
    if nr > 2:
        axl = fig.add_axes([0.05, 0.28, 0.12, 0.5])
        dendrogram(linkage(matrix, "average"), ax=axl, orientation="left", no_labels=True, color_threshold=0)
        axl.invert_yaxis()
        axl.axis("off")
    fig.colorbar(im, cax=fig.add_axes([0.87, 0.28, 0.02, 0.5]))
    fig.suptitle(title, fontsize=9)
    with atomic_path(out / "occupancy.png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return {"csv": csv, "png": out / "occupancy.png", "row_order": ro, "col_order": co}
