"""A trained ``flex train`` run opened for the latent analysis commands (analyze, filter, traverse,
eval-vol, the napari latent explorer): :func:`load_flex_run` returns an object with the interface of
:mod:`cryo_napari.analysis.runs` (``z``, ``epoch``, ``zdim``, ``D``, ``apix``, ``config``,
``particles``, ``ind``, ``generate_volumes``).

The latents are in PREP particle order, so ``particles`` is the particle file PREP was made from
and ``ind`` is PREP's ``indices.npy`` (its rows): a selection maps back to the user's .star/.cs.
Maps at a latent are the canonical map convected by the generator's flow at that latent
(:func:`cryo_napari.methods.flex.generate.generate_series`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cryo_napari.errors import InputError
from cryo_napari.geometry.fourier import fourier_crop_3d
from cryo_napari.geometry.rotations import flip_map_handedness
from cryo_napari.methods.flex.generate import generate_series
from cryo_napari.methods.flex.mesh import TetraMesh
from cryo_napari.methods.flex.model import FlexModel
from cryo_napari.methods.flex.prep import read_prep
from cryo_napari.methods.flex.train import load_latents, load_trained


@dataclass
class FlexRun:
    """A flex run at one epoch: latents ``z`` (N, K) float32 in PREP order, training box ``D`` (px)
    and pixel size ``apix`` (Å), ``latents`` "encoder" or "refined" (``refine-z``)."""

    path: Path
    epoch: int
    z: np.ndarray
    D: int
    apix: float
    config: dict
    particles: str | None
    ind: str | None
    model: FlexModel = field(repr=False)
    mesh: TetraMesh = field(repr=False)
    latents: str = "encoder"
    kind: str = "flex-train"

    @property
    def zdim(self) -> int:
        return int(self.z.shape[1])

    def apix_at(self, D: int | None = None) -> float:
        """Pixel size (Å) of maps generated at box ``D``."""
        return float(self.apix * self.D / (D or self.D))

    def generate_volumes(self, z, D: int | None = None, flip: bool = False) -> np.ndarray:
        """Convected canonical maps (M, D, D, D) float32 at latents ``z`` (M, K) (or one (K,) point);
        ``D`` (even, ≤ training box) Fourier-crops the canonical map first; ``flip`` mirrors."""
        D = int(D or self.D)
        if D % 2 or D > self.D or D < 4:
            raise InputError(self.path, f"volume box {D} must be even and between 4 and the training box {self.D}")
        z = np.atleast_2d(np.asarray(z, dtype=np.float32))
        if z.shape[1] != self.zdim:
            raise InputError(self.path, f"latent points have {z.shape[1]} values, the model has K = {self.zdim}")
        with torch.no_grad():
            vol = fourier_crop_3d(self.model.V.detach(), D)
        maps = generate_series(self.model, self.mesh, z, vol.numpy())
        return np.stack([flip_map_handedness(m) for m in maps]) if flip else maps


def load_flex_run(path, epoch: int | None = None, latents: str = "encoder") -> FlexRun:
    """Open a ``flex train`` run at ``epoch`` (default: the latest complete checkpoint) with the
    encoder's latents or, with ``latents="refined"``, those ``cryo-napari refine-z`` wrote."""
    model, cfg, step = load_trained(path, epoch)
    z = load_latents(path, step, refined=latents == "refined").astype(np.float32)
    mesh = TetraMesh.from_pickle(cfg["mesh"])
    prep = Path(cfg["prep"])
    info = read_prep(prep)
    config = {**cfg, "datadir": info.get("datadir")}
    apix = float(mesh.psize_A) * mesh.N / model.D
    return FlexRun(Path(path), int(step), z, int(model.D), apix, config, info.get("source_particles"),
                   str(prep / "indices.npy"), model, mesh, latents)
