"""Summarise a particle file (.star, .cs, .mrcs/.mrc stack, .txt list): counts, box, pixel size, optics groups, CTF ranges, pose coverage.

Images are opened when their stacks can be found (give --datadir for stacks named relative to
another directory); otherwise the summary is of the metadata only. Pose coverage is the fraction
of ~500 equal-area cells of the viewing-direction hemisphere (d and -d give mirror-image
projections) holding at least one particle. With --json the same summary is printed as JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from cryo_napari.errors import InputError
from cryo_napari.geometry.rotations import viewing_directions
from cryo_napari.io.mrc import read_header
from cryo_napari.io.particles import ParticleData, find_duplicate_particles, load_particles
from cryo_napari.io.star import read_star_tables

#: number of equal-area cells on the viewing-direction hemisphere
N_CELLS = 500
#: tilt (angle to the map z axis, folded to [0, 90]°) below which a view counts as a top view
TOP_TILT_DEG = 15.0
#: number of leading images whose value statistics are reported
N_STAT_IMAGES = 100


def add_args(p):
    p.add_argument("file", help="particle file: .star, .cs, .mrcs/.mrc stack or .txt list of stacks")
    p.add_argument("--datadir", help="directory to find image stacks named in the particle file")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def hemisphere_cells(n: int = N_CELLS) -> np.ndarray:
    """Centres of ``n`` equal-area cells on the upper (z ≥ 0) hemisphere (Fibonacci lattice).

    Parameters
    ----------
    n : number of cells.

    Returns
    -------
    (n, 3) unit vectors; ``z`` is uniform in (0, 1) so every cell has the same area.
    """
    i = np.arange(n)
    z = 1.0 - (i + 0.5) / n
    r = np.sqrt(1.0 - z**2)
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def pose_coverage(rotations: np.ndarray, n_cells: int = N_CELLS) -> dict:
    """Viewing-direction coverage and tilt distribution of poses.

    Parameters
    ----------
    rotations : (N, 3, 3) pose matrices (our convention).
    n_cells : number of hemisphere cells.

    Returns
    -------
    dict with ``coverage`` (fraction of occupied cells, d ≡ -d), ``cells``, ``tilt_median_deg``
    and the fractions of top (tilt < 15°) and side (tilt > 75°) views, tilt folded to [0, 90]°.
    """
    from scipy.spatial import cKDTree

    d = viewing_directions(rotations).reshape(-1, 3)
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    cells = hemisphere_cells(n_cells)
    # nearest cell up to sign: search the cells and their antipodes, fold the index
    _, idx = cKDTree(np.concatenate([cells, -cells])).query(d)
    occupied = np.unique(idx % n_cells)
    tilt = np.degrees(np.arccos(np.clip(np.abs(d[:, 2]), 0.0, 1.0)))
    return {"coverage": len(occupied) / n_cells, "cells": n_cells,
            "tilt_median_deg": float(np.median(tilt)),
            "top_views_tilt_lt_15": float(np.mean(tilt < TOP_TILT_DEG)),
            "side_views_tilt_gt_75": float(np.mean(tilt > 90.0 - TOP_TILT_DEG))}


def _num(x):
    """A JSON-safe Python number (None for NaN/inf)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _range(a) -> list:
    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a)]
    return [_num(a.min()), _num(a.max())] if a.size else [None, None]


def _stats(a) -> list:
    """[min, median, max] of the finite values."""
    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a)]
    return [_num(a.min()), _num(np.median(a)), _num(a.max())] if a.size else [None, None, None]


def _values(a, ndigits: int = 4) -> list:
    """The distinct values when there are at most 4, else [min, max]."""
    u = np.unique(np.round(np.asarray(a, dtype=np.float64), ndigits))
    return [_num(v) for v in u] if len(u) <= 4 else _range(u)


def _optics_groups(pdata: ParticleData) -> list:
    names = {}
    if pdata.kind == "star":
        _, optics = read_star_tables(pdata.path)
        if optics is not None and {"rlnOpticsGroup", "rlnOpticsGroupName"} <= set(optics.columns):
            names = dict(zip(optics["rlnOpticsGroup"].astype(int), optics["rlnOpticsGroupName"].astype(str)))
    ids, counts = np.unique(pdata.optics_group, return_counts=True)
    return [{"id": int(g), "name": names.get(int(g)), "particles": int(c)} for g, c in zip(ids, counts)]


def _format(pdata: ParticleData) -> str:
    if pdata.kind == "star":
        return "RELION 3.1+ (optics table)" if read_star_tables(pdata.path)[1] is not None else "RELION 3.0"
    return {"cs": "cryoSPARC", "stack": "stack"}[pdata.kind]


def summarise(path, datadir=None) -> dict:
    """Load ``path`` (with images when their stacks are found) and summarise it as a dict.

    Raises
    ------
    InputError
        For a missing, unsupported or malformed file.
    """
    path = Path(path)
    if not path.exists():  # checked here so every format (also .txt lists) gives one line
        raise InputError(path, "file not found")
    images_note = "found"
    try:
        pdata = load_particles(path, datadir, with_images=True)
    except InputError as err:
        if path.suffix.lower() not in (".star", ".cs") or "not found" not in str(err):
            raise
        pdata = load_particles(path, datadir, with_images=False)
        images_note = "not found (metadata only)"
    if pdata.kind == "stack":  # a map given as particles would otherwise read as nz images
        for f in pdata.images.files:
            h = read_header(f)
            if not h["is_stack"]:
                shape = "x".join(map(str, h["shape"][::-1]))
                raise InputError(f, f"is a 3-D volume ({shape}, space group {h['ispg']}), not an image stack")
    n = len(pdata)
    info = {"file": str(path), "format": _format(pdata), "particles": n, "images": images_note,
            "box_px": int(pdata.box) if pdata.box else None, "pixel_size_A": _range(pdata.apix)}
    groups = _optics_groups(pdata)
    info["optics_groups"] = {"count": len(groups), "groups": groups}
    ctf = pdata.ctf
    if ctf is None:
        info["ctf"] = None
    else:
        info["ctf"] = {
            "defocus_u_um": _stats(ctf.defocus_u_A / 1e4), "defocus_v_um": _stats(ctf.defocus_v_A / 1e4),
            "astigmatism_um": _stats(np.abs(ctf.defocus_u_A - ctf.defocus_v_A) / 1e4),
            "voltage_kV": _values(ctf.voltage_kV), "cs_mm": _values(ctf.cs_mm),
            "amp_contrast": _values(ctf.amp_contrast),
            "phase_shift": bool(np.any(np.abs(ctf.phase_shift_rad) > 1e-6)),
        }
    if pdata.rotations is None:
        info["poses"] = None
    else:
        info["poses"] = {"shifts_px": _range(pdata.shifts_px), **pose_coverage(pdata.rotations)}
    info["half_sets"] = None if pdata.half is None else [int((pdata.half == 0).sum()), int((pdata.half == 1).sum())]
    info["scale"] = _range(pdata.scale) if np.any(pdata.scale != 1) else None
    info["image_sign"] = -1 if np.all(pdata.image_sign == -1) else (1 if np.all(pdata.image_sign == 1) else "mixed")
    info["stack"] = None
    if pdata.images is not None:
        src = pdata.images
        imgs = src.read(np.arange(min(N_STAT_IMAGES, len(src))))  # raw file values (no sign applied)
        bad = ~np.isfinite(imgs).reshape(len(imgs), -1).all(axis=1)
        good = imgs[~bad]
        info["stack"] = {"files": len(src.files), "images": len(src), "box_px": int(src.D),
                         "voxel_size_A": _num(src.apix_header), "first_images": len(imgs),
                         "mean": _num(good.mean(dtype=np.float64)) if len(good) else None,
                         "std": _num(good.std(dtype=np.float64)) if len(good) else None,
                         "nonfinite_images": int(bad.sum())}
        info["duplicates"] = int(len(find_duplicate_particles(pdata)))
    return info


def _fmt(v, nd=3) -> str:
    if isinstance(v, list):
        return " / ".join(_fmt(x, nd) for x in v)
    if isinstance(v, float):
        return f"{v:.{nd}g}" if abs(v) < 1e-3 or abs(v) >= 1e5 else f"{v:.{nd}f}".rstrip("0").rstrip(".")
    return "unknown" if v is None else str(v)


def format_summary(info: dict) -> str:
    """The human-readable summary, one item per line."""
    lines = [f"file: {info['file']}", f"format: {info['format']}", f"particles: {info['particles']}",
             f"images: {info['images']}", f"box (px): {_fmt(info['box_px'])}",
             f"pixel size (Å): {_fmt(info['pixel_size_A'], 4)} (min / max)"]
    og = info["optics_groups"]
    lines.append(f"optics groups: {og['count']}")
    for g in og["groups"]:
        lines.append(f"  group {g['id']}{' (' + g['name'] + ')' if g['name'] else ''}: {g['particles']} particles")
    c = info["ctf"]
    if c is None:
        lines.append("CTF: none")
    else:
        lines += ["CTF:", f"  defocus U (µm): {_fmt(c['defocus_u_um'])} (min / median / max)",
                  f"  defocus V (µm): {_fmt(c['defocus_v_um'])}",
                  f"  astigmatism |U-V| (µm): {_fmt(c['astigmatism_um'])}",
                  f"  voltage (kV): {_fmt(c['voltage_kV'])}; Cs (mm): {_fmt(c['cs_mm'])}; "
                  f"amplitude contrast: {_fmt(c['amp_contrast'])}",
                  f"  phase shift: {'present' if c['phase_shift'] else 'none'}"]
    p = info["poses"]
    if p is None:
        lines.append("poses: none")
    else:
        lines += ["poses: present", f"  shifts (px): {_fmt(p['shifts_px'])} (min / max)",
                  f"  coverage: {100 * p['coverage']:.1f}% of {p['cells']} viewing-direction cells occupied",
                  f"  tilt: median {p['tilt_median_deg']:.1f}°, top views (<15°) "
                  f"{100 * p['top_views_tilt_lt_15']:.1f}%, side views (>75°) {100 * p['side_views_tilt_gt_75']:.1f}%"]
    h = info["half_sets"]
    lines.append("half sets: none" if h is None else f"half sets: {h[0]} / {h[1]}")
    if info["scale"] is not None:
        lines.append(f"per-particle scale: {_fmt(info['scale'])} (min / max)")
    if info["image_sign"] != 1:
        lines.append(f"image sign: {info['image_sign']} (applied when images are read)")
    s = info["stack"]
    if s is not None:
        lines.append(f"stack: {s['images']} images in {s['files']} file(s), box {s['box_px']} px, "
                     f"header voxel size {_fmt(s['voxel_size_A'], 4)} Å")
        if s["mean"] is None:
            lines.append(f"  first {s['first_images']} images: no finite pixel values")
        else:
            lines.append(f"  first {s['first_images']} images: mean {s['mean']:.4g}, std {s['std']:.4g}")
        if s.get("nonfinite_images"):
            lines.append(f"  WARNING: {s['nonfinite_images']} of the first {s['first_images']} images hold NaN/inf "
                         "pixels (processing jobs will refuse this stack)")
    if info.get("duplicates"):
        lines.append(f"WARNING: {info['duplicates']} duplicate particle(s) (same image and pose as an earlier row); "
                     "processing jobs refuse them: remove duplicates first")
    return "\n".join(lines)


def main(args) -> int:
    info = summarise(args.file, args.datadir)
    print(json.dumps(info, indent=2, ensure_ascii=False) if args.json else format_summary(info))
    return 0
