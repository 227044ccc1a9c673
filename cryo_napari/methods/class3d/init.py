"""Initial class maps and the solvent mask.

- ``simple``: K reconstructions of disjoint random particle subsets (``subset`` particles each,
  default ``min(N // K, 1000)``), low-passed to ``init_res`` Å (cryoSPARC's default start).
- ``pca``: ``M = max(4K, 12)`` reconstructions of small random subsets (``N // M`` particles each),
  low-passed and masked, projected on their first ``min(M − 1, K + 2)`` principal components,
  clustered into K groups by k-means (10 restarts); the class maps are the cluster means.
  Different subsets hold different state mixtures, so the leading components follow the
  heterogeneity.
- ``input``: given maps, Fourier-cropped to the working box and low-passed to ``init_res``.
"""

from __future__ import annotations

import numpy as np
import torch

from cryo_napari.errors import InputError
from cryo_napari.geometry.fourier import fourier_crop_3d_for_projection, lowpass_3d
from cryo_napari.geometry.masks import threshold_mask_3d
from cryo_napari.io.mrc import read_mrc
from cryo_napari.methods.class3d.data import WorkingSet
from cryo_napari.methods.class3d.em import ClassAccumulator


def reconstruct_subsets(ws: WorkingSet, subsets: list[np.ndarray]) -> torch.Tensor:
    """(M, d, d, d) maps, one Wiener reconstruction per index array (input scales used)."""
    acc = ClassAccumulator(ws.d, len(subsets))
    ind = np.concatenate(subsets)
    post = np.zeros((len(ind), len(subsets)))
    o = 0
    for m, s in enumerate(subsets):
        post[o:o + len(s), m] = 1.0
        o += len(s)
    acc.add(ws, post, ws.scale_input, ind)
    return acc.reconstruct()[0]


def consensus_map(ws: WorkingSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruction from all particles: (full (d,d,d), halves (2,d,d,d))."""
    acc = ClassAccumulator(ws.d, 1)
    acc.add(ws, np.ones((len(ws), 1)), ws.scale_input, np.arange(len(ws)))
    full, halves = acc.reconstruct()
    return full[0], halves[0]


def auto_solvent_mask(vol: torch.Tensor, apix: float, res: float, frac: float = 0.15,
                      dilate_px: float = 2.0, soft_px: float = 3.0) -> np.ndarray:
    """Soft mask from a map: low-pass to ``res`` Å, threshold at ``frac`` of its maximum, dilate
    ``dilate_px`` (near edge) and fall to 0 over ``soft_px`` more (far edge). (d, d, d) float32."""
    lp = lowpass_3d(vol, res, apix).numpy()
    return threshold_mask_3d(lp, frac * float(lp.max()), dilate_px, soft_px)


def load_input_maps(paths, ws: WorkingSet) -> torch.Tensor:
    """Maps from files → (K, d, d, d) at the working box."""
    out = []
    for p in paths:
        vol, _ = read_mrc(p)
        if vol.ndim != 3 or len(set(vol.shape)) != 1:
            raise InputError(p, f"not a cubic map (shape {vol.shape})")
        box = vol.shape[-1]
        if box == ws.D:
            vol = fourier_crop_3d_for_projection(torch.as_tensor(np.array(vol)), ws.d)
        elif box == ws.d:
            vol = torch.as_tensor(vol)
        else:
            raise InputError(p, f"box {box} matches neither the particles ({ws.D}) nor the working box ({ws.d})")
        out.append(vol.to(torch.float32))
    return torch.stack(out)


def initial_maps(ws: WorkingSet, K: int, mode: str, init_res: float, rng: np.random.Generator,
                 mask: np.ndarray, input_maps=None, subset: int | None = None) -> torch.Tensor:
    """(K, d, d, d) starting maps (see module docstring), low-passed to ``init_res`` Å."""
    n = len(ws)
    if mode == "input":
        if not input_maps or len(input_maps) != K:
            raise InputError(None, f"--init-mode input needs exactly K={K} maps in --init-maps, got {len(input_maps or [])}")
        maps = load_input_maps(input_maps, ws)
    elif mode == "simple":
        size = subset or min(n // K, 1000)
        perm = rng.permutation(n)
        maps = reconstruct_subsets(ws, [perm[k * size:(k + 1) * size] for k in range(K)])
    elif mode == "pca":
        from sklearn.cluster import KMeans

        M = max(4 * K, 12)
        size = subset or max(n // M, 20)
        perm = rng.permutation(n)
        subs = [perm[(m * size) % n:(m * size) % n + size] for m in range(M)]
        recs = reconstruct_subsets(ws, subs)
        lp = torch.stack([lowpass_3d(r, init_res, ws.apix) for r in recs]).numpy() * mask
        flat = lp.reshape(M, -1)
        flat = flat - flat.mean(0)
        u, s, _ = np.linalg.svd(flat, full_matrices=False)
        coords = u[:, :min(M - 1, K + 2)] * s[:min(M - 1, K + 2)]
        labels = KMeans(K, n_init=10, random_state=int(rng.integers(1 << 31))).fit_predict(coords)
        maps = torch.stack([recs[torch.as_tensor(labels == k)].mean(0) for k in range(K)])
    else:
        raise InputError(None, f"unknown --init-mode {mode!r} (simple, pca or input)")
    return torch.stack([lowpass_3d(m, init_res, ws.apix) for m in maps])
