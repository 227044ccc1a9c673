"""PNG plots of 2-D latent embeddings (matplotlib, Agg backend; no GUI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    from cryo_napari.jobs.atomic import atomic_path

    plt = _plt()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


def scatter_by_cluster(xy, labels, path, xlabel: str, ylabel: str, title: str = "", centers_ind=None,
                       max_points: int = 200_000, seed: int = 0) -> Path:
    """Scatter (N, 2) points coloured by cluster label (N,), centres (particle indices) labelled."""
    plt = _plt()
    xy = np.asarray(xy)
    labels = np.asarray(labels)
    sel = np.arange(len(xy))
    if len(xy) > max_points:
        sel = np.sort(np.random.default_rng(seed).choice(len(xy), max_points, replace=False))
    fig, ax = plt.subplots(figsize=(5.5, 5))
    k = int(labels.max()) + 1
    ax.scatter(xy[sel, 0], xy[sel, 1], c=labels[sel], cmap="tab20" if k <= 20 else "nipy_spectral", s=2,
               alpha=0.5, linewidths=0, rasterized=True)
    if centers_ind is not None:
        for i, c in enumerate(centers_ind):
            ax.scatter(xy[c, 0], xy[c, 1], c="k", s=14, marker="x")
            ax.annotate(str(i), xy[c], fontsize=7, xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"{len(xy)} particles, {k} clusters", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def density(xy, path, xlabel: str, ylabel: str, title: str = "") -> Path:
    """Hexbin density (log counts) of (N, 2) points."""
    plt = _plt()
    xy = np.asarray(xy)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    hb = ax.hexbin(xy[:, 0], xy[:, 1], gridsize=60, bins="log", cmap="magma_r", mincnt=1)
    fig.colorbar(hb, ax=ax, label="particles (log)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"{len(xy)} particles", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def explained_variance(ratio, path) -> Path:
    """Bar plot of the PCA explained-variance ratio (fractions)."""
    plt = _plt()
    ratio = np.asarray(ratio)
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.bar(np.arange(1, len(ratio) + 1), 100 * ratio)
    ax.set_xlabel("PC")
    ax.set_ylabel("explained variance (%)")
    fig.tight_layout()
    return _save(fig, path)
