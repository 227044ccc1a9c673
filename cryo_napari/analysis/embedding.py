"""2-D views of latent space: PCA (scikit-learn) and UMAP (umap-learn, imported lazily).

UMAP on more than ``max_fit`` points (default 100,000) is fit on a random subsample and the rest
is placed with ``transform``; this keeps 1M-particle runs tractable on a few cores and is logged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("cryo_napari")


@dataclass
class PCAResult:
    """PCA of latents: ``scores`` (N, k) coordinates, ``components`` (k, zdim), ``mean`` (zdim,),
    ``explained_variance_ratio`` (k,) fractions of the total variance."""

    scores: np.ndarray
    components: np.ndarray
    mean: np.ndarray
    explained_variance_ratio: np.ndarray

    def to_latent(self, scores) -> np.ndarray:
        """Latent points (M, zdim) for PC coordinates (M, k') (k' ≤ k; missing PCs at 0)."""
        s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
        return (self.mean + s @ self.components[: s.shape[1]]).astype(np.float32)


def run_pca(z, n_components: int | None = None) -> PCAResult:
    """PCA of ``z`` (N, zdim) with up to ``n_components`` (default: all zdim) components."""
    from sklearn.decomposition import PCA

    z = np.asarray(z, dtype=np.float64)
    k = min(n_components or z.shape[1], z.shape[1], len(z))
    pca = PCA(n_components=k).fit(z)
    return PCAResult(pca.transform(z).astype(np.float32), pca.components_, pca.mean_,
                     pca.explained_variance_ratio_)


def run_umap(z, max_fit: int = 100_000, n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0,
             messages: list | None = None) -> np.ndarray:
    """2-D UMAP embedding (N, 2) float32 of ``z`` (N, zdim).

    Above ``max_fit`` points the model is fit on a random subsample of ``max_fit`` and all points
    are placed by ``transform`` (a note is logged and appended to ``messages``).
    """
    try:
        import umap
    except ImportError as exc:  # pragma: no cover - dependency
        raise ImportError("UMAP needs umap-learn: pip install umap-learn (or use --skip-umap)") from exc
    z = np.asarray(z, dtype=np.float32)
    n = len(z)
    t0 = time.time()
    reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, max(2, n - 1)), min_dist=min_dist,
                        random_state=seed, low_memory=True, n_jobs=1)  # a seed forces 1 job anyway
    if n > max_fit:
        rng = np.random.default_rng(seed)
        sub = np.sort(rng.choice(n, max_fit, replace=False))
        note = f"UMAP: {n} points > {max_fit}: fit on a random subsample of {max_fit}, the rest placed by transform"
        log.info(note)
        if messages is not None:
            messages.append(note)
        reducer.fit(z[sub])
        emb = np.empty((n, 2), dtype=np.float32)
        emb[sub] = reducer.embedding_
        rest = np.setdiff1d(np.arange(n), sub)
        for start in range(0, len(rest), 200_000):
            chunk = rest[start:start + 200_000]
            emb[chunk] = reducer.transform(z[chunk])
    else:
        emb = reducer.fit_transform(z).astype(np.float32)
    log.info("UMAP of %d points in %.0f s", n, time.time() - t0)
    return emb
