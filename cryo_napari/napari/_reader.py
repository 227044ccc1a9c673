"""npe2 reader: MRC maps (``.mrc``, ``.map``), particle stacks (``.mrcs``) and our run directories.

Returns napari ``LayerData`` tuples ``(data, kwargs, layer_type)``; napari and Qt are never
imported at module level, so this module is testable without a GUI.

Dropping a **directory** (or its ``config.yaml`` / ``series.npy`` / ``series.json``) opens:

* a latent run (ours, any kind registered in :mod:`cryo_napari.analysis.runs`, or a cryoDRGN
  run) → a 2-D Points layer of the latents' first two principal components (feature
  ``particle`` = row index; metadata ``run``/``epoch``), and, inside a running napari window,
  the latent explorer dock loaded with the run;
* a volume series (``series.npy``, a directory of ``.mrc`` maps, a class3d run's
  ``iter_NNN/class_KK.mrc``) → 4-D image layers (:mod:`cryo_napari.napari._series_io`).

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


def _run_dir(path) -> Path | None:
    """The run/series directory ``path`` names (itself, or the parent of a run file), else None."""
    if not isinstance(path, (str, Path)):
        return None
    p = Path(path)
    if p.is_dir():
        return p
    if p.name in RUN_FILES and p.is_file():
        return p.parent
    return None


#: Files that stand for their run directory when dropped.
RUN_FILES = ("config.yaml", "series.npy", "series.json")


def _latent_kind(d: Path) -> str | None:
    """The latent-run kind of directory ``d`` (``'vae'``, ``'cryodrgn'``, …) or None."""
    if not (d / "config.yaml").exists():
        return None
    from cryo_napari.analysis.runs import run_kind
    from cryo_napari.errors import InputError

    try:
        return run_kind(d)
    except InputError:  # e.g. a class3d run: not a latent run, maybe a series
        return None


def get_run_reader(path) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader contribution for directories: a latent run or a volume series, else None."""
    from cryo_napari.napari._series_io import is_series

    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    d = _run_dir(path)
    if d is None:
        return None
    if _latent_kind(d) is not None or is_series(d):
        return read_run
    return None


def read_run(path) -> list[LayerData]:
    """A run directory (or its config.yaml / series file) → layer data (see the module docstring)."""
    from cryo_napari.napari._series_io import read_series

    path = path[0] if isinstance(path, (list, tuple)) else path
    d = _run_dir(path)
    if d is None:
        from cryo_napari.errors import InputError

        raise InputError(path, "not a run directory")
    if _latent_kind(d) is not None:
        layer = latent_points_layer(d)
        _open_in_explorer(d)
        return [layer]
    return read_series(Path(path) if Path(path).name.startswith("series.") else d)


def latent_points_layer(run, epoch: int | None = None) -> LayerData:
    """A latent run → ``(pc[:, :2] as [y, x] points, kwargs, "points")``.

    Returns
    -------
    tuple
        Points ``(N, 2)`` (PC1 on x, PC2 on y, so rows are ``[pc2, pc1]``), feature
        ``particle`` (row index), metadata ``run`` (str), ``epoch`` and ``kind``.
    """
    import numpy as np

    from cryo_napari.analysis.runs import load_latent_run

    r = load_latent_run(run, epoch)
    z = np.asarray(r.z, np.float64)
    zc = z - z.mean(0)
    if z.shape[1] >= 2:
        _, _, vt = np.linalg.svd(zc[:: max(1, len(zc) // 50_000)], full_matrices=False)
        pc = zc @ vt[:2].T
    else:
        pc = np.concatenate([zc, np.zeros_like(zc)], 1)
    pts = np.stack([pc[:, 1], pc[:, 0]], 1).astype(np.float32)
    kwargs = {"name": f"{Path(run).name} latents (PCA)", "size": 0.05 * float(np.ptp(pc[:, 0]) or 1.0),
              "features": {"particle": np.arange(len(z))}, "face_color": "cyan",
              "metadata": {"run": str(run), "epoch": getattr(r, "epoch", epoch), "kind": getattr(r, "kind", None)}}
    return pts, kwargs, "points"


def _open_in_explorer(run) -> None:
    """Inside a running napari window, show the latent explorer dock loaded with ``run``."""
    import sys

    if "napari" not in sys.modules or "qtpy" not in sys.modules:
        return  # no GUI running: layer data only
    try:
        import napari

        viewer = napari.current_viewer()
    except Exception:
        return
    if viewer is None:
        return
    from cryo_napari.napari._latent_explorer import LatentExplorer

    dock = LatentExplorer(viewer)
    viewer.window.add_dock_widget(dock, name=f"latent explorer: {Path(run).name}", area="right")
    dock._guard(dock.load, str(run), None)


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
