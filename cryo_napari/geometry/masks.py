"""Real-space masks and windows (all in pixels unless stated)."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage


def soft_spherical_mask_3d(D: int, radius_px: float, soft_px: float = 3.0) -> np.ndarray:
    """Sphere of ``radius_px`` about the box centre with a raised-cosine edge, (D, D, D) float32."""
    k = np.arange(D) - D // 2
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    return _raised_cosine(r, radius_px, soft_px).astype(np.float32)


def circular_window_2d(D: int, inner_frac: float = 0.85, outer_frac: float = 0.99) -> torch.Tensor:
    """cryoDRGN's real-space window: 1 inside ``inner_frac·D/2``, cosine to 0 at ``outer_frac·D/2``."""
    k = torch.arange(D, dtype=torch.float32) - D // 2
    r = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2) / (D / 2)
    t = ((r - inner_frac) / (outer_frac - inner_frac)).clamp(0, 1)
    return 0.5 * (1 + torch.cos(math.pi * t))


def threshold_mask_3d(vol: np.ndarray, threshold: float, dilate_px: float = 2.0,
                      soft_px: float = 3.0) -> np.ndarray:
    """Binary mask ``vol > threshold``, dilated by ``dilate_px``, then a soft edge of ``soft_px``.

    Returns float32 (D, D, D) in [0, 1].
    """
    binary = np.asarray(vol) > threshold
    if not binary.any():
        raise ValueError(f"no voxel above threshold {threshold:g}")
    # distance (px) of each voxel from the binary region
    dist = ndimage.distance_transform_edt(~binary)
    return _raised_cosine(dist, dilate_px, soft_px).astype(np.float32)


def _raised_cosine(r: np.ndarray, edge: float, soft: float) -> np.ndarray:
    if soft <= 0:
        return (r <= edge).astype(np.float64)
    t = np.clip((r - edge) / soft, 0, 1)
    return 0.5 * (1 + np.cos(np.pi * t))
