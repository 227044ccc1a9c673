"""RELION STAR files (3.0 without optics; 3.1/4/5 with one or several optics groups).

Reading merges optics-group values into per-particle arrays (a per-particle column, when present,
overrides its optics-group value). Writing subsets keeps the optics table and every column.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from cryo_napari.errors import InputError
from cryo_napari.jobs.atomic import atomic_path


def read_star_tables(path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Return (particles table, optics table or None) with column names without ``_``."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = starfile.read(path, always_dict=True)
    except Exception as exc:
        raise InputError(path, f"not a readable STAR file ({exc})") from None
    tables = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    if not tables:
        raise InputError(path, "no data table found")
    optics = tables.get("optics")
    particles = tables.get("particles")
    if particles is None:
        # RELION 3.0 (data_ or data_images) or subtomogram files: the (largest) non-optics table
        cands = [v for k, v in tables.items() if k != "optics"]
        if not cands:
            raise InputError(path, "no particle table (only data_optics)")
        particles = max(cands, key=len)
    for name, table in (("particles", particles), ("optics", optics)):
        if table is not None and "rlnOpticsGroup" in table.columns:
            g = pd.to_numeric(table["rlnOpticsGroup"], errors="coerce")
            if g.isna().any() or not np.isfinite(g.to_numpy(dtype=float)).all() or (g != g.round()).any():
                raise InputError(path, f"rlnOpticsGroup in the {name} table has non-integer values")
            table["rlnOpticsGroup"] = g.astype(int)
    return particles.reset_index(drop=True), optics


def merged_column(particles: pd.DataFrame, optics: pd.DataFrame | None, name: str):
    """Per-particle values of ``name``: the particle column if present, else its optics-group value.

    Returns a float array (N,) or None when neither table has it.
    """
    if name in particles.columns:
        return pd.to_numeric(particles[name], errors="coerce").to_numpy(dtype=np.float64)
    if optics is not None and name in optics.columns:
        if "rlnOpticsGroup" not in particles.columns:
            if len(optics) == 1:
                return np.full(len(particles), float(optics[name].iloc[0]))
            return None
        table = dict(zip(optics["rlnOpticsGroup"].astype(int), pd.to_numeric(optics[name], errors="coerce")))
        groups = particles["rlnOpticsGroup"].astype(int).to_numpy()
        missing = set(np.unique(groups)) - set(table)
        if missing:
            raise KeyError(f"optics group(s) {sorted(missing)} not in the optics table")
        return np.array([table[g] for g in groups], dtype=np.float64)
    return None


def pixel_size_from_star(particles, optics) -> np.ndarray | None:
    """Per-particle image pixel size (Å): rlnImagePixelSize, or RELION 3.0's
    rlnDetectorPixelSize·10⁴/rlnMagnification."""
    px = merged_column(particles, optics, "rlnImagePixelSize")
    if px is None:
        det = merged_column(particles, optics, "rlnDetectorPixelSize")
        mag = merged_column(particles, optics, "rlnMagnification")
        if det is not None and mag is not None:
            px = det * 1e4 / mag
    return px


def write_star(path, particles: pd.DataFrame, optics: pd.DataFrame | None) -> Path:
    """Write a RELION 3.1-style STAR file (``data_optics`` + ``data_particles``), or 3.0 style
    (a single ``data_`` block) when ``optics`` is None. Atomic."""
    path = Path(path)
    blocks = {"optics": optics, "particles": particles} if optics is not None else {"": particles}
    with atomic_path(path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            starfile.write(blocks, tmp, overwrite=True, na_rep="0")  # RELION cannot read <NA>
    return path


def write_star_subset(src, dst, ind) -> Path:
    """Write particles ``ind`` of STAR file ``src`` to ``dst``, keeping all columns and the optics
    table (restricted to the optics groups still used)."""
    particles, optics = read_star_tables(src)
    ind = np.asarray(ind)
    sub = particles.iloc[ind].reset_index(drop=True)
    if optics is not None and "rlnOpticsGroup" in sub.columns:
        used = set(sub["rlnOpticsGroup"].astype(int))
        optics = optics[optics["rlnOpticsGroup"].astype(int).isin(used)].reset_index(drop=True)
    return write_star(dst, sub, optics)
