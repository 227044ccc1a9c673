"""Sketching a 2-D latent embedding by the local maxima of its density (cryoDRGN's convergence
protocol, Box 1 of Kinman et al. 2023, "UMAP local maxima").

The embedding (UMAP, or PCA when asked) of one epoch is binned into an ``n_bins`` × ``n_bins``
histogram over its bounding box, smoothed by a Gaussian of ``smooth_bins`` bins, and its strict
local maxima (each bin above all 8 neighbours) are found. While more than ``n_pruned`` remain,
the closest pair of maxima within ``radius_bins`` bins is found and the lower one dropped (greedy
pruning, so close peaks of one broad mode count once). The ``n_final`` highest are kept. Each
maximum names a fixed **set of particles**: those in its 3 × 3 bins. Following those sets
through epochs (the median latent of the set in each epoch, moved to the nearest particle's latent
so that it lies on the data) gives marker latents whose volumes can be compared epoch to epoch.

cryoDRGN passes the smoothing width in embedding units (``smooth_width`` × one bin's width) to
a filter that takes bins; here it is in bins, as the protocol describes it ("1 bin").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class Sketch:
    """Local maxima of a 2-D embedding's density.

    Attributes
    ----------
    members : (N, k) bool — particle i lies in the 3 × 3 bins around maximum j.
    peak_bins : (k, 2) int — histogram bin (x, y) of each maximum, highest first.
    peak_values : (k,) float — smoothed count at each maximum.
    centers : (k, 2) float — median embedding coordinates of each maximum's particles.
    hist, hist_smooth : (n_bins, n_bins) — counts and smoothed counts (axis 0 = x).
    x_edges, y_edges : (n_bins + 1,) — bin edges in embedding units.
    n_found : number of local maxima before pruning.
    """

    members: np.ndarray
    peak_bins: np.ndarray
    peak_values: np.ndarray
    centers: np.ndarray
    hist: np.ndarray
    hist_smooth: np.ndarray
    x_edges: np.ndarray
    y_edges: np.ndarray
    n_found: int


def local_maxima_2d(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bins strictly above all 8 neighbours (mirror at the border): (k, 2) indices and (k,) values."""
    footprint = np.ones((3, 3), bool)
    footprint[1, 1] = False
    peaks = image > ndimage.maximum_filter(image, footprint=footprint, mode="mirror")
    coords = np.argwhere(peaks)
    return coords, image[peaks]


def prune_close_maxima(coords: np.ndarray, values: np.ndarray, n_keep: int,
                       radius: float) -> tuple[np.ndarray, np.ndarray]:
    """While more than ``n_keep`` maxima remain and two lie within ``radius`` (bins), drop the lower
    of the closest such pair."""
    coords, values = np.asarray(coords), np.asarray(values, dtype=float)
    keep = list(range(len(values)))
    while len(keep) > n_keep:
        c = coords[keep].astype(float)
        d = np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1))
        d[np.tril_indices(len(keep))] = np.inf
        d[d > radius] = np.inf
        if not np.isfinite(d).any():
            break
        i, j = np.unravel_index(np.argmin(d), d.shape)
        keep.pop(j if values[keep[i]] >= values[keep[j]] else i)
    return coords[keep], values[keep]


def sketch_by_local_maxima(emb: np.ndarray, n_bins: int = 30, smooth_bins: float = 1.0, n_pruned: int = 12,
                           radius_bins: float = 5.0, n_final: int = 10) -> Sketch:
    """Sketch the (N, 2) embedding ``emb`` by the maxima of its binned density (module docstring)."""
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[1] != 2 or len(emb) < 2:
        raise ValueError(f"need an (N ≥ 2, 2) embedding, got shape {emb.shape}")
    lo, hi = emb.min(0), emb.max(0)
    hi = np.where(hi > lo, hi, lo + 1.0)
    x_edges, y_edges = np.linspace(lo[0], hi[0], n_bins + 1), np.linspace(lo[1], hi[1], n_bins + 1)
    hist, _, _ = np.histogram2d(emb[:, 0], emb[:, 1], bins=(x_edges, y_edges))
    smooth = ndimage.gaussian_filter(hist, smooth_bins) if smooth_bins > 0 else hist
    coords, values = local_maxima_2d(smooth)
    n_found = len(values)
    coords, values = prune_close_maxima(coords, values, n_pruned, radius_bins)
    order = np.argsort(-values, kind="stable")[:n_final]
    coords, values = coords[order], values[order]
    bx = np.clip(np.searchsorted(x_edges, emb[:, 0], side="right") - 1, 0, n_bins - 1)
    by = np.clip(np.searchsorted(y_edges, emb[:, 1], side="right") - 1, 0, n_bins - 1)
    members = np.stack([(np.abs(bx - cx) <= 1) & (np.abs(by - cy) <= 1) for cx, cy in coords], axis=1) \
        if len(coords) else np.zeros((len(emb), 0), bool)
    centers = np.array([np.median(emb[m], axis=0) for m in members.T]).reshape(-1, 2)
    return Sketch(members, coords, values, centers, hist, smooth, x_edges, y_edges, n_found)


def follow_marker_sets(z: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For one epoch's latents ``z`` (N, zdim) and marker sets ``members`` (N, k): the on-data marker
    latents (k, zdim) — the particle latent nearest each set's median latent — and those particles'
    indices (k,)."""
    z = np.asarray(z, dtype=np.float64)
    med = np.array([np.median(z[m], axis=0) for m in members.T]).reshape(-1, z.shape[1])
    ind = np.array([int(np.argmin(((z - m) ** 2).sum(1))) for m in med], dtype=int)
    return z[ind].astype(np.float32), ind
