"""MRC / MRCS reading and writing (mrcfile), with voxel size and clear errors.

Volumes are returned as float32 ``[z, y, x]`` arrays; stacks as ``[n, y, x]``. Writes are atomic
(temporary file in the same directory, then rename).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import mrcfile
import numpy as np

from cryo_napari.errors import InputError
from cryo_napari.jobs.atomic import atomic_path


def _open(path: Path, mmap: bool):
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if mmap:
                return mrcfile.mmap(path, mode="r", permissive=True)
            return mrcfile.open(path, mode="r", permissive=True)
    except Exception as exc:  # mrcfile raises ValueError/OSError for broken files
        raise InputError(path, f"not a readable MRC file ({exc})") from None


def _check(path: Path, mrc) -> None:
    if mrc.data is None:
        raise InputError(path, "not an MRC file, or its data block is truncated (header size does not match the file)")
    expected = int(mrc.header.nx) * int(mrc.header.ny) * int(mrc.header.nz)
    if mrc.data.size != expected:
        raise InputError(path, f"truncated: header says {mrc.header.nx}x{mrc.header.ny}x{mrc.header.nz} values, file holds {mrc.data.size}")
    if mrc.data.dtype.kind == "c":
        raise InputError(path, f"MRC mode {int(mrc.header.mode)} holds complex (Fourier-space) values; "
                               "real-space images or maps are required")
    if mrc.data.dtype.kind not in "fiu":
        raise InputError(path, f"unsupported MRC mode {int(mrc.header.mode)}")


def voxel_size_of(mrc) -> float:
    """Voxel size (Å) from the header, 1.0 when the header holds 0."""
    vs = float(mrc.voxel_size.x)
    return vs if vs > 0 else 1.0


def read_mrc(path, mmap: bool = False) -> tuple[np.ndarray, float]:
    """Read a map or stack → (float32 array [z|n, y, x], voxel size Å).

    With ``mmap=True`` the array is a read-only memory map (no copy, native dtype).
    """
    path = Path(path)
    mrc = _open(path, mmap)
    _check(path, mrc)
    apix = voxel_size_of(mrc)
    if mmap:
        data = mrc.data
        if data.ndim == 2:
            data = data[None]
        return data, apix
    data = np.asarray(mrc.data, dtype=np.float32)
    if data.ndim == 2:
        data = data[None]
    mrc.close()
    if not np.isfinite(data).all():
        raise InputError(path, "contains NaN or infinite values")
    return data, apix


def read_header(path) -> dict:
    """Shape, voxel size, mode and whether the file is a stack of images (ispg 0 / .mrcs) or a volume."""
    path = Path(path)
    mrc = _open(path, mmap=True)
    try:
        _check(path, mrc)
        nx, ny, nz = int(mrc.header.nx), int(mrc.header.ny), int(mrc.header.nz)
        ispg = int(mrc.header.ispg)
        suffix = path.suffix.lower()
        if suffix == ".mrcs":
            is_stack = True
        elif suffix == ".map":
            is_stack = False
        else:  # .mrc: the header decides (space group 0 = image stack), non-cubic = stack
            is_stack = nz > 1 and (ispg == 0 or nz != nx)
        return {"shape": (nz, ny, nx), "apix": voxel_size_of(mrc), "mode": int(mrc.header.mode),
                "is_stack": bool(is_stack), "ispg": ispg}
    finally:
        mrc.close()


def write_mrc(path, data: np.ndarray, apix: float = 1.0, is_stack: bool | None = None) -> Path:
    """Write float32 ``data`` with voxel size ``apix`` (Å) atomically; returns the path.

    ``is_stack`` (default: ``path`` ends in ``.mrcs``) sets the header space group (0 = image
    stack, 1 = volume) so readers can tell them apart.
    """
    path = Path(path)
    arr = np.ascontiguousarray(np.asarray(data, dtype=np.float32))
    if is_stack is None:
        is_stack = path.suffix.lower() == ".mrcs"
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(arr)
            if is_stack:
                mrc.set_image_stack()
            else:
                mrc.set_volume()
            mrc.voxel_size = apix
            mrc.update_header_stats()
    return path
