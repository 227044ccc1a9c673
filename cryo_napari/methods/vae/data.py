"""Particle images → VAE training inputs: windowing, Fourier crop, centring, masked half lattice.

Pipeline per image (as cryoDRGN, with the translation applied to the data instead of the model):
``uninvert`` (×−1) → Fourier crop to the training box ``D`` (``-D``) → cryoDRGN's real-space
window (:func:`~cryo_napari.geometry.masks.circular_window_2d`) → centred FFT → phase shift by the
origin shift (centres the particle) → values on the *Friedel half* of the circular lattice
``|k| < D/2`` → divided by one dataset-wide normalisation (RMS of those values over ≤ 1000
particles, the RMS of the equivalent Hartley values).

In memory (default) the half-lattice values of all particles are kept, (N, M, 2) float32 — about
a quarter of the stack's size. ``lazy=True`` keeps nothing and reads each batch from the
memory-mapped stack (``ParticleData.read_images``), with one batch prefetched in a thread, and
unmaps the stack every ``RELEASE_EVERY`` images so the pages read do not accumulate in the
process's resident memory (measured: ``benchmarks/vae_lazy_memory.py``, ``docs/benchmarks_vae.md``).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from cryo_napari.errors import InputError
from cryo_napari.geometry.ctf import calculate_ctf_2d
from cryo_napari.geometry.fourier import fft_centered, fourier_crop_2d, frequency_grid_2d, phase_shift_2d
from cryo_napari.geometry.masks import circular_window_2d
from cryo_napari.io.particles import ParticleData
from cryo_napari.jobs.protocol import Progress


class HalfLattice:
    """Points ``|k| < D/2`` of a centred D×D transform with ``ky > 0`` or (``ky = 0``, ``kx ≥ 0``).

    Attributes
    ----------
    k : (M, 2) float32 (kx, ky) in cycles/box, sorted by radius (so a radius cut is a prefix).
    flat : (M,) int64 index into the flattened (D, D) transform.
    radius : (M,) float32 |k|.
    weight : (M,) 2 for points whose Friedel mate is elsewhere in the full lattice, 1 for DC.
    """

    def __init__(self, D: int):
        self.D = D
        g = frequency_grid_2d(D).reshape(-1, 2)
        r = g.norm(dim=-1)
        keep = (r < D / 2) & ((g[:, 1] > 0) | ((g[:, 1] == 0) & (g[:, 0] >= 0)))
        flat = torch.nonzero(keep)[:, 0]
        order = torch.argsort(r[flat], stable=True)
        self.flat = flat[order]
        self.k = g[self.flat].contiguous()
        self.radius = r[self.flat].contiguous()
        self.weight = torch.where(self.radius == 0, 1.0, 2.0)

    def __len__(self) -> int:
        return len(self.flat)

    @property
    def n_full(self) -> int:
        """Points of the full circular lattice (both Friedel halves)."""
        return int(self.weight.sum().item())

    def count_within(self, radius: float) -> int:
        """Number of leading points with |k| < radius (cycles/box)."""
        return int(torch.searchsorted(self.radius, torch.tensor(float(radius))).item())


class VAEData:
    """Training inputs for ``pdata`` at training box ``D`` (see the module docstring).

    Attributes: ``N``, ``D`` (training box), ``D0`` (stack box), ``apix`` (N,) Å at ``D``,
    ``shifts`` (N, 2) px at ``D``, ``rotations`` (N, 3, 3) float32 tensor, ``ctf`` (N, 8) tensor
    or None, ``lattice``, ``norm``.
    """

    RELEASE_EVERY = 256  # lazy mode unmaps the stacks after this many images (bounds resident stack pages)

    def __init__(self, pdata: ParticleData, D: int | None = None, uninvert: bool = False, lazy: bool = False,
                 use_ctf: bool = True):
        if pdata.rotations is None:
            raise InputError(pdata.path, "poses are required for VAE training (no poses in the input)")
        self.pdata = pdata
        self.N, self.D0 = len(pdata), pdata.D
        self.D = D or self.D0
        if self.D % 2 or self.D > self.D0 or self.D < 8:
            raise InputError(pdata.path, f"training box -D {self.D} must be even, ≥ 8 and ≤ the image box {self.D0}")
        self.uninvert, self.lazy = uninvert, lazy
        scale = self.D0 / self.D
        self.apix = np.asarray(pdata.apix, np.float64) * scale
        self.shifts = torch.as_tensor(pdata.shifts_px / scale, dtype=torch.float32)
        self.rotations = torch.as_tensor(pdata.rotations, dtype=torch.float32)
        self.ctf = pdata.ctf.as_tensor() if (use_ctf and pdata.ctf is not None) else None
        self.apix_t = torch.as_tensor(self.apix, dtype=torch.float32)
        self.lattice = HalfLattice(self.D)
        self.window = circular_window_2d(self.D)
        self.norm = 1.0
        self.values: torch.Tensor | None = None  # (N, M, 2) when in memory
        self._lazy_read = 0  # images read lazily since the stacks were last unmapped

    # -- preprocessing --------------------------------------------------------------------------
    def _raw_half(self, ind: np.ndarray) -> torch.Tensor:
        """Un-normalised, centred half-lattice values (B, M, 2) of particles ``ind``."""
        imgs = torch.as_tensor(self.pdata.read_images(ind))
        if not torch.isfinite(imgs).all():
            raise InputError(self.pdata.path, f"NaN or infinite pixels in particle(s) {int(ind[0])}…{int(ind[-1])}")
        if self.uninvert:
            imgs = -imgs
        if self.D != self.D0:
            imgs = fourier_crop_2d(imgs, self.D)
        ft = fft_centered(imgs * self.window, 2)
        ft = phase_shift_2d(ft, self.shifts[ind])
        ft = ft.reshape(len(ind), -1)[:, self.lattice.flat]
        return torch.view_as_real(ft).contiguous()

    def prepare(self, chunk: int = 512):
        """Job step: compute the normalisation and (unless lazy) all values. Yields Progress."""
        n_norm = min(self.N, 1000)
        sq = 0.0
        for b in range(0, n_norm, 128):  # in chunks: bounded memory at any box size
            sq += float(self._raw_half(np.arange(b, min(n_norm, b + 128))).double().square().sum())
        self.norm = math.sqrt(sq / (n_norm * len(self.lattice)))
        if not math.isfinite(self.norm) or self.norm <= 0:
            raise InputError(self.pdata.path, "images are empty (zero signal)")
        if self.lazy:
            return
        vals = torch.empty((self.N, len(self.lattice), 2), dtype=torch.float32)
        for b in range(0, self.N, chunk):
            ii = np.arange(b, min(self.N, b + chunk))
            vals[ii] = self._raw_half(ii) / self.norm
            yield Progress(int(ii[-1]) + 1, self.N, "reading particles")
        self.values = vals

    def values_of(self, ind: np.ndarray) -> torch.Tensor:
        """Normalised half-lattice values (B, M, 2)."""
        if self.values is not None:
            return self.values[torch.as_tensor(ind)]
        vals = self._raw_half(ind) / self.norm
        self._lazy_read += len(ind)
        if self._lazy_read >= self.RELEASE_EVERY and hasattr(self.pdata.images, "release"):
            self.pdata.images.release()  # bounded memory: unmap the stack's pages read so far
            self._lazy_read = 0
        return vals

    def ctf_of(self, ind: np.ndarray) -> torch.Tensor | None:
        """CTF on the half lattice (B, M) or None."""
        if self.ctf is None:
            return None
        c = calculate_ctf_2d(self.ctf[ind], self.D, self.apix_t[ind])
        return c.reshape(len(ind), -1)[:, self.lattice.flat]

    def batch(self, ind: np.ndarray) -> dict:
        """Everything one training step needs for particles ``ind`` (CPU tensors)."""
        ind = np.asarray(ind)
        return {"ind": ind, "y": self.values_of(ind), "rot": self.rotations[ind], "ctf": self.ctf_of(ind)}

    def iter_batches(self, order: np.ndarray, batch_size: int):
        """Batches in ``order`` (each sorted for read locality); lazy mode prefetches one batch."""
        chunks = [np.sort(order[b:b + batch_size]) for b in range(0, len(order), batch_size)]
        if not self.lazy:
            for c in chunks:
                yield self.batch(c)
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            fut = pool.submit(self.batch, chunks[0]) if chunks else None
            for i in range(len(chunks)):
                cur = fut.result()
                fut = pool.submit(self.batch, chunks[i + 1]) if i + 1 < len(chunks) else None
                yield cur


def encoder_input(y: torch.Tensor, ctf: torch.Tensor | None, repr: str) -> torch.Tensor:
    """Encoder input (B, enc_in) from half-lattice values (B, M, 2), phase-flipped by sign(CTF).

    ``"fourier"``: (Re, Im) of the half lattice, ``2M`` numbers. ``"hartley"``: Hartley values of
    the full lattice ``Re ∓ Im`` at ``±k`` (DC once), ``2M − 1`` numbers (cryoDRGN's input).
    """
    if ctf is not None:
        y = y * torch.sign(ctf)[..., None]
    if repr == "fourier":
        return y.reshape(len(y), -1)
    return hartley_full(y)


def hartley_full(y: torch.Tensor) -> torch.Tensor:
    """Half-lattice complex values (B, m, 2) (DC first) → Hartley values of both halves (B, 2m − 1)."""
    h_pos = y[..., 0] - y[..., 1]
    h_neg = y[..., 1:, 0] + y[..., 1:, 1]
    return torch.cat([h_pos, h_neg], dim=-1)


def encoder_width(M: int, repr: str) -> int:
    return 2 * M if repr == "fourier" else 2 * M - 1


def encoder_points(width: int, repr: str) -> int:
    """Inverse of :func:`encoder_width`: how many leading (lowest-frequency) lattice points an
    encoder of input ``width`` reads."""
    return width // 2 if repr == "fourier" else (width + 1) // 2
