"""Per-iteration diagnostics of 3D classification (definitions in docs/class3d.md) and their plot.

All functions take numpy arrays: ``post`` (N, K) posteriors (rows sum to 1), ``labels`` (N,)
hard classes, maps (K, d, d, d).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryo_napari.jobs.atomic import atomic_path

EPS = 1e-12


def class_switch_percent(labels: np.ndarray, prev: np.ndarray | None) -> float:
    """Percentage of particles whose arg-max class changed since the previous iteration
    (100 when there is none)."""
    if prev is None:
        return 100.0
    return float(100.0 * np.mean(labels != prev))


def mean_kl(post: np.ndarray, prev: np.ndarray | None) -> float | None:
    """``1/N Σ_i KL(p_i^t ‖ p_i^{t−1}) = 1/N Σ_i Σ_k p_ik^t log(p_ik^t / p_ik^{t−1})`` in nats
    (probabilities clipped at 1e-12). None for the first iteration."""
    if prev is None:
        return None
    p = np.clip(post, EPS, 1.0)
    q = np.clip(prev, EPS, 1.0)
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)))


def class_ess(post: np.ndarray) -> np.ndarray:
    """Per-particle effective number of classes ``1 / Σ_k p_ik²`` ∈ [1, K]."""
    return 1.0 / np.sum(np.asarray(post) ** 2, axis=1)


def rms_change(maps: np.ndarray, prev_maps: np.ndarray, consensus: np.ndarray, sizes: np.ndarray) -> tuple[float, np.ndarray]:
    """Relative RMS change of class maps between iterations.

    Per class ``Δ_k = sqrt(mean_voxels (V_k^t − V_k^{t−1})²) / sqrt(mean_voxels C²)`` with C the
    consensus map; returned with the class-size-weighted mean ``Σ_k (n_k/N)·Δ_k``.
    """
    ref = float(np.sqrt(np.mean(np.square(consensus)))) + EPS
    per = np.sqrt(np.mean(np.square(maps - prev_maps).reshape(len(maps), -1), axis=1)) / ref
    w = np.asarray(sizes, dtype=np.float64)
    w = w / max(w.sum(), 1)
    return float(np.sum(w * per)), per


def class_distinctness(maps: np.ndarray, consensus: np.ndarray) -> tuple[float, float]:
    """How different the class maps are from each other (the "all classes look the same" check).

    Returns ``(diff_min, corr_max)`` over all pairs a < b: ``diff_min`` is the smallest
    ``sqrt(mean (V_a − V_b)²) / sqrt(mean C²)`` (relative RMS difference, C the consensus) and
    ``corr_max`` the largest Pearson correlation of the two maps over voxels. (nan, nan) for K = 1.
    Maps should be masked the same way as the consensus.
    """
    K = len(maps)
    if K < 2:
        return float("nan"), float("nan")
    flat = np.asarray(maps, dtype=np.float64).reshape(K, -1)
    ref = float(np.sqrt(np.mean(np.square(consensus)))) + EPS
    z = flat - flat.mean(1, keepdims=True)
    z /= np.linalg.norm(z, axis=1, keepdims=True) + EPS
    corr = z @ z.T
    iu = np.triu_indices(K, 1)
    diff = np.array([np.sqrt(np.mean(np.square(flat[a] - flat[b]))) for a, b in zip(*iu)]) / ref
    return float(diff.min()), float(corr[iu].max())


def classes_look_alike(mean_ess: float, K: int, diff_min: float, ess_frac: float = 0.9,
                       diff: float = 1e-3) -> str | None:
    """A warning text when classes are not separated (None otherwise): mean class ESS above
    ``ess_frac``·K (posteriors nearly uniform: the data cannot tell the classes apart) or two
    class maps whose relative RMS difference (:func:`class_distinctness`) is below ``diff``.

    Map correlation is reported but not used here: classes differing only in a small domain
    correlate at > 0.99 while being genuinely different.
    """
    if K < 2:
        return None
    why = []
    if mean_ess > ess_frac * K:
        why.append(f"mean class ESS {mean_ess:.2f} of K={K} (particles spread over all classes)")
    if np.isfinite(diff_min) and diff_min < diff:
        why.append(f"two class maps differ by only {diff_min:.2e} of the consensus RMS")
    if not why:
        return None
    return ("classes look alike: " + "; ".join(why) + ". Try fewer classes, a focus mask on the "
            "variable region, a lower --target-res, --hard-recon, or check the poses")


def scales_all_one(scales: np.ndarray, tol: float = 1e-6) -> bool:
    """True when every per-particle scale equals 1 (i.e. scales were not applied)."""
    return bool(np.all(np.abs(np.asarray(scales) - 1.0) <= tol))


def plot_diagnostics(path, history: list[dict], ess: np.ndarray, scales: np.ndarray, K: int) -> Path:
    """PNG with class sizes, switches, RMS change, KL (per iteration) and the current ESS and
    scale histograms (red warning when all scales are 1). Atomic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [h["iteration"] for h in history]
    fig, ax = plt.subplots(2, 3, figsize=(12, 6.5))
    sizes = np.array([h["class_sizes"] for h in history])
    for k in range(sizes.shape[1]):
        ax[0, 0].plot(it, sizes[:, k], marker=".", label=f"rank {k + 1}")
    ax[0, 0].set_title("class sizes (ranked by size)")
    ax[0, 0].set_xlabel("F-EM iteration")
    if sizes.shape[1] <= 10:
        ax[0, 0].legend(fontsize=6)
    ax[0, 1].plot(it, [h["switch_pct"] for h in history], marker="o")
    ax[0, 1].set_title("class switches (%)")
    ax[0, 1].set_xlabel("F-EM iteration")
    rms = [h["rms_change"] for h in history]
    ax[0, 2].semilogy(it, np.maximum(rms, EPS), marker="o", label="RMS change")
    kl = [(i, h["mean_kl"]) for i, h in zip(it, history) if h.get("mean_kl") is not None]
    if kl:
        ax[0, 2].semilogy([a for a, _ in kl], np.maximum([b for _, b in kl], EPS), marker="s", label="mean KL (nats)")
    ax[0, 2].set_title(f"RMS density change {rms[-1]:.3e}")
    ax[0, 2].legend(fontsize=7)
    ax[1, 0].hist(ess, bins=np.linspace(1, max(K, 1.01), 30))
    ax[1, 0].set_title(f"class ESS per particle (mean {np.mean(ess):.3f})")
    ax[1, 1].plot(it, [h["mean_ess"] for h in history], marker="o", label="mean class ESS")
    cm = [(i, h["class_corr_max"]) for i, h in zip(it, history)
          if h.get("class_corr_max") is not None and np.isfinite(h["class_corr_max"])]
    if cm:
        tw = ax[1, 1].twinx()
        tw.plot([a for a, _ in cm], [b for _, b in cm], color="C3", marker="x", label="max map corr.")
        tw.set_ylabel("max class-map correlation", color="C3", fontsize=7)
    ax[1, 1].set_title("mean class ESS / max map correlation")
    ax[1, 1].set_xlabel("F-EM iteration")
    ax[1, 2].hist(scales, bins=40)
    if scales_all_one(scales):
        ax[1, 2].set_title("WARNING: all per-particle scales are 1\n(scales not applied)", color="red", fontsize=9)
    else:
        ax[1, 2].set_title(f"per-particle scales (mean {np.mean(scales):.3f}, sd {np.std(scales):.3f})")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return Path(path)
