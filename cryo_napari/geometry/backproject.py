"""Direct Fourier back-projection with CTF (Wiener-style), batched.

``V̂ = Σ CTF·X̂ / (Σ CTF² + λ)`` accumulated by trilinear splatting, then the ``sinc²`` gridding
correction in real space. Two accumulators can be kept for half-maps.
"""

from __future__ import annotations

import numpy as np
import torch

from cryo_napari.geometry.ctf import calculate_ctf_2d
from cryo_napari.geometry.fourier import (
    fft_centered,
    ifft_centered,
    insert_fourier_slices,
    phase_shift_2d,
    trilinear_gridding_correction,
)


class Backprojector:
    """Accumulates CTF-weighted central slices into a (D, D, D) Fourier volume.

    Parameters
    ----------
    D : box (pixels, even).
    device : torch device.
    """

    def __init__(self, D: int, device=None):
        self.D = D
        self.device = device
        self.data = torch.zeros((D, D, D), dtype=torch.complex64, device=device)
        self.weight = torch.zeros((D, D, D), dtype=torch.float32, device=device)
        self.count = 0

    def add_images(self, images: torch.Tensor, rotations: torch.Tensor, shifts_px: torch.Tensor,
                   ctf_params: torch.Tensor | None, apix, weights: torch.Tensor | None = None,
                   scale: torch.Tensor | None = None) -> None:
        """Insert a batch.

        images : (N, D, D) real images (particle contrast positive, i.e. already un-inverted).
        rotations : (N, 3, 3). shifts_px : (N, 2) origin shifts in pixels (RELION ``rlnOriginX/Y``
            convention: translating the image by +shift centres the particle).
        ctf_params : (N, 8) or None (no CTF). apix : Å/px, scalar or (N,).
        weights : optional (N,) per-particle weights (e.g. class posteriors).
        scale : optional (N,) per-particle amplitude scale (cryoSPARC alpha): the model is α·CTF.
        """
        D = self.D
        dev = self.device
        ft = fft_centered(images.to(device=dev, dtype=torch.float32).to(torch.complex64), 2)
        ft = phase_shift_2d(ft, shifts_px.to(dev))  # centre the particle
        if ctf_params is not None:
            ctf = calculate_ctf_2d(ctf_params.to(dev), D, apix, device=dev)
        else:
            ctf = torch.ones((len(images), D, D), device=dev)
        if scale is not None:
            ctf = ctf * scale.to(device=dev, dtype=torch.float32)[:, None, None]
        if weights is not None:
            w = weights.to(device=dev, dtype=torch.float32)[:, None, None]
        else:
            w = 1.0
        insert_fourier_slices(ft * ctf * w, ctf * ctf * w, rotations.to(dev), self.data, self.weight)
        self.count += len(images)

    def reconstruct(self, wiener: float | None = None) -> torch.Tensor:
        """Real-space map (D, D, D) float32 from the accumulated slices.

        ``wiener`` is λ added to the weights; the default is 1 % of the mean weight in the
        low-frequency half of the box (robust for 10²–10⁶ particles).
        """
        D = self.D
        if wiener is None:
            r = D // 4
            c = D // 2
            core = self.weight[c - r : c + r, c - r : c + r, c - r : c + r]
            wiener = float(core.mean()) * 0.01 + 1e-6
        vol_ft = self.data / (self.weight + wiener)
        # Zero the corners beyond Nyquist, which receive only partial coverage.
        k = torch.arange(D, device=self.device, dtype=torch.float32) - D // 2
        kr = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
        vol_ft = vol_ft * (kr <= D // 2)
        vol = ifft_centered(vol_ft, 3).real
        return (vol / trilinear_gridding_correction(D, self.device)).to(torch.float32)


def split_halves(n: int, seed: int = 0) -> np.ndarray:
    """Random half-set assignment (0/1) for ``n`` particles, balanced, reproducible."""
    rng = np.random.default_rng(seed)
    halves = np.zeros(n, dtype=np.int8)
    halves[rng.permutation(n)[: n // 2]] = 1
    return halves
