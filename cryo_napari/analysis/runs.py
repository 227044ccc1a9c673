"""One entry point to open anything with latents: ``load_latent_run(path, epoch=None)``.

Dispatch (first match wins):

* a directory with ``config.yaml`` whose ``kind`` is ``train-vae``/``vae`` → our VAE
  (:func:`cryo_napari.methods.vae.eval.load_vae_run`); ``flex-train`` → a 3D Flex run
  (:func:`cryo_napari.methods.flex.run.load_flex_run`, maps convected from the canonical map);
* a cryoDRGN run directory (``config.yaml`` with ``lattice_args``/``model_args`` and
  ``weights*.pkl``) → :func:`cryo_napari.analysis.cryodrgn_run.load_cryodrgn_run`;
* a latent file (``.npy`` / ``.pkl`` of shape (N, zdim)) → :class:`LatentOnly` (no decoder);
* other run kinds register a loader in :data:`RUN_LOADERS` (``kind`` → function
  ``(path, epoch, latents="encoder") -> run``); this is the extension point.

Every returned object has ``z`` (N, zdim) float32, ``epoch``, ``zdim``, ``D``, ``apix``,
``config`` (dict), ``particles`` (path or None), ``ind`` (path or None), ``path`` and
``generate_volumes(z (M, zdim), D=None, flip=False) -> (M, D, D, D) float32``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from cryo_napari.errors import InputError


def _load_vae(path, epoch, latents="encoder"):
    from cryo_napari.methods.vae.eval import load_vae_run

    return load_vae_run(path, epoch, latents)


def _load_flex(path, epoch, latents="encoder"):
    from cryo_napari.methods.flex.run import load_flex_run

    return load_flex_run(path, epoch, latents)


#: config.yaml ``kind`` → loader ``(run_dir, epoch, latents="encoder") -> run``. Add new methods here.
RUN_LOADERS: dict[str, Callable] = {"train-vae": _load_vae, "vae": _load_vae, "flex-train": _load_flex}


@dataclass
class LatentOnly:
    """Latents without a decoder (a bare z.npy / z.pkl): analysis works, volumes do not."""

    path: Path
    z: np.ndarray
    epoch: int | None = None
    D: int | None = None
    apix: float = 1.0
    config: dict = field(default_factory=dict)
    particles: str | None = None
    ind: str | None = None
    kind: str = "latents"

    @property
    def zdim(self) -> int:
        return int(self.z.shape[1])

    def generate_volumes(self, z, D=None, flip=False):
        raise InputError(self.path, "a bare latent file has no decoder: open the run directory to generate volumes")

    def apix_at(self, D=None) -> float:
        return float(self.apix)


def read_latent_file(path) -> np.ndarray:
    """Latents (N, zdim) float32 from ``.npy`` or a cryoDRGN ``.pkl``."""
    path = Path(path)
    if path.suffix == ".pkl":
        from cryo_napari.io.cryodrgn import read_z_pkl

        z = read_z_pkl(path)
    elif path.suffix == ".npy":
        try:
            z = np.load(path)
        except (ValueError, OSError) as exc:
            raise InputError(path, f"not a readable .npy file ({exc})") from None
    else:
        raise InputError(path, "latents must be a .npy or .pkl file of shape (N, zdim)")
    z = np.asarray(z)
    if z.ndim != 2 or z.dtype.kind not in "fiu" or len(z) == 0:
        raise InputError(path, f"latents must be a non-empty numeric (N, zdim) array, got {z.dtype} {z.shape}")
    z = z.astype(np.float32)
    if not np.isfinite(z).all():
        raise InputError(path, "latents contain NaN or infinite values")
    return z


def run_kind(path) -> str:
    """'vae' / other registered kind, 'cryodrgn', or 'latents' for what ``path`` is."""
    from cryo_napari.analysis.cryodrgn_run import is_cryodrgn_run

    path = Path(path)
    if not path.exists():
        raise InputError(path, "not found")
    if path.is_file():
        return "latents"
    cfg = path / "config.yaml"
    if not cfg.exists():
        raise InputError(path, "not a run directory (no config.yaml) nor a latent file")
    if is_cryodrgn_run(path):
        return "cryodrgn"
    import yaml

    try:
        doc = yaml.safe_load(cfg.read_text())
    except yaml.YAMLError as exc:
        raise InputError(cfg, f"unreadable YAML ({str(exc).splitlines()[0]})") from None
    kind = doc.get("kind") if isinstance(doc, dict) else None
    if kind in RUN_LOADERS:
        return kind
    raise InputError(cfg, f"unsupported run kind {kind!r} (known: {', '.join(sorted(RUN_LOADERS))}, cryoDRGN runs, z files)")


def load_latent_run(path, epoch: int | None = None, apix: float | None = None, refined: bool = False):
    """Open a run directory or latent file (see the module docstring) at ``epoch``.

    ``apix`` overrides the pixel size (Å) for runs that do not record it (cryoDRGN). ``refined``
    reads the latents ``cryo-napari refine-z`` wrote (our VAE runs only) instead of the encoder's.
    """
    path = Path(path)
    kind = run_kind(path)
    if refined and kind == "cryodrgn":
        from cryo_napari.analysis.cryodrgn_run import load_cryodrgn_run

        run = load_cryodrgn_run(path, epoch, apix)
        from cryo_napari.jobs.rundir import RunDir

        rd = RunDir(path)
        zpath = rd.refined_latents_path(run.epoch)
        if not rd.is_complete(zpath):
            raise InputError(zpath, f"no refined latents for this epoch: run `cryo-napari refine-z {path}"
                                    f"{'' if run.epoch is None else f' --epoch {run.epoch}'}` first")
        run.z = np.load(zpath).astype(np.float32)
        run.latents = "refined"
        return run
    if refined:
        if kind not in RUN_LOADERS:
            raise InputError(path, "refined latents (--refined) exist only for train-vae, flex and cryoDRGN runs "
                                   "(cryo-napari refine-z)")
        run = RUN_LOADERS[kind](path, epoch, "refined")
        if apix:
            run.apix = float(apix)
        return run
    if kind == "latents":
        return LatentOnly(path, read_latent_file(path), apix=float(apix or 1.0))
    if kind == "cryodrgn":
        from cryo_napari.analysis.cryodrgn_run import load_cryodrgn_run

        run = load_cryodrgn_run(path, epoch, apix)
        if len(run.z) == 0:
            raise InputError(path, "cryoDRGN run without z.pkl / z.N.pkl latents for this epoch")
        return run
    run = RUN_LOADERS[kind](path, epoch)
    if apix:
        run.apix = float(apix)
    return run
