"""Per-particle colourings for a loaded run: defocus, scale and (simulated data) the true state.

:func:`particle_values` reads the metadata (no images) of the particle file a run was trained on
(``run.config['particles']`` / ``run.particles``, with its ``ind`` subset) and returns arrays in
the run's particle order, ready for :meth:`LatentExplorer.add_values`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _config(run) -> dict:
    cfg = getattr(run, "config", None)
    return cfg if isinstance(cfg, dict) else {}


def particle_values(run, n: int) -> dict[str, np.ndarray]:
    """Per-particle arrays (n,) of the run's particles, or ``{}`` when they are unknown.

    Parameters
    ----------
    run : a loaded run with ``particles`` / ``config`` (``particles``, ``datadir``, ``ind``).
    n : number of latents shown; arrays of another length are dropped.

    Returns
    -------
    dict
        ``"defocus (Å)"`` — mean of defocus U and V (Å); ``"scale"`` — per-particle scale
        (cryoSPARC ``alpha``, 1 otherwise); ``"true state"`` and ``"true scale"`` — from a
        ``ground_truth.npz`` beside the particle file (our simulator), when present.
    """
    from cryo_napari.io.particles import load_particles

    cfg = _config(run)
    particles = getattr(run, "particles", None) or cfg.get("particles")
    if not particles or not Path(particles).is_file():
        return {}
    ind = getattr(run, "ind", None) or cfg.get("ind")
    pdata = load_particles(particles, datadir=cfg.get("datadir"), ind=ind, with_images=False)
    if len(pdata) != n:
        return {}
    out: dict[str, np.ndarray] = {}
    if pdata.ctf is not None:
        out["defocus (Å)"] = 0.5 * (np.asarray(pdata.ctf.defocus_u_A, np.float64)
                                    + np.asarray(pdata.ctf.defocus_v_A, np.float64))
    scale = np.asarray(pdata.scale, np.float64)
    if scale.size == n:
        out["scale"] = scale
    truth = Path(particles).parent / "ground_truth.npz"
    if truth.is_file():
        with np.load(truth) as gt:
            if "states" in gt.files:
                states = np.asarray(gt["states"])
                rows = pdata.source_index if pdata.source_index is not None else np.arange(n)
                if len(states) > int(np.max(rows)):
                    out["true state"] = states[rows]
            if "scale" in gt.files:
                true_scale = np.asarray(gt["scale"], np.float64)
                rows = pdata.source_index if pdata.source_index is not None else np.arange(n)
                if len(true_scale) > int(np.max(rows)) and np.ptp(true_scale) > 0:
                    out["true scale"] = true_scale[rows]
    return out
