"""Open a VAE run directory and generate maps from latent points.

``load_vae_run(run)`` → :class:`VAERun` with the latents of one complete epoch and a decoder that
generates real-space maps for any ``z``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cryo_napari.errors import InputError
from cryo_napari.geometry.fourier import ifft_centered
from cryo_napari.geometry.rotations import flip_map_handedness
from cryo_napari.jobs.rundir import RunDir
from cryo_napari.methods.vae.model import VAE, generate_volume_ft


@dataclass
class VAERun:
    """A trained VAE at one epoch.

    Attributes
    ----------
    path : run directory.
    epoch : the epoch loaded (1-based).
    z : (N, zdim) float32 latent means of that epoch, in input particle order.
    zdim, D : latent size and training box (px).
    apix : training pixel size (Å).
    config : ``config.yaml`` as a dict.
    particles : the particle file trained on; ``ind`` the index file (or None).
    latents : ``"encoder"`` (``z.N.npy``) or ``"refined"`` (``z.N.refined.npy``, ``refine-z``).
    """

    path: Path
    epoch: int
    z: np.ndarray
    zdim: int
    D: int
    apix: float
    config: dict
    particles: str
    ind: str | None
    model: VAE = field(repr=False)
    norm: float = 1.0
    latents: str = "encoder"

    def generate_volumes(self, z, D: int | None = None, flip: bool = False) -> np.ndarray:
        """Maps (M, D, D, D) float32 at latents ``z`` (M, zdim) (or one (zdim,) point).

        ``D`` (even, ≤ training box) below the training box gives a low-resolution preview at
        pixel size ``apix · D_train / D``; ``flip`` mirrors the handedness.
        """
        D = int(D or self.D)
        if D % 2 or D > self.D or D < 4:
            raise InputError(self.path, f"volume box {D} must be even and between 4 and the training box {self.D}")
        z = np.atleast_2d(np.asarray(z, dtype=np.float32))
        if z.shape[1] != self.zdim:
            raise InputError(self.path, f"latent points have {z.shape[1]} values, the model has zdim {self.zdim}")
        out = np.empty((len(z), D, D, D), dtype=np.float32)
        self.model.eval()
        for i, zi in enumerate(z):
            ft = generate_volume_ft(self.model, torch.as_tensor(zi), D)
            vol = ifft_centered(ft * self.norm, 3).real * (D / self.D) ** 3
            out[i] = (flip_map_handedness(vol) if flip else vol).numpy()
        return out

    def apix_at(self, D: int | None = None) -> float:
        """Pixel size (Å) of maps generated at box ``D``."""
        return float(self.apix * self.D / (D or self.D))


def load_vae_run(run_dir, epoch: int | None = None, latents: str = "encoder") -> VAERun:
    """Load a run written by ``train-vae`` at ``epoch`` (default: the latest complete one).

    ``latents``: ``"encoder"`` (``z.N.npy``, the encoder's means) or ``"refined"``
    (``z.N.refined.npy`` written by ``cryo-napari refine-z``; an error names the command when absent).
    """
    if latents not in ("encoder", "refined"):
        raise ValueError(f"latents must be 'encoder' or 'refined', not {latents!r}")
    rd = RunDir(run_dir)
    cfg = rd.read_config()
    if cfg.get("kind") != "train-vae":
        raise InputError(rd.path / "config.yaml", f"not a train-vae run (kind {cfg.get('kind')!r})")
    steps = rd.complete_steps("weights", "pt")
    zsteps = set(rd.complete_steps("z", "npy"))
    steps = [s for s in steps if s in zsteps]
    if not steps:
        raise InputError(rd.path, "no complete epoch (weights.N.pt with z.N.npy and their .ok markers)")
    if epoch is None or epoch == -1:
        epoch = steps[-1]
    if epoch not in steps:
        raise InputError(rd.path, f"epoch {epoch} is not complete (complete: {', '.join(map(str, steps))})")
    ck = torch.load(rd.path / f"weights.{epoch}.pt", map_location="cpu", weights_only=False)
    model = VAE(ck["arch"])
    model.load_state_dict(ck["model"])
    model.eval()
    zpath = rd.path / f"z.{epoch}.npy" if latents == "encoder" else rd.refined_latents_path(epoch)
    if latents == "refined" and not rd.is_complete(zpath):
        raise InputError(zpath, f"no complete refined latents for epoch {epoch}: run `cryo-napari refine-z "
                                f"{rd.path} --epoch {epoch}` first")
    z = np.load(zpath).astype(np.float32)
    arch = ck["arch"]
    return VAERun(rd.path, int(epoch), z, int(arch["zdim"]), int(arch["D"]), float(cfg["apix"]), cfg,
                  cfg.get("particles"), cfg.get("ind"), model, float(ck.get("norm", cfg.get("norm", 1.0))), latents)
