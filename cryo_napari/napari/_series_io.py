"""Read the volume series we write as napari layer data (no Qt; used by the reader and the viewer).

Recognised layouts (``read_series(path)``):

* ``DIR/series.npy`` (F, D, D, D) + ``DIR/series.json`` (``apix`` Å/px, optional ``axis`` name —
  "latent", "frame", … — and per-frame ``labels``/``values``); ``path`` may be the directory,
  the ``.npy`` or the ``.json``;
* a directory of ``.mrc`` maps of one box (sorted by name) → frames;
* a class3d run: ``RUN/iter_NNN/class_KK.mrc`` → one layer per class, slider "iteration".

Each layer is 4-D ``[axis, z, y, x]`` with ``scale = (1, apix, apix, apix)``, named axis labels,
``rendering="iso"``, contrast limits fixed over all frames and an iso threshold at the 97th
percentile of the whole series.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from cryo_napari.errors import InputError
from cryo_napari.io.mrc import read_mrc

ITER_RE = re.compile(r"^iter_(\d+)$")
CLASS_RE = re.compile(r"^class_(\d+)\.mrc$")


def series_kwargs(data: np.ndarray, apix: float, axis: str, name: str, meta: dict | None = None) -> dict:
    """Layer kwargs for a 4-D series: scale, axis labels, iso rendering, fixed contrast limits."""
    finite = np.asarray(data[np.isfinite(data)]) if not np.isfinite(data).all() else np.asarray(data)
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    thr = float(np.percentile(finite, 97)) if finite.size else 0.5
    if not lo <= thr < hi:  # e.g. binary masks: the 97th percentile is the maximum, and nothing shows
        thr = 0.5 * (lo + hi)
    return {"name": name, "scale": (1.0, apix, apix, apix), "axis_labels": (axis, "z", "y", "x"),
            "rendering": "iso", "contrast_limits": (lo, hi), "iso_threshold": thr,
            "colormap": "gray", "metadata": {"voxel_size": float(apix), "series_axis": axis, **(meta or {})}}


def is_series(path) -> bool:
    """True for a path :func:`read_series` understands."""
    p = Path(path)
    if p.name in ("series.npy", "series.json"):
        return True
    if not p.is_dir():
        return False
    return ((p / "series.npy").exists() or any(ITER_RE.match(c.name) for c in p.iterdir() if c.is_dir())
            or any(p.glob("*.mrc")))


def read_npy_series(path) -> list[tuple]:
    """``series.npy`` + ``series.json`` → one 4-D layer."""
    p = Path(path)
    d = p if p.is_dir() else p.parent
    npy, js = d / "series.npy", d / "series.json"
    if not npy.exists():
        raise InputError(d, "no series.npy")
    data = np.load(npy, mmap_mode="r")
    if data.ndim != 4:
        raise InputError(npy, f"a series is (frames, D, D, D), got shape {data.shape}")
    meta = {}
    if js.exists():
        try:
            meta = json.loads(js.read_text())
        except ValueError as exc:
            raise InputError(js, f"not valid JSON ({exc})") from None
    apix = float(meta.get("apix", meta.get("voxel_size", 1.0)))
    axis = str(meta.get("axis", meta.get("axis_name", "frame")))
    return [(np.asarray(data), series_kwargs(np.asarray(data), apix, axis, d.name or "series",
                                             {"path": str(npy), "series": meta}), "image")]


def read_mrc_frames(d) -> list[tuple]:
    """A directory of ``.mrc`` maps (same box) → one 4-D layer, frames in name order."""
    d = Path(d)
    files = sorted(d.glob("*.mrc"))
    if not files:
        raise InputError(d, "no .mrc files")
    frames, apix = [], None
    for f in files:
        vol, a = read_mrc(f)
        if frames and vol.shape != frames[0].shape:
            raise InputError(f, f"box {vol.shape} differs from {files[0].name} {frames[0].shape}")
        frames.append(vol)
        apix = apix or a
    data = np.stack(frames)
    return [(data, series_kwargs(data, float(apix), "frame", d.name, {"files": [f.name for f in files]}), "image")]


def class_maps(run) -> dict[int, dict[int, Path]]:
    """``{iteration: {class: path}}`` of a class3d run's ``iter_NNN/class_KK.mrc``."""
    out: dict[int, dict[int, Path]] = {}
    for it in Path(run).iterdir():
        m = ITER_RE.match(it.name)
        if not (m and it.is_dir()):
            continue
        classes = {int(c.group(1)): f for f in it.iterdir() if (c := CLASS_RE.match(f.name))}
        if classes:
            out[int(m.group(1))] = classes
    return dict(sorted(out.items()))


def read_class_series(run) -> list[tuple]:
    """A class3d run → one 4-D layer per class ``[iteration, z, y, x]`` (iterations with that class)."""
    maps = class_maps(run)
    if not maps:
        raise InputError(run, "no iter_NNN/class_KK.mrc maps")
    classes = sorted({k for per in maps.values() for k in per})
    layers = []
    for k in classes:
        its = [i for i in maps if k in maps[i]]
        vols = [read_mrc(maps[i][k]) for i in its]
        data = np.stack([v for v, _ in vols])
        layers.append((data, series_kwargs(data, float(vols[0][1]), "iteration", f"class {k}",
                                           {"iterations": its, "class": k}), "image"))
    # one contrast range for all classes, so that they compare
    lo = min(kw["contrast_limits"][0] for _, kw, _ in layers)
    hi = max(kw["contrast_limits"][1] for _, kw, _ in layers)
    for _, kw, _ in layers:
        kw["contrast_limits"] = (lo, hi)
    return layers


def read_series(path) -> list[tuple]:
    """Any series layout (see module docstring) → list of ``(data, kwargs, "image")``."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "not found")
    d = p if p.is_dir() else p.parent
    if (d / "series.npy").exists():
        return read_npy_series(d)
    if p.is_dir() and class_maps(p):
        return read_class_series(p)
    if p.is_dir():
        return read_mrc_frames(p)
    raise InputError(p, "not a series (series.npy, a directory of .mrc maps, or a class3d run)")
