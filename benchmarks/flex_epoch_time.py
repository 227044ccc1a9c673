"""Flex training step time at a given box, extrapolated to an epoch of N particles.

Times ``--batches`` optimiser steps of the real training loss (convection, projection, CTF,
rigidity, latent prior; forward + backward + three optimisers) on random images with a mesh of
``--cells`` over a synthetic map, after one warm-up step. Example (docs/benchmarks.md)::

    OMP_NUM_THREADS=1 python benchmarks/flex_epoch_time.py -D 64 --batches 3 --particles 10000
    OMP_NUM_THREADS=1 python benchmarks/flex_epoch_time.py -D 64 --batches 2 --profile 15   # where time goes
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-D", type=int, default=64)
    ap.add_argument("--cells", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--particles", type=int, default=10000)
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="also profile the timed steps (torch.profiler) and print the N ops with most self CPU time")
    a = ap.parse_args(argv)

    from cryo_napari.geometry.rotations import random_rotations
    from cryo_napari.methods.flex.mesh import make_tetramesh
    from cryo_napari.methods.flex.model import FlexModel, fourier_loss_mask, latent_prior
    from cryo_napari.methods.flex.train import DEFAULTS, _optimizers, image_loss
    from cryo_napari.simulate.heterogeneity import synthetic_map

    D, B = a.D, a.batch_size
    vol = synthetic_map(D, seed=3)
    t = time.time()
    mesh = make_tetramesh(vol, 2.0, cells=a.cells)
    t_mesh = time.time() - t
    model = FlexModel(mesh, D, B * (a.batches + 1), V0=vol)
    opts = _optimizers(model, DEFAULTS, float(vol.std()))
    kmask = fourier_loss_mask(D, 0.8 * D / 2)
    rng = np.random.default_rng(0)
    times = []
    prof = None
    for b in range(a.batches + 1):
        if b == 1 and a.profile:
            prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            prof.__enter__()
        ii = torch.arange(b * B, (b + 1) * B)
        y = torch.randn(B, D, D, dtype=torch.complex64) * D
        R = torch.as_tensor(random_rotations(B, rng), dtype=torch.float32)
        ctf = torch.ones(B, D, D)
        t = time.time()
        z = model.z_of(ii)
        disp = model.displacements(z + 0.15 * torch.randn_like(z))
        loss = (image_loss(model, y, R, ctf, disp, 1.0, kmask) + latent_prior(z, 20.0)).mean() \
            + 0.1 * model.rigidity_penalty(disp).mean()
        for o in opts.values():
            o.zero_grad()
        loss.backward()
        for o in opts.values():
            o.step()
        times.append(time.time() - t)
    if prof is not None:
        prof.__exit__(None, None, None)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.profile))
    step = float(np.median(times[1:]))
    rep = {"D": D, "cells": a.cells, "vertices": len(mesh.points), "tetrahedra": len(mesh.cells), "batch": B,
           "threads": torch.get_num_threads(), "mesh_s": round(t_mesh, 2), "step_s": round(step, 3),
           "per_particle_s": round(step / B, 4), f"epoch_s_{a.particles}": round(step / B * a.particles, 1)}
    print(json.dumps(rep))


if __name__ == "__main__":
    main()
