"""``cryo-napari refine-z RUN``: refine a run's latents by its own decoder's likelihood.

Chooses the method from the run:

* ``train-vae --decoder basis`` run → the exact linear form over 1024 encoder-mean candidates
  (:mod:`cryo_napari.methods.vae.refine`), unless ``method="maps"``;
* ``train-vae`` run with the MLP decoder → maps at latent centres
  (:mod:`cryo_napari.methods.latent_refine`);
* ``flex train`` run → the same, maps being the canonical map convected by the flow at each centre;
* cryoDRGN ``train_vae`` run → the same, maps from its decoder (:mod:`cryo_napari.analysis.cryodrgn_run`).

Writes, atomically with completeness markers, ``RUN/z.<epoch>.refined.npy`` (N×zdim float32, the
run's particle order) and ``RUN/refine_z.<epoch>.json`` (the summary numbers).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from cryo_napari.errors import InputError
from cryo_napari.jobs.protocol import Artifact, Job, Log


def _write(run_path: Path, epoch: int | None, res: dict, method: str) -> Job:
    """Write a refinement result (atomic, with completeness marker) and its summary JSON."""
    from cryo_napari.jobs.atomic import save_npy_atomic, write_text_atomic
    from cryo_napari.jobs.rundir import RunDir

    rd = RunDir(run_path)
    zpath = rd.refined_latents_path(epoch)  # epoch None: a cryoDRGN run's unnumbered final weights.pkl
    label = epoch if epoch is not None else "final"
    save_npy_atomic(zpath, res.pop("z"))
    rd.mark_complete(zpath, epoch)
    jpath = rd.path / f"refine_z.{label}.json"
    summary = {"epoch": epoch, "method": method, **res}
    write_text_atomic(jpath, json.dumps(summary, indent=1))
    yield Artifact("latents", zpath)
    yield Log("info", f"refined latents of epoch {label} ({method}): {zpath} ({res['seconds']:.1f} s)")
    return {**summary, "z_path": str(zpath), "summary_path": str(jpath)}


def _vae_maps_job(run, centres: int, box: int | None, seed: int) -> Job:
    """Maps method on a VAE run (ours, ``config`` keys at the top level) or a cryoDRGN run (its
    ``dataset_args``); the particles are read as the run read them."""
    from cryo_napari.io.particles import load_particles
    from cryo_napari.methods.latent_refine import refine_by_maps_job

    cfg = run.config.get("dataset_args") or run.config
    pdata = load_particles(cfg["particles"], datadir=cfg.get("datadir"), poses=cfg.get("poses"), ctf=cfg.get("ctf"),
                           ind=cfg.get("ind"), require_poses=True)
    d = int(min(box or run.D, run.D))  # the maps exist up to the training box (maybe a Fourier crop)

    def make_maps(c, d_):
        return run.generate_volumes(c, D=d_)

    return (yield from refine_by_maps_job(run.z, make_maps, pdata, d, centres, seed,
                                          uninvert=bool(cfg.get("uninvert", False))))


def _flex_job(run_dir: Path, epoch: int | None, centres: int, box: int | None, seed: int):
    from cryo_napari.geometry.fourier import fourier_crop_3d
    from cryo_napari.io.particles import load_particles
    from cryo_napari.methods.flex.generate import flow_at_box
    from cryo_napari.methods.flex.mesh import TetraMesh
    from cryo_napari.methods.flex.model import convect
    from cryo_napari.methods.flex.train import load_trained
    from cryo_napari.methods.latent_refine import refine_by_maps_job

    model, cfg, step = load_trained(run_dir, epoch)
    zfile = Path(run_dir) / f"z.{step}.npy"
    if not zfile.exists():
        raise InputError(zfile, "latents of this epoch not found")
    z = np.load(zfile).astype(np.float32)
    mesh = TetraMesh.from_pickle(cfg["mesh"])
    pdata = load_particles(Path(cfg["prep"]) / "particles.star", require_poses=True)
    d = int(min(box or model.D, model.D))

    @torch.no_grad()
    def make_maps(c, d_):
        V = model.V.detach()
        V = V if d_ == model.D else fourier_crop_3d(V, d_)
        out = []
        for b in range(0, len(c), 4):
            zz = torch.as_tensor(c[b:b + 4], dtype=torch.float32)
            out.append(convect(V, flow_at_box(model, mesh, zz, d_)).numpy())
        return np.concatenate(out)

    res = yield from refine_by_maps_job(z, make_maps, pdata, d, centres, seed)
    return step, res


def refine_run_latents_job(run_dir, epoch: int | None = None, method: str = "auto", candidates: int = 1024,
                           centres: int = 64, box: int | None = None, seed: int = 0, batch_size: int = 256) -> Job:
    """Job: refine ``run_dir``'s latents at ``epoch`` (module docstring). ``method``: ``auto``,
    ``basis`` (exact, basis-decoder VAE runs) or ``maps``. ``candidates``: encoder means in the basis
    posterior; ``centres``: k-means centres (maps) in the maps posterior; ``box``: working box of
    either method (default: the model's box; the basis method then compares |k| < box/2 only).
    Returns the summary dict with the output paths."""
    from cryo_napari.jobs.rundir import RunDir

    if method not in ("auto", "basis", "maps"):
        raise InputError("--method", f"{method!r}: choose auto, basis or maps")
    from cryo_napari.analysis.cryodrgn_run import is_cryodrgn_run

    run_dir = Path(run_dir)
    if run_dir.is_dir() and is_cryodrgn_run(run_dir):
        if method == "basis":
            raise InputError(run_dir, "--method basis needs a train-vae --decoder basis run; this is a cryoDRGN run")
        from cryo_napari.analysis.cryodrgn_run import load_cryodrgn_run

        run = load_cryodrgn_run(run_dir, epoch)
        if len(run.z) == 0:
            raise InputError(run_dir, "cryoDRGN run without z.N.pkl latents for this epoch")
        res = yield from _vae_maps_job(run, centres, box, seed)
        return (yield from _write(run_dir, run.epoch, res, "maps"))
    kind = RunDir(run_dir).read_config().get("kind") if (run_dir / "config.yaml").exists() else None
    if kind == "flex-train":
        if method == "basis":
            raise InputError(run_dir, "--method basis needs a train-vae --decoder basis run; this is a flex run")
        step, res = yield from _flex_job(run_dir, epoch, centres, box, seed)
        return (yield from _write(run_dir, step, res, "maps"))
    if kind not in ("train-vae", None):
        raise InputError(run_dir, f"refine-z works on train-vae and flex train runs, not {kind!r}")
    from cryo_napari.methods.vae.eval import load_vae_run

    run = load_vae_run(run_dir, epoch)
    decoder = run.config.get("decoder", "mlp")
    if method == "basis" or (method == "auto" and decoder == "basis"):
        from cryo_napari.methods.vae.refine import basis_refine_job

        res = yield from basis_refine_job(run, candidates, seed, batch_size, box)
        return (yield from _write(run.path, run.epoch, res, "basis"))
    res = yield from _vae_maps_job(run, centres, box, seed)
    return (yield from _write(run.path, run.epoch, res, "maps"))


__all__ = ["refine_run_latents_job"]
