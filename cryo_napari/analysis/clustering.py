"""Partitions of latent space: k-means with on-data centres, and Gaussian mixtures.

"On-data" centres are the particles nearest each cluster centre, so that volumes are generated at
latent points the encoder actually produced (as cryoDRGN's ``analyze`` does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Clustering:
    """``labels`` (N,) int cluster of each particle; ``centers`` (K, zdim) cluster centres;
    ``center_ind`` (K,) index of the particle nearest each centre (on-data); ``counts`` (K,)."""

    labels: np.ndarray
    centers: np.ndarray
    center_ind: np.ndarray
    counts: np.ndarray
    method: str = "kmeans"


def nearest_points(z, points) -> np.ndarray:
    """Index (M,) of the row of ``z`` (N, d) nearest each of ``points`` (M, d) (Euclidean)."""
    from scipy.spatial import cKDTree

    z = np.asarray(z, dtype=np.float64)
    _, ind = cKDTree(z).query(np.atleast_2d(np.asarray(points, dtype=np.float64)), k=1)
    return np.asarray(ind, dtype=np.int64)


def kmeans(z, k: int = 20, seed: int = 0, on_data: bool = True) -> Clustering:
    """k-means of ``z`` (N, zdim) into ``k`` clusters (scikit-learn, ``n_init=5``).

    With ``on_data`` the returned ``centers`` are the latents of the nearest particles
    (``center_ind``); otherwise the Euclidean means.
    """
    from sklearn.cluster import KMeans

    z = np.asarray(z, dtype=np.float32)
    k = int(min(k, len(z)))
    km = KMeans(n_clusters=k, n_init=5, random_state=seed).fit(z)
    ind = nearest_points(z, km.cluster_centers_)
    centers = z[ind] if on_data else km.cluster_centers_.astype(np.float32)
    labels = km.labels_.astype(np.int64)
    return Clustering(labels, centers, ind, np.bincount(labels, minlength=k), "kmeans")


def gmm(z, k: int = 20, seed: int = 0, covariance_type: str = "full") -> Clustering:
    """Gaussian mixture of ``k`` components on ``z`` (N, zdim); labels are the most probable
    component, centres the component means replaced by their nearest particles."""
    from sklearn.mixture import GaussianMixture

    z = np.asarray(z, dtype=np.float32)
    k = int(min(k, len(z)))
    gm = GaussianMixture(n_components=k, covariance_type=covariance_type, random_state=seed, n_init=2).fit(z)
    labels = gm.predict(z).astype(np.int64)
    ind = nearest_points(z, gm.means_)
    return Clustering(labels, z[ind], ind, np.bincount(labels, minlength=k), "gmm")
