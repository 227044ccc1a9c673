"""Particles at the working box of 3D classification, precomputed once.

The working box ``d`` is the even box whose Nyquist frequency is closest to (and not worse than)
``target_res`` Å: ``d = 2·ceil(D·apix / target_res)`` clamped to ``[16, D]``. Images are Fourier
cropped to ``d`` (pixel size ``apix·D/d``, shifts ``shift·d/D``), transformed once, centred by
their origin shift (:func:`~cryo_napari.geometry.fourier.phase_shift_2d`) and stored with their
CTF at ``d``:

- ``images_ft``: complex64 (N, P) centred transforms of the centred particles at the P pixels
  of the centred (d, d) plane with shell index ``round(|k|) < d/2`` (``pixels``; P ≈ 0.79·d²),
- ``ctf``: float32 (N, P) RELION-sign CTF at the same pixels (ones without CTF).

Only these pixels enter likelihoods and back-projection (the corners beyond Nyquist carry no
usable signal after Fourier cropping). Memory is ``N·P·12`` bytes (≈ 123 MB for 10 000 particles at d = 32, 490 MB at d = 64). For
larger N, precompute in chunks and keep the chunks on disk as ``.npy`` memory maps; the EM loops
below only ever touch ``[i0:i1]`` slices, so chunked storage drops in without changing them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from cryo_napari.errors import InputError
from cryo_napari.geometry.ctf import calculate_ctf_2d
from cryo_napari.geometry.fourier import (
    fft_centered,
    fourier_crop_2d,
    frequency_grid_2d,
    phase_shift_2d,
    radial_frequency_2d,
)
from cryo_napari.io.particles import ParticleData


@dataclass
class WorkingSet:
    """Particles at the working box (see module docstring). Shapes: N particles, box d."""

    images_ft: torch.Tensor      # complex64 (N, P) at ``pixels``
    ctf: torch.Tensor            # float32 (N, P)
    rotations: torch.Tensor      # float32 (N, 3, 3)
    scale_input: np.ndarray      # (N,) per-particle scale from the input (cryoSPARC alpha)
    half: np.ndarray             # (N,) 0/1 half-set
    d: int                       # working box (px)
    apix: float                  # working pixel size (Å)
    D: int                       # original box (px)

    def __len__(self) -> int:
        return len(self.rotations)

    @property
    def pixels(self) -> torch.Tensor:
        """(P,) flat indices into the centred (d, d) plane of the pixels kept (shell < d/2)."""
        return pixels_within_nyquist(self.d)

    @property
    def shells(self) -> torch.Tensor:
        """(P,) integer shell index ``round(|k|)`` of the kept pixels."""
        return radial_frequency_2d(self.d).round().long().reshape(-1)[self.pixels]

    @property
    def k2(self) -> torch.Tensor:
        """(P, 2) integer frequencies (kx, ky) of the kept pixels."""
        return frequency_grid_2d(self.d).reshape(-1, 2)[self.pixels]

    @property
    def n_shells(self) -> int:
        return self.d // 2


def pixels_within_nyquist(d: int) -> torch.Tensor:
    """Flat indices of the centred (d, d) plane with ``round(|k|) < d/2``."""
    return torch.nonzero(radial_frequency_2d(d).round().reshape(-1) < d // 2).squeeze(1)


def working_box(D: int, apix: float, target_res: float | None) -> int:
    """Even box ``d ≤ D`` with Nyquist ``2·apix·D/d`` at or finer than ``target_res`` Å."""
    if target_res is None or target_res <= 2 * apix:
        return D
    d = 2 * math.ceil(D * apix / target_res)
    return int(min(D, max(16, d)))


def prepare_working_set(pdata: ParticleData, target_res: float | None, use_ctf: bool = True,
                        uninvert: bool = False, batch: int = 512, half: np.ndarray | None = None):
    """Job step: read, crop, centre and transform all particles once.

    Yields ``(done, total)`` progress tuples and returns a :class:`WorkingSet`.
    """
    if pdata.rotations is None:
        raise InputError(pdata.path, "3D classification needs poses (rlnAngleRot/Tilt/Psi, alignments3D/pose or --poses)")
    n, D = len(pdata), pdata.D
    apix0 = float(np.median(pdata.apix))
    d = working_box(D, apix0, target_res)
    ratio = d / D
    pix = pixels_within_nyquist(d)
    ft = torch.empty((n, len(pix)), dtype=torch.complex64)
    ctf = torch.ones((n, len(pix)), dtype=torch.float32)
    shifts = torch.as_tensor(pdata.shifts_px * ratio, dtype=torch.float32)
    ctf_t = pdata.ctf.as_tensor() if (use_ctf and pdata.ctf is not None) else None
    apix_w = torch.as_tensor(pdata.apix / ratio, dtype=torch.float32)
    for b in range(0, n, batch):
        ii = np.arange(b, min(n, b + batch))
        imgs = torch.as_tensor(pdata.read_images(ii))
        if not torch.isfinite(imgs).all():
            raise InputError(pdata.path, f"NaN or infinite pixel values in images {b + 1}-{b + len(ii)}")
        if uninvert:
            imgs = -imgs
        imgs = fourier_crop_2d(imgs, d)
        f = fft_centered(imgs.to(torch.complex64), 2)
        ft[ii] = phase_shift_2d(f, shifts[ii]).reshape(len(ii), -1)[:, pix]
        if ctf_t is not None:
            ctf[ii] = calculate_ctf_2d(ctf_t[ii], d, apix_w[ii]).reshape(len(ii), -1)[:, pix]
        yield int(ii[-1]) + 1, n
    if half is None:
        if pdata.half is not None and set(np.unique(pdata.half)) == {0, 1}:
            half = np.asarray(pdata.half, dtype=np.int8)
        else:
            from cryo_napari.geometry.backproject import split_halves

            half = split_halves(n)
    return WorkingSet(ft, ctf, torch.as_tensor(pdata.rotations, dtype=torch.float32),
                      np.asarray(pdata.scale, dtype=np.float64), np.asarray(half, dtype=np.int8), d, apix0 / ratio, D)
