"""cryoSPARC ``.cs`` particle files (numpy structured arrays).

Poses: ``alignments3D/pose`` is an axis-angle vector (radians) whose matrix is the transpose of
ours; ``alignments3D/shift`` is in pixels of ``alignments3D/psize_A``, which a heterogeneous
refinement runs at a smaller box than the images (``blob/psize_A``): shifts are rescaled to image
pixels by ``alignments3D/psize_A / blob/psize_A`` (cryoDRGN's ``--hetrefine`` ×2 is the usual
case). ``alignments3D/alpha`` is the per-particle scale. ``blob/sign`` (−1 for dark particles) is
applied when images are read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryo_napari.errors import InputError
from cryo_napari.jobs.atomic import atomic_path


def read_cs(path) -> np.ndarray:
    """Load a ``.cs`` file as a structured array, with a clear error if it is not one."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception:
        raise InputError(path, "not a cryoSPARC .cs file (not a numpy structured array)") from None
    if not isinstance(data, np.ndarray) or data.dtype.names is None:
        raise InputError(path, "not a cryoSPARC .cs file (no named fields)")
    return data


def alignment_prefix(data: np.ndarray) -> str | None:
    """``alignments3D`` when present, else ab-initio's ``alignments_class_0``, else None."""
    names = data.dtype.names
    for prefix in ("alignments3D", "alignments_class_0"):
        if f"{prefix}/pose" in names:
            return prefix
    return None


def cs_shift_scale(data: np.ndarray, prefix: str) -> np.ndarray:
    """Factor converting ``{prefix}/shift`` to image pixels (1 unless the refinement ran at another
    pixel size, e.g. 2 for a heterogeneous refinement at half box)."""
    names = data.dtype.names
    if f"{prefix}/psize_A" in names and "blob/psize_A" in names:
        a = data[f"{prefix}/psize_A"].astype(np.float64)
        b = data["blob/psize_A"].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.where((a > 0) & (b > 0), a / b, 1.0)
        return s
    return np.ones(len(data))


def write_cs_subset(src, dst, ind) -> Path:
    """Write rows ``ind`` of ``src`` to ``dst`` (all fields kept). Atomic."""
    data = read_cs(src)
    sub = data[np.asarray(ind)]
    dst = Path(dst)
    with atomic_path(dst) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, sub)
    return dst


def write_cs(path, data: np.ndarray) -> Path:
    """Write a structured array as ``.cs`` (numpy format without the .npy suffix). Atomic."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, data)
    return path
