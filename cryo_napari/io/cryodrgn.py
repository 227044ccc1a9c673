"""cryoDRGN pickles: ``poses.pkl`` (rot (N,3,3), trans (N,2) as a fraction of the box),
``ctf.pkl`` ((N, 9): D, Apix, dfU Å, dfV Å, dfAng °, kV, Cs mm, w, phase shift °),
``z.pkl`` ((N, zdim) float32) and index pkls (1-D integer array)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from cryo_napari.errors import InputError
from cryo_napari.geometry.ctf import CTFParams
from cryo_napari.jobs.atomic import atomic_path


def _load(path):
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except Exception as exc:
        raise InputError(path, f"not a readable pickle ({exc})") from None


def _dump(path, obj) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            pickle.dump(obj, f)
    return path


def read_poses_pkl(path, D: int) -> tuple[np.ndarray, np.ndarray]:
    """→ (rotations (N,3,3), shifts in pixels (N,2)). A rotations-only pkl gives zero shifts."""
    obj = _load(path)
    if isinstance(obj, (tuple, list)):
        rot = np.asarray(obj[0], dtype=np.float64)
        trans = np.asarray(obj[1], dtype=np.float64) * D if len(obj) > 1 else np.zeros((len(rot), 2))
    else:
        rot = np.asarray(obj, dtype=np.float64)
        trans = np.zeros((len(rot), 2))
    if rot.ndim != 3 or rot.shape[1:] != (3, 3):
        raise InputError(path, f"rotations must be (N, 3, 3), got {rot.shape}")
    if trans.shape != (len(rot), 2):
        raise InputError(path, f"translations must be (N, 2), got {trans.shape}")
    if not (np.isfinite(rot).all() and np.isfinite(trans).all()):
        raise InputError(path, "contains NaN or infinite pose values")
    return rot, trans


def write_poses_pkl(path, rotations, shifts_px, D: int) -> Path:
    """Write cryoDRGN ``(rot, trans/D)``."""
    return _dump(path, (np.asarray(rotations, np.float32), np.asarray(shifts_px, np.float32) / D))


def read_ctf_pkl(path) -> tuple[CTFParams, np.ndarray, np.ndarray]:
    """→ (CTFParams, box (N,), pixel size Å (N,))."""
    arr = np.asarray(_load(path), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 9:
        raise InputError(path, f"cryoDRGN ctf.pkl must be (N, 9), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError(path, "contains NaN or infinite CTF values")
    ctf = CTFParams(arr[:, 2], arr[:, 3], np.deg2rad(arr[:, 4]), arr[:, 5], arr[:, 6], arr[:, 7],
                    np.deg2rad(arr[:, 8]), 0.0)
    return ctf, arr[:, 0], arr[:, 1]


def write_ctf_pkl(path, ctf: CTFParams, D: int, apix) -> Path:
    """Write cryoDRGN's (N, 9) CTF array."""
    n = len(ctf)
    arr = np.stack([np.full(n, D, dtype=np.float64), np.broadcast_to(np.asarray(apix, np.float64), (n,)),
                    ctf.defocus_u_A, ctf.defocus_v_A, np.rad2deg(ctf.astig_angle_rad), ctf.voltage_kV,
                    ctf.cs_mm, ctf.amp_contrast, np.rad2deg(ctf.phase_shift_rad)], axis=1).astype(np.float32)
    return _dump(path, arr)


def read_z_pkl(path) -> np.ndarray:
    """Latents (N, zdim) float32."""
    z = np.asarray(_load(path), dtype=np.float32)
    if z.ndim != 2:
        raise InputError(path, f"latents must be (N, zdim), got {z.shape}")
    return z


def write_z_pkl(path, z) -> Path:
    return _dump(path, np.asarray(z, dtype=np.float32))


def read_index_pkl(path) -> np.ndarray:
    """Particle indices (1-D int array)."""
    ind = np.asarray(_load(path))
    if ind.ndim != 1 or (ind.size and ind.dtype.kind not in "iu"):
        raise InputError(path, f"an index file must hold a 1-D integer array, got {ind.dtype} {ind.shape}")
    return ind.astype(np.int64)


def write_index_pkl(path, ind) -> Path:
    return _dump(path, np.asarray(ind, dtype=np.int64))
