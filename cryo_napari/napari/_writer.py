"""npe2 writer: save one image layer as an MRC volume (``.mrc`` / ``.map``).

The voxel size written to the header is the layer's last scale value (Å). napari and Qt are
never imported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cryo_napari.errors import InputError
from cryo_napari.io.mrc import write_mrc

#: Suffixes the writer produces; a path with any other suffix gets ``.mrc`` appended.
SUFFIXES = (".mrc", ".map")


def _target_path(path) -> Path:
    """``path`` with ``.mrc`` appended unless it already ends in ``.mrc`` or ``.map``."""
    p = Path(path)
    if p.suffix.lower() in SUFFIXES:
        return p
    return p.with_name(p.name + ".mrc")


def _volume_array(path: Path, data: Any) -> np.ndarray:
    """The layer data as a 3-D array (first level of a multiscale pyramid)."""
    if isinstance(data, (list, tuple)):  # multiscale: write full resolution
        data = data[0]
    arr = np.asarray(data)
    if arr.ndim != 3:
        raise InputError(path, f"only 3-D volumes can be saved as MRC (layer has {arr.ndim} dimensions)")
    return arr


def _voxel_size(path: Path, meta: dict) -> float:
    """Voxel size (Å) from the layer's last scale value; 1.0 when no scale is given."""
    scale = meta.get("scale")
    apix = float(scale[-1]) if scale is not None and len(scale) else 1.0
    if not np.isfinite(apix) or apix <= 0:
        raise InputError(path, f"layer scale {apix} is not a valid voxel size")
    return apix


def write_volume(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer: one image layer → MRC file.

    Parameters
    ----------
    path : str
        Target file; ``.mrc`` is appended if it does not end in ``.mrc`` or ``.map``.
    data : array-like
        The layer data (3-D; for multiscale data, the first level is written).
    meta : dict
        Layer attributes from napari; ``meta["scale"][-1]`` is the voxel size (Å) and
        ``meta["metadata"]["is_stack"]`` (set by this plugin's reader) keeps a particle
        stack flagged as a stack in the header.

    Returns
    -------
    list of str
        The path written.
    """
    target = _target_path(path)
    arr = _volume_array(target, data)
    apix = _voxel_size(target, meta)
    is_stack = bool((meta.get("metadata") or {}).get("is_stack", False))
    write_mrc(target, arr, apix=apix, is_stack=is_stack)
    return [str(target)]
