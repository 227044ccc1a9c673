"""3DFlex "Data Prep": Fourier-crop particles to the training box, keep the full box for reconstruction.

``PREP/`` holds ``particles.mrcs`` (cropped, white particles), ``particles.star`` (RELION 3.1 with
poses, origin shifts and CTF at the cropped pixel size, ``rlnRandomSubset`` half-sets),
``consensus.mrc`` (the consensus map at the training box: the given map Fourier-cropped, or a
back-projection of the cropped particles), ``indices.npy`` (rows of the source particles used) and
``prep.yaml`` (source paths, boxes, pixel sizes, noise σ of the cropped images).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from cryo_napari.errors import InputError
from cryo_napari.geometry.backproject import Backprojector, split_halves
from cryo_napari.geometry.fourier import fourier_crop_2d, fourier_crop_3d_for_projection
from cryo_napari.geometry.rotations import matrix_to_relion_euler
from cryo_napari.io.mrc import read_mrc, write_mrc
from cryo_napari.io.particles import ParticleData, load_particles
from cryo_napari.io.star import write_star
from cryo_napari.jobs.atomic import save_npy_atomic, write_text_atomic
from cryo_napari.jobs.protocol import Artifact, Job, Log, Progress


def noise_sigma(images: np.ndarray) -> float:
    """Noise σ estimated from the pixels outside the inscribed disc (the particle-free corners)."""
    D = images.shape[-1]
    k = np.arange(D) - D // 2
    outside = (k[:, None] ** 2 + k[None, :] ** 2) > (0.45 * D) ** 2
    return float(np.std(images[:, outside]))


def flex_prep_job(particles, out, train_box: int = 128, max_particles: int | None = None, consensus=None,
                  datadir=None, poses=None, ctf=None, ind=None, uninvert: bool = False, seed: int = 0,
                  batch: int = 512) -> Job:
    """Crop particles into ``out`` (see module docstring). Returns a dict of paths."""
    out = Path(out)
    pdata = load_particles(particles, datadir=datadir, poses=poses, ctf=ctf, ind=ind, require_poses=True)
    rows = np.arange(len(pdata)) if ind is None else None
    if max_particles and max_particles < len(pdata):
        rows = np.sort(np.random.default_rng(seed).choice(len(pdata), max_particles, replace=False))
        pdata = pdata.subset(rows)
    rows = pdata.source_index
    D, n = pdata.D, len(pdata)
    if train_box > D or train_box % 2:
        raise InputError(particles, f"--train-box must be even and at most the particle box {D}, got {train_box}")
    apix = float(np.median(pdata.apix))
    apix_t = apix * D / train_box
    half = pdata.half if pdata.half is not None else split_halves(n, seed)
    out.mkdir(parents=True, exist_ok=True)
    imgs = np.empty((n, train_box, train_box), np.float32)
    yield Progress(0, n, "cropping")
    for b in range(0, n, batch):
        ii = np.arange(b, min(n, b + batch))
        x = pdata.read_images(ii) * (-1.0 if uninvert else 1.0)
        if not np.isfinite(x).all():
            raise InputError(particles, f"NaN or infinite pixel values in images {b + 1}-{b + len(ii)}")
        imgs[ii] = fourier_crop_2d(torch.as_tensor(x), train_box).numpy()
        yield Progress(int(ii[-1]) + 1, n, "cropping")
    write_mrc(out / "particles.mrcs", imgs, apix_t)
    _write_prep_star(out / "particles.star", pdata, half, train_box, apix_t)
    save_npy_atomic(out / "indices.npy", rows)
    if consensus is not None:
        vol, _ = read_mrc(consensus)
        if vol.ndim != 3 or vol.shape[0] != D:
            raise InputError(consensus, f"consensus map box {vol.shape} differs from the particle box {D}")
        vol_t = fourier_crop_3d_for_projection(torch.tensor(np.array(vol, np.float32)), train_box).numpy()
    else:
        yield Log("info", "no consensus map given: back-projecting the cropped particles")
        bp = Backprojector(train_box)
        for b in range(0, n, batch):
            ii = np.arange(b, min(n, b + batch))
            bp.add_images(torch.as_tensor(imgs[ii]), torch.as_tensor(pdata.rotations[ii], dtype=torch.float32),
                          torch.as_tensor(pdata.shifts_px[ii] * train_box / D, dtype=torch.float32),
                          None if pdata.ctf is None else pdata.ctf.as_tensor(ii), apix_t)
        vol_t = bp.reconstruct().numpy()
    write_mrc(out / "consensus.mrc", vol_t, apix_t)
    info = {"source_particles": str(Path(particles).resolve()), "datadir": datadir and str(Path(datadir).resolve()),
            "poses": poses and str(Path(poses).resolve()), "ctf": ctf and str(Path(ctf).resolve()),
            "uninvert": bool(uninvert), "n_particles": int(n), "full_box": int(D), "apix_full": apix,
            "train_box": int(train_box), "apix_train": apix_t, "noise_sigma": noise_sigma(imgs),
            "has_ctf": pdata.ctf is not None}
    write_text_atomic(out / "prep.yaml", yaml.safe_dump(info, sort_keys=False))
    yield Artifact("particles", out / "particles.star")
    yield Log("info", f"{n} particles cropped {D} → {train_box} px ({apix_t:.3f} Å/px) in {out}")
    return {"star": out / "particles.star", "consensus": out / "consensus.mrc", "prep": out / "prep.yaml"}


def _write_prep_star(path, pdata: ParticleData, half, box: int, apix: float):
    n = len(pdata)
    euler = matrix_to_relion_euler(pdata.rotations)
    sh = pdata.shifts_px * box / pdata.D * apix  # Å
    c = pdata.ctf
    optics = pd.DataFrame({
        "rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
        "rlnAmplitudeContrast": [float(c.amp_contrast[0]) if c is not None else 0.1],
        "rlnSphericalAberration": [float(c.cs_mm[0]) if c is not None else 2.7],
        "rlnVoltage": [float(c.voltage_kV[0]) if c is not None else 300.0],
        "rlnImagePixelSize": [apix], "rlnImageSize": [box], "rlnImageDimensionality": [2]})
    cols = {"rlnImageName": [f"{i + 1:06d}@particles.mrcs" for i in range(n)],
            "rlnAngleRot": euler[:, 0], "rlnAngleTilt": euler[:, 1], "rlnAnglePsi": euler[:, 2],
            "rlnOriginXAngst": sh[:, 0], "rlnOriginYAngst": sh[:, 1]}
    if c is not None:
        if len(np.unique(c.voltage_kV)) > 1 or len(np.unique(c.cs_mm)) > 1:
            raise InputError(pdata.path, "several voltages / Cs values: flex prep supports one optics group")
        cols.update({"rlnDefocusU": c.defocus_u_A, "rlnDefocusV": c.defocus_v_A,
                     "rlnDefocusAngle": np.rad2deg(c.astig_angle_rad), "rlnPhaseShift": np.rad2deg(c.phase_shift_rad),
                     "rlnCtfBfactor": c.bfactor_A2})
    cols.update({"rlnOpticsGroup": np.ones(n, int), "rlnRandomSubset": np.asarray(half).astype(int) + 1})
    write_star(path, pd.DataFrame(cols), optics)


def read_prep(prep) -> dict:
    """``prep.yaml`` of a PREP directory, with paths resolved."""
    prep = Path(prep)
    p = prep / "prep.yaml"
    if not p.exists():
        raise InputError(prep, "not a flex prep directory (no prep.yaml); run 'cryo-napari flex prep' first")
    info = yaml.safe_load(p.read_text())
    info["dir"] = prep
    return info
