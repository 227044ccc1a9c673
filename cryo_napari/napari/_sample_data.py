"""npe2 sample data: a simulated consensus map and the first particles of a simulated stack.

The files (``consensus.mrc``, ``particles.mrcs``) live in ``sample_data/`` inside the
installed package, or next to the package in a source checkout. napari and Qt are never
imported here.
"""

from __future__ import annotations

from pathlib import Path

import cryo_napari
from cryo_napari.napari._reader import read_layer

#: How many particles the ``particles`` sample shows.
N_SAMPLE_PARTICLES = 32


def sample_data_dir() -> Path:
    """Directory holding the sample files.

    Returns
    -------
    pathlib.Path
        The first existing of ``<package>/sample_data`` (installed wheel) and
        ``<package>/../sample_data`` (source checkout / editable install).

    Raises
    ------
    FileNotFoundError
        Neither directory exists.
    """
    pkg = Path(cryo_napari.__file__).resolve().parent
    candidates = (pkg / "sample_data", pkg.parent / "sample_data")
    for cand in candidates:
        if cand.is_dir():
            return cand
    raise FileNotFoundError(
        "cryo_napari sample data not found; looked in " + " and ".join(str(c) for c in candidates)
    )


def _sample_file(name: str) -> Path:
    """Path of one sample file, with a clear error when it is missing."""
    path = sample_data_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"cryo_napari sample file missing: {path}")
    return path


def consensus_map() -> list[tuple]:
    """Sample ``consensus``: the simulated consensus map as one image layer."""
    return [read_layer(_sample_file("consensus.mrc"))]


def particles() -> list[tuple]:
    """Sample ``particles``: the first 32 simulated particle images as one stack layer."""
    data, kwargs, layer_type = read_layer(_sample_file("particles.mrcs"))
    kwargs = {**kwargs, "name": f"{kwargs['name']} (first {N_SAMPLE_PARTICLES})"}
    return [(data[:N_SAMPLE_PARTICLES], kwargs, layer_type)]
