"""Lazy particle image access: ``N@stack.mrcs`` references, ``.txt`` lists of stacks, plain stacks.

An :class:`ImageSource` maps particle ``i`` → (stack file, image index) and reads batches from
memory-mapped stacks, so a million-particle dataset costs only its index in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryo_napari.errors import InputError
from cryo_napari.io.mrc import read_header, read_mrc


def resolve_stack_path(name: str, base_dir: Path, datadir: Path | None, metadata: Path) -> Path:
    """Find a stack named in a metadata file.

    Tried in order: absolute path; ``datadir/name``; ``datadir/basename``; ``base_dir/name``;
    ``base_dir/basename``; ``name`` relative to the working directory (RELION resolves image
    names from its project directory). cryoSPARC's leading ``>`` is stripped.
    """
    name = name.lstrip(">")
    p = Path(name)
    candidates = []
    if p.is_absolute():
        candidates.append(p)
    if datadir is not None:
        candidates += [Path(datadir) / name, Path(datadir) / p.name]
    candidates += [base_dir / name, base_dir / p.name, Path.cwd() / name]
    for c in candidates:
        if c.exists():
            return c
    where = f" (looked in {datadir} and {base_dir})" if datadir else f" (looked in {base_dir}; pass --datadir)"
    raise InputError(metadata, f"image stack '{name}' not found{where}")


class ImageSource:
    """Images of N particles held in one or more MRC stacks.

    Parameters
    ----------
    files : list of stack paths.
    file_index : (N,) int, which file each particle is in.
    image_index : (N,) int, 0-based image index inside that file.
    metadata : the file that named the images (for error messages).
    """

    def __init__(self, files, file_index, image_index, metadata=None):
        self.files = [Path(f) for f in files]
        self.file_index = np.asarray(file_index, dtype=np.int64)
        self.image_index = np.asarray(image_index, dtype=np.int64)
        self.metadata = Path(metadata) if metadata is not None else self.files[0]
        self._maps: dict[int, np.ndarray] = {}
        self.apix_header = 1.0
        self.D = self._check_files()

    def _check_files(self) -> int:
        box = None
        counts = np.bincount(self.file_index, minlength=len(self.files)) if len(self.file_index) else []
        for i, f in enumerate(self.files):
            if len(counts) and counts[i] == 0:
                continue
            h = read_header(f)
            n, ny, nx = h["shape"]
            if ny != nx:
                raise InputError(f, f"images are {nx}x{ny}; square images are required")
            if box is None:
                box, self.apix_header = nx, h["apix"]
            elif nx != box:
                raise InputError(f, f"box {nx} differs from {box} in {self.files[0].name}")
            mine = self.image_index[self.file_index == i]
            if len(mine) and (mine.max() >= n or mine.min() < 0):
                raise InputError(self.metadata, f"refers to image {mine.max() + 1} of {f.name}, which holds only {n} images")
        if box is None:
            raise InputError(self.metadata, "no particles")
        return box

    @classmethod
    def from_stack(cls, path) -> "ImageSource":
        """All images of one ``.mrcs`` stack, or of every stack listed in a ``.txt`` file."""
        path = Path(path)
        if not path.exists():
            raise InputError(path, "file not found")
        if path.suffix.lower() == ".txt":
            try:
                names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
            except (UnicodeDecodeError, OSError):
                raise InputError(path, "not a text list of stack files") from None
            if not names:
                raise InputError(path, "empty list of stacks")
            files = [resolve_stack_path(n, path.parent, None, path) for n in names]
        else:
            files = [path]
        fi, ii = [], []
        for k, f in enumerate(files):
            h = read_header(f)
            if not h["is_stack"] and h["shape"][0] > 1:
                raise InputError(f, f"is a {h['shape'][2]}³ volume, not a stack of images (name it .mrcs if it is a stack)")
            n = h["shape"][0]
            fi.append(np.full(n, k))
            ii.append(np.arange(n))
        return cls(files, np.concatenate(fi), np.concatenate(ii), metadata=path)

    @classmethod
    def from_references(cls, refs, base_dir, datadir=None, metadata=None) -> "ImageSource":
        """From RELION ``index@file`` strings (1-based index)."""
        refs = np.asarray(refs).astype(str)
        split = np.char.partition(refs, "@")
        bad = split[:, 1] != "@"
        if bad.any():
            raise InputError(metadata, f"image name '{refs[bad][0]}' is not of the form N@stack.mrcs")
        try:
            idx = split[:, 0].astype(np.int64) - 1
        except ValueError:
            raise InputError(metadata, "image names must start with an integer index (N@stack.mrcs)") from None
        names, inverse = np.unique(split[:, 2], return_inverse=True)
        files = [resolve_stack_path(n, Path(base_dir), datadir, metadata) for n in names]
        return cls(files, inverse, idx, metadata=metadata)

    def __len__(self) -> int:
        return len(self.file_index)

    def _map(self, k: int) -> np.ndarray:
        if k not in self._maps:
            self._maps[k] = read_mrc(self.files[k], mmap=True)[0]
        return self._maps[k]

    def release(self) -> None:
        """Unmap the stacks (reopened on the next read), returning their cached pages' residency.

        Pages of a memory map that were read stay counted in the process's resident memory until
        unmapped; long lazy passes over a big stack call this now and then to keep memory bounded.
        """
        self._maps.clear()

    def read(self, ind=None) -> np.ndarray:
        """Images ``ind`` (default all) as float32 (n, D, D), in the order of ``ind``."""
        ind = np.arange(len(self)) if ind is None else np.atleast_1d(np.asarray(ind))
        out = np.empty((len(ind), self.D, self.D), dtype=np.float32)
        fi = self.file_index[ind]
        for k in np.unique(fi):
            sel = np.nonzero(fi == k)[0]
            src = self.image_index[ind[sel]]
            order = np.argsort(src)
            out[sel[order]] = self._map(int(k))[src[order]]
        return out

    def subset(self, ind) -> "ImageSource":
        """A source over particles ``ind`` only (shares the open stacks)."""
        new = object.__new__(ImageSource)
        new.files, new.metadata, new._maps = self.files, self.metadata, self._maps
        new.file_index, new.image_index = self.file_index[ind], self.image_index[ind]
        new.D, new.apix_header = self.D, self.apix_header
        return new
