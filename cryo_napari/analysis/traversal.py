"""Paths through latent space: along principal components, along a kNN graph, or straight lines.

Every traversal returns a :class:`Traversal`: the latent points (F, zdim) to generate maps at and,
for on-data paths, the particle each point belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cryo_napari.analysis.clustering import nearest_points
from cryo_napari.errors import InputError


@dataclass
class Traversal:
    """``z`` (F, zdim) latent points in order; ``ind`` (F,) particle indices (on-data) or None;
    ``kind`` ('pc', 'graph', 'direct'); ``info`` parameters and distances for the record."""

    z: np.ndarray
    ind: np.ndarray | None
    kind: str
    info: dict = field(default_factory=dict)


def pc_traversal(z, pc: int, n_points: int = 10, lo_pct: float = 1.0, hi_pct: float = 99.0,
                 on_data: bool = True, pca=None) -> Traversal:
    """Points along principal component ``pc`` (1-based), equally spaced between its ``lo_pct``
    and ``hi_pct`` percentiles, the other PCs at 0 (the mean).

    With ``on_data`` each point is replaced by the nearest particle's latent.
    """
    from cryo_napari.analysis.embedding import run_pca

    z = np.asarray(z, dtype=np.float32)
    pca = pca or run_pca(z)
    k = int(pc) - 1
    if not 0 <= k < pca.scores.shape[1]:
        raise InputError(None, f"PC {pc} does not exist (1..{pca.scores.shape[1]})")
    lo, hi = np.percentile(pca.scores[:, k], [lo_pct, hi_pct])
    s = np.zeros((n_points, k + 1))
    s[:, k] = np.linspace(lo, hi, n_points)
    pts = pca.to_latent(s)
    info = {"pc": int(pc), "percentiles": [lo_pct, hi_pct], "scores": s[:, k].tolist(),
            "explained_variance_ratio": float(pca.explained_variance_ratio[k]), "on_data": bool(on_data)}
    if on_data:
        ind = nearest_points(z, pts)
        return Traversal(z[ind], ind, "pc", info)
    return Traversal(pts, None, "pc", info)


def knn_graph(z, max_neighbors: int = 10, avg_neighbors: float = 5.0, max_dist: float | None = None):
    """Sparse symmetric kNN graph (N, N) of ``z`` with Euclidean edge weights.

    Each point links to at most ``max_neighbors`` nearest points closer than ``max_dist``; by
    default ``max_dist`` is chosen so that points keep ``avg_neighbors`` edges on average (as in
    cryoDRGN's graph traversal). Returns (graph as scipy.sparse.csr_matrix, max_dist used).
    """
    from scipy.sparse import csr_matrix
    from scipy.spatial import cKDTree

    z = np.asarray(z, dtype=np.float64)
    n = len(z)
    k = int(min(max_neighbors, n - 1))
    if k < 1:
        raise InputError(None, "a latent graph needs at least 2 particles")
    d, j = cKDTree(z).query(z, k=k + 1)
    d, j = d[:, 1:], j[:, 1:]  # drop self
    if max_dist is None:
        max_dist = float(np.quantile(d, min(1.0, avg_neighbors / k)))
    keep = d <= max_dist
    rows = np.repeat(np.arange(n), k)[keep.ravel()]
    g = csr_matrix((np.maximum(d[keep], 1e-12), (rows, j[keep])), shape=(n, n))
    return g.maximum(g.T).tocsr(), float(max_dist)


def graph_traversal(z, anchors, max_neighbors: int = 10, avg_neighbors: float = 5.0,
                    max_dist: float | None = None) -> Traversal:
    """Shortest path on the kNN graph of ``z`` through particle indices ``anchors`` in order.

    Every point of the path is a particle (on-data). Raises InputError when two consecutive
    anchors are not connected (raise ``max_dist`` or ``max_neighbors``).
    """
    from scipy.sparse.csgraph import dijkstra

    z = np.asarray(z, dtype=np.float32)
    anchors = [int(a) for a in anchors]
    if len(anchors) < 2:
        raise InputError(None, "a graph traversal needs at least two anchor particles")
    bad = [a for a in anchors if not 0 <= a < len(z)]
    if bad:
        raise InputError(None, f"anchor particle {bad[0]} out of range for {len(z)} particles")
    g, cut = knn_graph(z, max_neighbors, avg_neighbors, max_dist)
    path, lengths = [anchors[0]], []
    for a, b in zip(anchors[:-1], anchors[1:]):
        dist, pred = dijkstra(g, directed=False, indices=a, return_predecessors=True)
        if not np.isfinite(dist[b]):
            raise InputError(None, f"particles {a} and {b} are not connected in the latent kNN graph "
                             f"(max distance {cut:.3g}); raise --max-dist or --max-neighbors")
        seg = [b]
        while seg[-1] != a:
            seg.append(int(pred[seg[-1]]))
        path.extend(seg[::-1][1:])
        lengths.append(float(dist[b]))
    ind = np.asarray(path, dtype=np.int64)
    info = {"anchors": anchors, "max_dist": cut, "max_neighbors": int(max_neighbors),
            "segment_lengths": lengths, "straight_lengths": [float(np.linalg.norm(z[b] - z[a]))
                                                             for a, b in zip(anchors[:-1], anchors[1:])]}
    return Traversal(z[ind], ind, "graph", info)


def direct_traversal(z, a: int, b: int, n_points: int = 10, on_data: bool = False) -> Traversal:
    """Straight line from particle ``a``'s latent to particle ``b``'s in ``n_points`` steps
    (end points included); with ``on_data`` each point snaps to its nearest particle."""
    z = np.asarray(z, dtype=np.float32)
    for p in (a, b):
        if not 0 <= int(p) < len(z):
            raise InputError(None, f"particle {p} out of range for {len(z)} particles")
    t = np.linspace(0.0, 1.0, n_points)[:, None]
    pts = ((1 - t) * z[a] + t * z[b]).astype(np.float32)
    info = {"from": int(a), "to": int(b), "on_data": bool(on_data)}
    if on_data:
        ind = nearest_points(z, pts)
        return Traversal(z[ind], ind, "direct", info)
    return Traversal(pts, None, "direct", info)
