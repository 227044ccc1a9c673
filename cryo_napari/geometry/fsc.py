"""Fourier shell correlation and resolution estimates.

Shells are integer-radius shells of a centred transform, ``k = 0 … D/2`` in cycles/box; the
frequency of shell ``k`` is ``k / D`` cycles/pixel (``k / (D·apix)`` Å⁻¹).
"""

from __future__ import annotations

import numpy as np
import torch

from cryo_napari.geometry.fourier import fft_centered


def shell_index_3d(D: int, device=None) -> torch.Tensor:
    """Integer shell radius of each voxel of a centred (D, D, D) transform (rounded)."""
    k = torch.arange(D, device=device, dtype=torch.float32) - D // 2
    r = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    return torch.round(r).long()


def fsc(vol1, vol2) -> np.ndarray:
    """FSC between two real (D, D, D) maps, shells 0 … D/2 → array of D/2 + 1 values."""
    v1 = torch.as_tensor(np.array(vol1, dtype=np.float64))
    v2 = torch.as_tensor(np.array(vol2, dtype=np.float64))
    if v1.shape != v2.shape or v1.ndim != 3:
        raise ValueError(f"FSC needs two maps of one cubic shape, got {tuple(v1.shape)} and {tuple(v2.shape)}")
    D = v1.shape[-1]
    f1, f2 = fft_centered(v1.to(torch.complex128), 3), fft_centered(v2.to(torch.complex128), 3)
    shells = shell_index_3d(D).reshape(-1)
    n = D // 2 + 1
    keep = shells < n
    s = shells[keep]
    num = torch.zeros(n, dtype=torch.float64).index_add_(0, s, (f1 * f2.conj()).real.reshape(-1)[keep])
    p1 = torch.zeros(n, dtype=torch.float64).index_add_(0, s, f1.abs().square().reshape(-1)[keep])
    p2 = torch.zeros(n, dtype=torch.float64).index_add_(0, s, f2.abs().square().reshape(-1)[keep])
    return (num / torch.sqrt(p1 * p2).clamp_min(1e-30)).numpy()


def fsc_frequencies(D: int) -> np.ndarray:
    """Shell frequencies in cycles/pixel, 0 … 0.5 (D/2 + 1 values)."""
    return np.arange(D // 2 + 1) / D


def resolution_at(curve: np.ndarray, D: int, apix: float, threshold: float = 0.143) -> float:
    """Resolution (Å) where the FSC first drops below ``threshold`` (linear interpolation).

    Returns ``2·apix`` (Nyquist) when it never drops.
    """
    freqs = fsc_frequencies(D)
    below = np.nonzero(curve[1:] < threshold)[0]
    if len(below) == 0:
        return 2 * apix
    i = below[0] + 1
    f0, f1, c0, c1 = freqs[i - 1], freqs[i], curve[i - 1], curve[i]
    f = f0 + (c0 - threshold) / (c0 - c1) * (f1 - f0) if c0 != c1 else f1
    return float(apix / max(f, 1e-9))


def fsc_auc(curve: np.ndarray) -> float:
    """Area under the FSC over [0, 0.5] cycles/pixel (CryoBench's per-image FSC AUC)."""
    D = 2 * (len(curve) - 1)
    return float(np.trapezoid(curve, fsc_frequencies(D)))
