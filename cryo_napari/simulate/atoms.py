"""Maps from atomic models (gemmi): Gaussian atoms on a grid, per chain or all together.

Coordinates in Å; the map's rotation centre (voxel ``D // 2``) is placed at the model's centre
unless ``centre_A`` is given. Each atom contributes a 3-D Gaussian of s.d. ``sigma_A`` weighted by
its atomic number (a simple electron-density proxy; fine for simulation and occupancy tests).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cryo_napari.errors import InputError


def read_model_atoms(path) -> dict:
    """Atoms of the first model: ``xyz`` (N, 3) Å, ``z`` (N,) atomic numbers, ``chain`` (N,) str,
    ``resseq`` (N,) int. Reads PDB and mmCIF via gemmi."""
    try:
        import gemmi
    except ImportError as exc:  # pragma: no cover
        raise ImportError("reading atomic models needs gemmi: pip install gemmi") from exc
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    try:
        st = gemmi.read_structure(str(path))
    except Exception as exc:
        raise InputError(path, f"not a readable PDB/mmCIF model ({exc})") from None
    if len(st) == 0:
        raise InputError(path, "no model in file")
    xyz, z, chain, resseq = [], [], [], []
    for ch in st[0]:
        for res in ch:
            for at in res:
                xyz.append(at.pos.tolist())
                z.append(at.element.atomic_number)
                chain.append(ch.name)
                resseq.append(res.seqid.num)
    if not xyz:
        raise InputError(path, "no atoms")
    return {"xyz": np.array(xyz), "z": np.array(z, float), "chain": np.array(chain), "resseq": np.array(resseq)}


def map_from_atoms(xyz, weights, D: int, apix: float, sigma_A: float = 1.0, centre_A=None) -> np.ndarray:
    """(D, D, D) float32 map of Gaussian atoms; trilinear splat then Gaussian blur in Fourier space."""
    xyz = np.asarray(xyz, float)
    centre = xyz.mean(0) if centre_A is None else np.asarray(centre_A, float)
    pos = (xyz - centre) / apix + D // 2  # (x, y, z) voxel coordinates
    vol = torch.zeros(D * D * D, dtype=torch.float64)
    p = torch.as_tensor(pos)
    w = torch.as_tensor(np.asarray(weights, float))
    c0 = p.floor()
    f = p - c0
    c0 = c0.long()
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                c = c0 + torch.tensor([dx, dy, dz])
                ok = ((c >= 0) & (c < D)).all(1)
                ww = (f[:, 0] if dx else 1 - f[:, 0]) * (f[:, 1] if dy else 1 - f[:, 1]) * (f[:, 2] if dz else 1 - f[:, 2])
                idx = (c[:, 2] * D + c[:, 1]) * D + c[:, 0]
                vol.index_add_(0, idx[ok], (w * ww)[ok])
    vol = vol.reshape(D, D, D)
    k = torch.fft.fftfreq(D, dtype=torch.float64)
    k2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
    s = sigma_A / apix
    out = torch.fft.ifftn(torch.fft.fftn(vol) * torch.exp(-2 * np.pi**2 * s**2 * k2)).real
    return out.numpy().astype(np.float32)


def chain_maps(atoms: dict, D: int, apix: float, sigma_A: float = 1.0) -> dict:
    """One map per chain, all on the same grid (centred on the whole model)."""
    centre = atoms["xyz"].mean(0)
    return {c: map_from_atoms(atoms["xyz"][atoms["chain"] == c], atoms["z"][atoms["chain"] == c], D, apix, sigma_A, centre)
            for c in np.unique(atoms["chain"])}
