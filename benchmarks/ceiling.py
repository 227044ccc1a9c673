"""Bayes ceilings of the benchmarks: how well any method could do on simulated images, given the
true maps. Used by class3d_bench.py, flex_hinge.py and vae_quality.py (run by hand)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def oracle_loglik(star, maps, states, target_res) -> np.ndarray:
    """Log-likelihood (n, K) of each image under each ground-truth map (K, D, D, D) at the working
    box of ``target_res``: the class3d E-step with noise per shell estimated from the true
    assignments ``states`` (n,). Any classifier or latent of these images is bounded by it."""
    from cryo_napari.geometry.fourier import fourier_crop_3d_for_projection
    from cryo_napari.io.particles import load_particles
    from cryo_napari.jobs.protocol import run_to_end
    from cryo_napari.methods.class3d.data import prepare_working_set
    from cryo_napari.methods.class3d.em import e_step, noise_from_estep

    ws = run_to_end(prepare_working_set(load_particles(star), target_res))
    maps = torch.stack([fourier_crop_3d_for_projection(torch.as_tensor(m, dtype=torch.float32), ws.d) for m in maps])
    K, n = len(maps), len(ws)
    lp, sc = np.full(K, -np.log(K)), np.ones(n)
    s2 = noise_from_estep(e_step(ws, maps, lp, np.ones(ws.d // 2), sc, 0.0, False, post_given=np.eye(K)[states]))
    return e_step(ws, maps, lp, s2, sc, 0.0, False).loglik


def subset_loglik(star, maps, states, target_res: float, n: int) -> np.ndarray:
    """:func:`oracle_loglik` on the first ``n`` particles of ``star`` (n, K)."""
    import starfile

    if n >= len(states):
        return oracle_loglik(star, maps, states, target_res)
    df = starfile.read(star, always_dict=True)
    df["particles"] = df["particles"].iloc[:n]
    sub = Path(star).with_name(".ceiling_subset.star")  # beside it: image paths are relative to it
    starfile.write(df, sub)
    try:
        return oracle_loglik(sub, maps, states[:n], target_res)
    finally:
        sub.unlink(missing_ok=True)


def ceiling_ari(star, maps, states, target_res: float, n: int = 10**9) -> float:
    """ARI of the Bayes classifier that knows the true maps (arg max of :func:`oracle_loglik`).
    No classification of these images can do better on average; it measures how separable the
    states are at this SNR, independent of any EM or network."""
    from sklearn.metrics import adjusted_rand_score

    lab = subset_loglik(star, maps, states, target_res, n).argmax(1)
    return float(adjusted_rand_score(states[: len(lab)], lab))


def ceiling_rho(star, maps, states, target_res: float, n: int = 1000) -> dict:
    """Bayes ceiling of a latent's |Spearman ρ| with the true frame of a continuous series: for the
    first ``n`` particles, the posterior over the K true maps (flat prior) and the ρ of its mean
    frame, and of the maximum-likelihood frame, with the true frame."""
    from scipy.stats import spearmanr

    ll = subset_loglik(star, maps, states, target_res, n)
    post = np.exp(ll - ll.max(1, keepdims=True))
    post /= post.sum(1, keepdims=True)
    s = states[: len(ll)]
    return {"n": int(len(ll)), "rho_posterior_mean": float(abs(spearmanr(post @ np.arange(len(maps)), s).statistic)),
            "rho_max_likelihood": float(abs(spearmanr(ll.argmax(1), s).statistic))}
