"""npe2 reader: MRC maps (``.mrc``, ``.map``) and particle stacks (``.mrcs``).

Returns napari ``LayerData`` tuples ``(data, kwargs, "image")``; napari and Qt are never
imported here, so this module is testable without a GUI.

A volume becomes one 3-D image layer ``[z, y, x]`` with the voxel size (Å) as scale on every
axis. A stack becomes one 3-D image layer ``[particle, y, x]`` with scale 1 on the particle
axis; it is memory-mapped so large stacks open without being loaded into memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from cryo_napari.io.mrc import read_header, read_mrc

#: File suffixes this reader handles (lower case).
SUFFIXES = (".mrc", ".mrcs", ".map")

LayerData = tuple  # (data, kwargs, layer_type)


def _is_supported(path) -> bool:
    """True for a string/path naming a file with an MRC suffix (not a directory)."""
    if not isinstance(path, (str, Path)):
        return False
    p = Path(path)
    return p.suffix.lower() in SUFFIXES and not p.is_dir()


def get_reader(path) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader contribution: a reader function for MRC paths, else ``None``.

    Parameters
    ----------
    path : str or list of str
        One path, or several (napari passes a list when the user opens several files).

    Returns
    -------
    callable or None
        :func:`read_paths` when every path is an MRC file; ``None`` otherwise so napari
        tries other readers.
    """
    paths = path if isinstance(path, (list, tuple)) else [path]
    if not paths or not all(_is_supported(p) for p in paths):
        return None
    return read_paths


def read_paths(path) -> list[LayerData]:
    """Read one or several MRC files into layer data (one layer per file).

    Parameters
    ----------
    path : str or list of str

    Returns
    -------
    list of tuple
        ``(data, kwargs, "image")`` per file.

    Raises
    ------
    cryo_napari.errors.InputError
        A file is missing, truncated or not an MRC file.
    """
    paths = path if isinstance(path, (list, tuple)) else [path]
    return [read_layer(p) for p in paths]


def read_layer(path) -> LayerData:
    """One MRC file → ``(data, kwargs, "image")``, volume or stack per the header."""
    path = Path(path)
    header = read_header(path)
    if header["is_stack"]:
        return _stack_layer(path)
    return _volume_layer(path)


def _metadata(path: Path, apix: float, is_stack: bool) -> dict:
    return {"voxel_size": float(apix), "path": str(path), "is_stack": bool(is_stack)}


def _volume_layer(path: Path) -> LayerData:
    """A map as a 3-D image layer with isotropic scale = voxel size (Å)."""
    data, apix = read_mrc(path)
    kwargs = {
        "name": path.stem,
        "scale": (apix, apix, apix),
        "units": "angstrom",
        "axis_labels": ("z", "y", "x"),
        "colormap": "gray",
        "rendering": "iso",
        "metadata": _metadata(path, apix, is_stack=False),
    }
    return data, kwargs, "image"


def _stack_layer(path: Path) -> LayerData:
    """A particle stack as a 3-D image layer ``[particle, y, x]`` (memory-mapped)."""
    data, apix = read_mrc(path, mmap=True)
    kwargs = {
        "name": path.stem,
        "scale": (1.0, apix, apix),
        "units": ("pixel", "angstrom", "angstrom"),
        "axis_labels": ("particle", "y", "x"),
        "colormap": "gray",
        "metadata": _metadata(path, apix, is_stack=True),
    }
    return data, kwargs, "image"
