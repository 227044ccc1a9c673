"""Simulated particle stacks with ground truth, written in every format we read.

Image model (RELION convention, white particles):
``X = shift_{-t}( IFT[ CTF · α · V̂_s(k @ R) ] ) + n``, with uniform random rotations ``R``,
Gaussian origin shifts ``t`` (px; the particle centre sits at ``centre − t`` as in RELION),
per-particle scale ``α`` and white Gaussian noise ``n``.

SNR definition (``snr_region="box"``, the default, as cryoDRGN's ``add_noise``):
``SNR = var(clean images) / σ²``, the variance of all clean (CTF-modulated, shifted) pixels of the
whole stack over the noise variance. With ``snr_region="particle"`` the signal variance is taken
only inside a disc of the particle's radius (the radius enclosing 99 % of the map's positive
density), as many simulation studies define it; for a particle filling a fraction f of the box
this is about 1/f times the box definition at the same noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryo_napari.geometry.ctf import CTFParams, calculate_ctf_2d
from cryo_napari.geometry.fourier import ifft_centered, phase_shift_2d, project_fourier_slices, volume_to_fourier
from cryo_napari.geometry.rotations import matrix_to_cryosparc_pose, matrix_to_relion_euler, random_rotations
from cryo_napari.io.cryodrgn import write_ctf_pkl, write_poses_pkl
from cryo_napari.io.cryosparc import write_cs
from cryo_napari.io.mrc import write_mrc
from cryo_napari.io.star import write_star
from cryo_napari.jobs.atomic import atomic_path


@dataclass
class SimulationParams:
    """Parameters of a simulated dataset (units in names)."""

    n_particles: int = 1000
    snr: float = 0.1
    apix: float = 3.0
    defocus_min_um: float = 1.0
    defocus_max_um: float = 3.0
    astigmatism_um: float = 0.05
    shift_sigma_px: float = 2.0
    scale_sigma: float = 0.0
    voltage_kV: float = 300.0
    cs_mm: float = 2.7
    amp_contrast: float = 0.1
    bfactor_A2: float = 0.0
    seed: int = 0
    ctf: bool = True
    snr_region: str = "box"


def sample_ground_truth(n_maps: int, p: SimulationParams, weights=None) -> dict:
    """Random per-particle states, rotations, shifts, scales and CTF parameters."""
    rng = np.random.default_rng(p.seed)
    n = p.n_particles
    w = None if weights is None else np.asarray(weights, float) / np.sum(weights)
    states = rng.choice(n_maps, size=n, p=w)
    rot = random_rotations(n, rng)
    shifts = rng.normal(0, p.shift_sigma_px, (n, 2)) if p.shift_sigma_px > 0 else np.zeros((n, 2))
    scale = np.clip(rng.normal(1.0, p.scale_sigma, n), 0.3, 3.0) if p.scale_sigma > 0 else np.ones(n)
    df = rng.uniform(p.defocus_min_um, p.defocus_max_um, n) * 1e4
    ast = rng.uniform(-p.astigmatism_um, p.astigmatism_um, n) * 1e4 / 2
    ctf = CTFParams(df + ast, df - ast, rng.uniform(-np.pi / 2, np.pi / 2, n), p.voltage_kV, p.cs_mm,
                    p.amp_contrast, 0.0, p.bfactor_A2)
    half = np.zeros(n, dtype=np.int8)
    half[rng.permutation(n)[: n // 2]] = 1
    return {"states": states, "rotations": rot, "shifts_px": shifts, "scale": scale, "ctf": ctf, "half": half}


def render_clean_images(maps: np.ndarray, gt: dict, p: SimulationParams, batch: int = 512) -> np.ndarray:
    """Noise-free images (N, D, D) float32 for ground truth ``gt`` (see module docstring)."""
    D = maps.shape[-1]
    n = len(gt["states"])
    out = np.empty((n, D, D), dtype=np.float32)
    ctf_t = gt["ctf"].as_tensor()
    for s in np.unique(gt["states"]):
        vol_ft = volume_to_fourier(torch.as_tensor(maps[s]), pad=2)
        idx = np.nonzero(gt["states"] == s)[0]
        for b in range(0, len(idx), batch):
            ii = idx[b : b + batch]
            R = torch.as_tensor(gt["rotations"][ii], dtype=torch.float32)
            sl = project_fourier_slices(vol_ft, R, D, pad=2)
            if p.ctf:
                sl = sl * calculate_ctf_2d(ctf_t[ii], D, p.apix)
            sl = sl * torch.as_tensor(gt["scale"][ii], dtype=torch.float32)[:, None, None]
            sl = phase_shift_2d(sl, -torch.as_tensor(gt["shifts_px"][ii], dtype=torch.float32))
            out[ii] = ifft_centered(sl, 2).real.numpy()
    return out


def particle_radius_px(maps: np.ndarray, fraction: float = 0.99) -> float:
    """Radius (px) about the box centre enclosing ``fraction`` of the maps' positive density."""
    D = maps.shape[-1]
    k = np.arange(D) - D // 2
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2).ravel()
    dens = np.clip(np.asarray(maps), 0, None).reshape(-1, D**3).sum(0)
    order = np.argsort(r)
    cum = np.cumsum(dens[order])
    return float(r[order][np.searchsorted(cum, fraction * cum[-1])])


def add_noise(clean: np.ndarray, snr: float, seed: int, radius_px: float | None = None) -> tuple[np.ndarray, float]:
    """White Gaussian noise at ``snr`` (module docstring); returns (noisy images, σ).

    ``radius_px``: measure the signal variance only inside this disc (``snr_region="particle"``).
    """
    if radius_px is None:
        signal_std = np.std(clean)
    else:
        D = clean.shape[-1]
        k = np.arange(D) - D // 2
        disc = (k[:, None] ** 2 + k[None, :] ** 2) <= radius_px**2
        signal_std = np.std(clean[:, disc])
    sigma = float(signal_std / np.sqrt(snr))
    rng = np.random.default_rng(seed + 1)
    noisy = clean + rng.normal(0, sigma, clean.shape).astype(np.float32)
    return noisy.astype(np.float32), sigma


def write_dataset(out: Path, images: np.ndarray, gt: dict, p: SimulationParams, maps: np.ndarray,
                  extra_truth: dict | None = None) -> dict:
    """Write ``particles.mrcs``, ``particles.star`` (RELION 3.1, optics table), ``particles.cs``,
    cryoDRGN ``poses.pkl``/``ctf.pkl`` and ``ground_truth.npz``. Returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n, D = len(images), images.shape[-1]
    write_mrc(out / "particles.mrcs", images, p.apix)
    ctf: CTFParams = gt["ctf"]
    euler = matrix_to_relion_euler(gt["rotations"])
    optics = pd.DataFrame({
        "rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnAmplitudeContrast": [p.amp_contrast],
        "rlnSphericalAberration": [p.cs_mm], "rlnVoltage": [p.voltage_kV], "rlnImagePixelSize": [p.apix],
        "rlnImageSize": [D], "rlnImageDimensionality": [2],
    })
    particles = pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@particles.mrcs" for i in range(n)],
        "rlnAngleRot": euler[:, 0], "rlnAngleTilt": euler[:, 1], "rlnAnglePsi": euler[:, 2],
        "rlnOriginXAngst": gt["shifts_px"][:, 0] * p.apix, "rlnOriginYAngst": gt["shifts_px"][:, 1] * p.apix,
        "rlnDefocusU": ctf.defocus_u_A, "rlnDefocusV": ctf.defocus_v_A,
        "rlnDefocusAngle": np.rad2deg(ctf.astig_angle_rad), "rlnPhaseShift": np.rad2deg(ctf.phase_shift_rad),
        "rlnCtfBfactor": ctf.bfactor_A2, "rlnOpticsGroup": np.ones(n, dtype=int),
        "rlnRandomSubset": gt["half"].astype(int) + 1,
        # one class, as after a consensus refinement: the true states are only in ground_truth.npz
        "rlnClassNumber": np.ones(n, dtype=int),
    })
    write_star(out / "particles.star", particles, optics)
    dtype = [("uid", "<u8"), ("blob/path", "S64"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)),
             ("blob/psize_A", "<f4"), ("blob/sign", "<f4"), ("ctf/type", "S8"), ("ctf/exp_group_id", "<u4"),
             ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"), ("ctf/amp_contrast", "<f4"), ("ctf/df1_A", "<f4"),
             ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"), ("ctf/phase_shift_rad", "<f4"),
             ("ctf/bfactor", "<f4"), ("alignments3D/split", "<u4"), ("alignments3D/shift", "<f4", (2,)),
             ("alignments3D/pose", "<f4", (3,)), ("alignments3D/psize_A", "<f4"), ("alignments3D/alpha", "<f4"),
             ("alignments3D/class", "<u4")]
    cs = np.zeros(n, dtype=dtype)
    cs["uid"] = np.random.default_rng(p.seed + 2).integers(0, 2**63, n, dtype=np.uint64)
    cs["blob/path"] = b"particles.mrcs"
    cs["blob/idx"] = np.arange(n)
    cs["blob/shape"] = D
    cs["blob/psize_A"] = p.apix
    cs["blob/sign"] = 1.0
    cs["ctf/type"] = b"spline"
    cs["ctf/accel_kv"], cs["ctf/cs_mm"], cs["ctf/amp_contrast"] = ctf.voltage_kV, ctf.cs_mm, ctf.amp_contrast
    cs["ctf/df1_A"], cs["ctf/df2_A"] = ctf.defocus_u_A, ctf.defocus_v_A
    cs["ctf/df_angle_rad"], cs["ctf/phase_shift_rad"], cs["ctf/bfactor"] = ctf.astig_angle_rad, ctf.phase_shift_rad, ctf.bfactor_A2
    cs["alignments3D/split"] = gt["half"]
    cs["alignments3D/shift"] = gt["shifts_px"]
    cs["alignments3D/pose"] = matrix_to_cryosparc_pose(gt["rotations"])
    cs["alignments3D/psize_A"] = p.apix
    cs["alignments3D/alpha"] = gt["scale"]
    cs["alignments3D/class"] = 0  # consensus refinement: one class; the truth is only in ground_truth.npz
    write_cs(out / "particles.cs", cs)
    write_poses_pkl(out / "poses.pkl", gt["rotations"], gt["shifts_px"], D)
    write_ctf_pkl(out / "ctf.pkl", ctf, D, p.apix)
    weights = np.bincount(gt["states"], minlength=len(maps)) / n
    truth = {
        "states": gt["states"], "rotations": gt["rotations"], "shifts_px": gt["shifts_px"], "scale": gt["scale"],
        "half": gt["half"], "maps": maps.astype(np.float32), "mean_map": np.tensordot(weights, maps, 1).astype(np.float32),
        "apix": p.apix, "snr": p.snr, **(extra_truth or {}),
    }
    with atomic_path(out / "ground_truth.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **truth)
    return {k: out / v for k, v in [("stack", "particles.mrcs"), ("star", "particles.star"), ("cs", "particles.cs"),
                                    ("poses", "poses.pkl"), ("ctf", "ctf.pkl"), ("truth", "ground_truth.npz")]}


def simulate_job(maps: np.ndarray, out, p: SimulationParams, weights=None, extra_truth=None):
    """Job: simulate and write a dataset from (K, D, D, D) maps (one state per map); returns paths."""
    from cryo_napari.jobs.protocol import Artifact, Progress

    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim == 3:
        maps = maps[None]
    if maps.shape[-1] % 2:
        raise ValueError(f"box must be even, got {maps.shape[-1]}")
    yield Progress(0, 3, "sampling poses and CTF")
    gt = sample_ground_truth(len(maps), p, weights)
    yield Progress(1, 3, "projecting")
    clean = render_clean_images(maps, gt, p)
    radius = particle_radius_px(maps) if p.snr_region == "particle" else None
    images, sigma = add_noise(clean, p.snr, p.seed, radius)
    yield Progress(2, 3, "writing")
    extra = {"noise_sigma": sigma, "snr_region": p.snr_region, **(extra_truth or {})}
    paths = write_dataset(Path(out), images, gt, p, maps, extra)
    yield Artifact("particles", paths["star"])
    yield Progress(3, 3, "done")
    return paths


def simulate_dataset(maps: np.ndarray, out, p: SimulationParams, weights=None, extra_truth=None) -> dict:
    """Simulate and write a dataset (the job run to its end). Returns the written paths."""
    from cryo_napari.jobs.protocol import run_to_end

    return run_to_end(simulate_job(maps, out, p, weights, extra_truth))
