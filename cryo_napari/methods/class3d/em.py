"""E-step and M-step of 3D classification with fixed poses (O-EM and F-EM share them).

Model (Fourier, working box d): ``X_i = s_i·CTF_i·P_{R_i}V̂_k + n_i``, with ``n`` complex Gaussian,
independent per pixel, variance ``σ²(shell)`` (:func:`e_step` estimates it from residuals).

Log-likelihood, summed over the full centred plane (each independent frequency appears twice,
hence the ½), shells 1 … d/2−1 only (DC and corners beyond Nyquist ignored)::

    ℓ_ik = −½ Σ_pix |X_i − s_i·CTF_i·P_{R_i}V_k|² / σ²(shell) + log π_k

Class-similarity tempering (``similarity`` s ∈ [0, 1)): per particle, a temperature
``τ_i = 1 + s·std_k(ℓ_i·)`` and posteriors ``p_ik = softmax_k(ℓ_ik / τ_i)``. With s = 0 these are
the exact posteriors; s > 0 flattens them in proportion to how far apart the classes are for
that particle (so it works whatever the absolute scale of ℓ), which keeps early iterations from
locking particles into noise-driven classes. ``hard``: p_ik = 1 for the arg-max class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cryo_napari.geometry.backproject import Backprojector
from cryo_napari.geometry.fourier import fft_centered, ifft_centered, volume_to_fourier
from cryo_napari.geometry.fsc import fsc, shell_index_3d
from cryo_napari.methods.class3d.data import WorkingSet

PAD = 2


@dataclass
class EStep:
    """Result of an E-step over particles ``ind``."""

    loglik: np.ndarray        # (n, K) float64, ℓ_ik without tempering (includes log prior)
    post: np.ndarray          # (n, K) float64 tempered posteriors
    noise_power: np.ndarray   # (d/2,) Σ posterior-weighted |residual|² per shell
    noise_count: np.ndarray   # (d/2,) number of (particle, pixel) terms per shell
    scale_opt: np.ndarray     # (n,) least-squares scale against the arg-max class


def tempered_posteriors(loglik: np.ndarray, similarity: float, hard: bool) -> np.ndarray:
    """(n, K) log-likelihoods (+ log prior) → posteriors, tempered as in the module docstring."""
    ll = np.asarray(loglik, dtype=np.float64)
    if hard:
        out = np.zeros_like(ll)
        out[np.arange(len(ll)), ll.argmax(1)] = 1.0
        return out
    tau = 1.0 + similarity * ll.std(axis=1, keepdims=True)
    z = ll / tau
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def tune_similarity(loglik: np.ndarray, target_frac: float = 0.75, s_max: float = 1e3) -> float:
    """Similarity s ≥ 0 whose tempered posteriors have mean class ESS ``target_frac``·K
    (cryoSPARC's "target class ESS fraction"); bisection on log s (ESS grows with s).
    0 when the exact posteriors already reach the target; ``s_max`` if it cannot be reached."""
    K = loglik.shape[1]
    if K < 2:
        return 0.0

    def frac(s):
        p = tempered_posteriors(loglik, s, False)
        return float(np.mean(1.0 / np.sum(p * p, axis=1))) / K

    if frac(0.0) >= target_frac:
        return 0.0
    if frac(s_max) < target_frac:
        return s_max
    lo, hi = -8.0, float(np.log10(s_max))
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        if frac(10.0 ** mid) < target_frac:
            lo = mid
        else:
            hi = mid
    return float(10.0 ** hi)


def project_at(vol_ft: torch.Tensor, rotations: torch.Tensor, k2: torch.Tensor) -> torch.Tensor:
    """Central-slice samples of a padded volume transform (:func:`volume_to_fourier`, pad 2) at
    the 2-D frequencies ``k2`` (P, 2) for poses (B, 3, 3) → complex (B, P). Same trilinear
    sampling as :func:`cryo_napari.geometry.fourier.project_fourier_slices`, restricted to P pixels."""
    Pbox = vol_ft.shape[-1]
    k3 = torch.cat([k2, torch.zeros_like(k2[:, :1])], dim=-1).to(torch.float32)
    coords = torch.einsum("pi,nij->npj", k3, rotations.to(torch.float32)) * PAD
    grid = ((coords + Pbox // 2) / (Pbox - 1) * 2 - 1).reshape(1, 1, 1, -1, 3)
    planes = torch.stack([vol_ft.real, vol_ft.imag])[None]
    out = torch.nn.functional.grid_sample(planes, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    out = out.reshape(2, len(rotations), len(k2))
    return torch.complex(out[0], out[1])


def e_step(ws: WorkingSet, maps: torch.Tensor, log_prior: np.ndarray, sigma2: np.ndarray, scales: np.ndarray,
           similarity: float, hard: bool, ind: np.ndarray | None = None, post_given: np.ndarray | None = None,
           images_ft: torch.Tensor | None = None, batch: int = 256) -> EStep:
    """Likelihoods, posteriors, noise statistics and optimal scales for particles ``ind``.

    maps : (K, d, d, d) real class maps (already masked; focus-masked for focused classification).
    sigma2 : (d/2,) noise variance per shell. scales : (N,) per-particle scale used in the model.
    post_given : (n, K) posteriors to use instead of computing them (noise estimation).
    images_ft : optional (N, P) replacement for ``ws.images_ft`` (signal-subtracted images).
    """
    X_all = ws.images_ft if images_ft is None else images_ft
    ind = np.arange(len(ws)) if ind is None else np.asarray(ind)
    n, K, d = len(ind), len(maps), ws.d
    shells = ws.shells                                  # (P,)
    k2 = ws.k2
    s2 = torch.as_tensor(np.asarray(sigma2), dtype=torch.float32)
    w = torch.where(shells >= 1, 1.0 / s2[shells], torch.zeros(()))  # (P,), DC excluded
    valid_f = (shells >= 1).to(torch.float64)
    vfts = [volume_to_fourier(m, PAD) for m in maps]
    loglik = np.empty((n, K))
    post = np.empty((n, K))
    scale_opt = np.empty(n)
    npow = torch.zeros(d // 2, dtype=torch.float64)
    ncnt = torch.zeros(d // 2, dtype=torch.float64)
    lp = np.asarray(log_prior, dtype=np.float64)
    for b in range(0, n, batch):
        jj = slice(b, min(n, b + batch))
        ii = torch.as_tensor(ind[jj])
        X = X_all[ii]                                  # (B, P)
        ctf = ws.ctf[ii]                               # (B, P)
        s = torch.as_tensor(scales[ind[jj]], dtype=torch.float32)[:, None]
        R = ws.rotations[ii]
        P = torch.stack([project_at(v, R, k2) for v in vfts], dim=1)  # (B, K, P)
        CP = (ctf * s)[:, None] * P
        resid = (X[:, None] - CP).abs().square()      # (B, K, P)
        ll = -0.5 * (resid @ w).double().numpy() + lp
        loglik[jj] = ll
        p = post_given[jj] if post_given is not None else tempered_posteriors(ll, similarity, hard)
        post[jj] = p
        pw = torch.einsum("bk,bkp->p", torch.as_tensor(p, dtype=torch.float32), resid)
        npow.index_add_(0, shells, pw.double() * valid_f)
        ncnt.index_add_(0, shells, valid_f * X.shape[0])
        best = torch.as_tensor(p.argmax(1))
        cP = ctf * P[torch.arange(len(best)), best]    # (B, P)
        num = (X.conj() * cP).real @ w
        den = (cP.abs().square() @ w).clamp_min(1e-12)
        scale_opt[jj] = (num / den).double().numpy()
    return EStep(loglik, post, npow.numpy(), ncnt.numpy(), scale_opt)


def noise_from_estep(es: EStep, floor: float = 1e-8) -> np.ndarray:
    """σ²(shell) = posterior-weighted mean |residual|² per shell (shell 0 copies shell 1)."""
    s2 = es.noise_power / np.maximum(es.noise_count, 1)
    s2[0] = s2[1] if len(s2) > 1 else s2[0]
    return np.maximum(s2, floor * max(float(s2.max()), 1e-30))


class ClassAccumulator:
    """Weighted back-projection of all classes and both half-sets at once.

    Accumulator ``acc`` is (2, d³, K·3) float32: per half-set and class the real and imaginary
    parts of Σ p_ik·s_i·CTF_i·X̂_i and the weight Σ p_ik·s_i²·CTF_i², splatted trilinearly at the
    slice frequencies ``k @ R`` (the same scheme as
    :func:`cryo_napari.geometry.fourier.insert_fourier_slices`). Maps come out through
    :meth:`Backprojector.reconstruct`.
    """

    def __init__(self, d: int, K: int):
        self.d, self.K = d, K
        self.acc = torch.zeros((2, d**3, K * 3), dtype=torch.float32)

    def add(self, ws: WorkingSet, post: np.ndarray, scales: np.ndarray, ind: np.ndarray, batch: int = 256) -> None:
        """Add particles ``ind`` with posteriors ``post`` (len(ind), K) and scales (N,)."""
        ind = np.asarray(ind)
        post = np.asarray(post)
        k2 = ws.k2.to(torch.float32)
        k3 = torch.cat([k2, torch.zeros_like(k2[:, :1])], dim=-1)
        for h in (0, 1):
            sel = np.nonzero(ws.half[ind] == h)[0]
            for b in range(0, len(sel), batch):
                jj = sel[b:b + batch]
                ii = torch.as_tensor(ind[jj])
                self._splat(h, ws, ii, torch.as_tensor(post[jj], dtype=torch.float32), scales, k3)

    def _splat(self, h, ws, ii, p, scales, k3):
        d, K = self.d, self.K
        s = torch.as_tensor(scales[ii.numpy()], dtype=torch.float32)[:, None]
        c = ws.ctf[ii] * s
        cx = c * ws.images_ft[ii]
        base = torch.stack([cx.real, cx.imag, c * c], dim=-1)               # (B, P, 3)
        vals = torch.einsum("bpc,bk->bpkc", base, p).reshape(-1, K * 3)
        coords = torch.einsum("pi,nij->npj", k3, ws.rotations[ii]).reshape(-1, 3) + d // 2
        inside = ((coords >= 0) & (coords <= d - 1.0001)).all(dim=-1)
        if not bool(inside.all()):
            coords, vals = coords[inside], vals[inside]
        c0 = coords.floor()
        frac = coords - c0
        c0 = c0.long()
        acc = self.acc[h]
        for dx in (0, 1):
            fx = frac[:, 0] if dx else 1 - frac[:, 0]
            for dy in (0, 1):
                fxy = fx * (frac[:, 1] if dy else 1 - frac[:, 1])
                for dz in (0, 1):
                    f = fxy * (frac[:, 2] if dz else 1 - frac[:, 2])
                    idx = ((c0[:, 2] + dz) * d + (c0[:, 1] + dy)) * d + (c0[:, 0] + dx)
                    acc.index_add_(0, idx, vals * f[:, None])

    def _bp(self, k: int, halves) -> Backprojector:
        d = self.d
        a = self.acc[list(halves)].sum(0).reshape(d, d, d, self.K, 3)[:, :, :, k]
        bp = Backprojector(d)
        bp.data = torch.complex(a[..., 0].contiguous(), a[..., 1].contiguous())
        bp.weight = a[..., 2].contiguous()
        return bp

    def reconstruct(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, d, d, d) full maps and (K, 2, d, d, d) half-maps."""
        full = torch.stack([self._bp(k, (0, 1)).reconstruct() for k in range(self.K)])
        halves = torch.stack([torch.stack([self._bp(k, (h,)).reconstruct() for h in (0, 1)]) for k in range(self.K)])
        return full, halves


def fsc_weighting(full: torch.Tensor, half1: torch.Tensor, half2: torch.Tensor, mask: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """FSC-weighted low-pass of a (d, d, d) map: multiply shell r by ``sqrt(2F/(1+F))`` (C_ref of
    Rosenthal & Henderson 2003; 0 where F ≤ 0 and beyond the first shell where F < 0.143·½ … i.e.
    every shell after the curve first falls to ≤ 0), with F the masked half-map FSC.

    Returns (filtered map, FSC curve (d/2 + 1,)).
    """
    d = full.shape[-1]
    curve = fsc(half1.numpy() * mask, half2.numpy() * mask)
    f = np.clip(curve, 0.0, 1.0)
    nonpos = np.nonzero(curve[1:] <= 0)[0]
    if len(nonpos):
        f[nonpos[0] + 1:] = 0.0
    weight = np.sqrt(2 * f / (1 + f))
    weight[0] = 1.0
    sh = shell_index_3d(d)
    wvol = torch.zeros(sh.shape, dtype=torch.float32)
    inside = sh <= d // 2
    wvol[inside] = torch.as_tensor(weight, dtype=torch.float32)[sh[inside]]
    out = ifft_centered(fft_centered(full.to(torch.complex64), 3) * wvol, 3).real
    return out, curve
