"""3DFlex "Reconstruction": the canonical map at the full box with the flow frozen, and a rigid baseline.

For each half-set the canonical map ``V`` (full box) minimises, by L-BFGS (``torch.optim.LBFGS``,
``iters`` iterations, strong-Wolfe line search)::

    Σ_i Σ_{|k|<D/2} |CTF_i·FT(P_{R_i}[V(x − u_i(x))]) − Ŷ_i|² / (2 D² σ²) + λ Σ_x V(x)²

with ``u_i`` the trained flow of particle ``i`` evaluated at the full box (the mesh flow sampled at
every full-box voxel, displacements scaled by ``D_full / D_train``). The rigid baseline solves the
same problem with ``u = 0``. Both start from zero. Outputs: ``flex_half_{1,2}.mrc``,
``flex_map.mrc`` (mean of the halves), the same with ``rigid_``, ``fsc.txt`` (shell, 1/Å,
FSC flex, FSC rigid) and ``fsc.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cryo_napari.geometry.ctf import calculate_ctf_2d
from cryo_napari.geometry.fourier import fft_centered, phase_shift_2d
from cryo_napari.geometry.fsc import fsc, fsc_frequencies, resolution_at
from cryo_napari.io.mrc import write_mrc
from cryo_napari.io.particles import load_particles
from cryo_napari.jobs.atomic import write_text_atomic
from cryo_napari.jobs.protocol import Artifact, Job, Log, Metric, Progress
from cryo_napari.methods.flex.mesh import TetraMesh
from cryo_napari.methods.flex.mesh_voxels import voxel_barycentrics
from cryo_napari.methods.flex.model import (flow_from_displacements, project_convected, projection_points,
                                           projection_setup, support_mask)
from cryo_napari.methods.flex.prep import noise_sigma, read_prep


def solve_map(images, rot, shifts, ctf, flows, D: int, sigma: float, iters: int = 20, lam: float = 1e-3,
              batch: int = 64, V0=None, support=None):
    """L-BFGS solve for a (D, D, D) map; ``flows(ii)`` gives (B, 3, D, D, D) or None. Density is
    modelled inside ``support`` ((D, D, D) bool; None: the whole cube). Returns (V, loss)."""
    V = torch.zeros((D, D, D)) if V0 is None else torch.as_tensor(V0).clone()
    V.requires_grad_(True)
    if support is None:
        cull, (grid_r, grid_pix) = None, projection_points(D)
    else:
        support, cull, grid_r, grid_pix = projection_setup(support)
    k = torch.arange(D, dtype=torch.float32) - D // 2
    kmask = (k[:, None] ** 2 + k[None, :] ** 2) < (D / 2) ** 2
    n = len(images)
    opt = torch.optim.LBFGS([V], lr=1.0, max_iter=iters, history_size=10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        total = lam * V.square().sum()
        total.backward()
        val = float(total.detach())
        for b in range(0, n, batch):
            ii = np.arange(b, min(n, b + batch))
            y = phase_shift_2d(fft_centered(images[ii].to(torch.complex64), 2), shifts[ii])
            proj = project_convected(V if support is None else V * support, flows(ii), rot[ii], grid_r, grid_pix, cull)
            pred = fft_centered(proj.to(torch.complex64), 2) * ctf[ii]
            loss = (pred - y)[:, kmask].abs().square().sum() / (2 * D * D * sigma**2)
            loss.backward()
            val += float(loss.detach())
        return torch.tensor(val)

    loss = opt.step(closure)
    V = V.detach()
    return (V if support is None else V * support), float(loss)


def load_reconstruction_set(prep, max_particles: int | None = None) -> dict:
    """The particles of a ``flex prep`` folder at the full box, in PREP order (the first
    ``max_particles``), as the reconstruction reads them: {"images" (N, D, D) contrast as trained,
    "rot" (N, 3, 3), "shifts" (N, 2) px, "ctf" (N, D, D), "half" (N,) 0/1, "sigma" noise std,
    "D", "apix" Å/px, "sel" (N,) PREP indices}."""
    info = read_prep(prep)
    rows = np.load(Path(prep) / "indices.npy")
    pdata = load_particles(info["source_particles"], datadir=info.get("datadir"), poses=info.get("poses"),
                           ctf=info.get("ctf"), require_poses=True)
    sel = np.arange(len(rows)) if not max_particles else np.arange(min(max_particles, len(rows)))
    pdata = pdata.subset(rows[sel])
    half = load_particles(Path(prep) / "particles.star", with_images=False).half[sel]
    D = pdata.D
    images = torch.as_tensor(pdata.read_images()) * (-1.0 if info.get("uninvert") else 1.0)
    ctf = (calculate_ctf_2d(pdata.ctf.as_tensor(), D, pdata.apix) if pdata.ctf is not None
           else torch.ones(len(pdata), D, D))
    return {"images": images, "rot": torch.as_tensor(pdata.rotations, dtype=torch.float32),
            "shifts": torch.as_tensor(pdata.shifts_px, dtype=torch.float32), "ctf": ctf, "half": half,
            "sigma": noise_sigma(images.numpy()), "D": D, "apix": float(np.median(pdata.apix)), "sel": sel}


def flex_reconstruct_job(run, prep, out, iters: int = 20, lam: float = 1e-3, batch: int = 64,
                         epoch: int | None = None, max_particles: int | None = None, refined: bool = False) -> Job:
    """Flex and rigid half-map reconstructions at the full box (module docstring); ``refined`` uses the
    latents ``cryo-napari refine-z`` wrote instead of the encoder's."""
    from cryo_napari.methods.backproject import plot_fsc
    from cryo_napari.methods.flex.train import load_latents, load_trained

    model, cfg, step = load_trained(run, epoch)
    mesh = TetraMesh.from_pickle(cfg["mesh"])
    n_prep = len(np.load(Path(prep) / "indices.npy"))
    z = load_latents(run, step, refined)
    if len(z) != n_prep:
        raise ValueError(f"{len(z)} latents but {n_prep} particles in {prep}")
    data = load_reconstruction_set(prep, max_particles)
    z = z[data["sel"]]
    images, rot, shifts, ctf, half = (data[k] for k in ("images", "rot", "shifts", "ctf", "half"))
    D, apix, sigma = data["D"], data["apix"], data["sigma"]
    with torch.no_grad():
        disp = model.displacements(torch.as_tensor(z, dtype=torch.float32)) * (D / model.D)
    idx, cell, bary = voxel_barycentrics(mesh, D)
    idx_t, verts, bary_t = torch.as_tensor(idx), torch.as_tensor(mesh.cells[cell]), torch.as_tensor(bary, dtype=torch.float32)

    def flex_flows(ii):
        return flow_from_displacements(disp[ii], idx_t, verts, bary_t, D)

    support = support_mask(mesh, D)  # same support as training, at the full box
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    maps = {}
    yield Progress(0, 4, "solving")
    for kind, flows in (("flex", flex_flows), ("rigid", lambda ii: None)):
        for h in (0, 1):
            ii = np.nonzero(half == h)[0]
            V, loss = solve_map(images[ii], rot[ii], shifts[ii], ctf[ii], lambda jj, ii=ii, f=flows: f(ii[jj]), D,
                                sigma, iters, lam, batch, support=support)
            maps[(kind, h)] = V.numpy()
            write_mrc(out / f"{kind}_half_{h + 1}.mrc", maps[(kind, h)], apix)
            yield Metric(f"{kind}_half_{h + 1}_loss", loss, 0)
            yield Artifact("map", out / f"{kind}_half_{h + 1}.mrc")
            yield Progress(len(maps), 4, f"{kind} half {h + 1}")
        write_mrc(out / f"{kind}_map.mrc", 0.5 * (maps[(kind, 0)] + maps[(kind, 1)]), apix)
        yield Artifact("map", out / f"{kind}_map.mrc")
    curves = {k: fsc(maps[(k, 0)], maps[(k, 1)]) for k in ("flex", "rigid")}
    freqs = fsc_frequencies(D) / apix
    lines = ["# shell  frequency_1/A  fsc_flex  fsc_rigid"] + [
        f"{i:d} {f:.5f} {a:.5f} {b:.5f}" for i, (f, a, b) in enumerate(zip(freqs, curves["flex"], curves["rigid"]))]
    write_text_atomic(out / "fsc.txt", "\n".join(lines) + "\n")
    res = {k: resolution_at(c, D, apix, 0.143) for k, c in curves.items()}
    plot_fsc(out / "fsc.png", freqs, {f"flex ({res['flex']:.1f} Å)": curves["flex"],
                                      f"rigid ({res['rigid']:.1f} Å)": curves["rigid"]},
             title="half-map FSC (flex halves share the flow: optimistic)")
    yield Artifact("plot", out / "fsc.png")
    yield Log("info", f"half-map FSC 0.143: flex {res['flex']:.2f} Å, rigid {res['rigid']:.2f} Å (the flex halves "
                      "share the flow trained on all particles, so the flex figure reads optimistic)")
    return {"fsc": curves, "res_0143": res, "flex_map": out / "flex_map.mrc", "rigid_map": out / "rigid_map.mrc"}
