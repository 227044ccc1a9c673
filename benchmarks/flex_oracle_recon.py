"""Flex reconstruction with oracle latents and with the true flow: where does flex fall short?

Takes an output folder of ``benchmarks/flex_hinge.py`` (simulated hinge, trained run, flex and rigid
reconstructions) and reconstructs the flex map once more with the run's own generator and canonical
map but each particle's latent replaced by the median latent of the particles in its true frame
("oracle": no particle is moved the wrong way by its own latent error), and with ``--true-flow``
once more with the ground-truth flow (the domain's true rigid motion from the zero latent's frame:
the best any flow model can do on these particles). Scores every map against the true map at the
zero latent's frame: in the moving domain's mask (moved there), on the domain alone
(:func:`cryo_napari.simulate.heterogeneity.domain_only_fsc`), in the static part and over the whole
box; writes ``OUT/oracle_report.json`` and prints a table.

    OMP_NUM_THREADS=1 python benchmarks/flex_oracle_recon.py /tmp/fhm60 --iters 6 --recon-particles 3000 --true-flow

Learned → oracle is what per-particle latent error costs; oracle → true flow what the generator
(its amplitude, its smooth shape) costs; true flow → rigid what flexible refinement can gain at all
(docs/flex.md, "What the domain mask scores …").
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from flex_hinge import masked_fsc, summary


def oracle_latents(z: np.ndarray, states: np.ndarray, n_frames: int) -> np.ndarray:
    """Each particle's latent (N, K) replaced by the median over the particles of its true frame."""
    zf = np.stack([np.median(z[states == f], 0) if (states == f).any() else np.zeros(z.shape[1])
                   for f in range(n_frames)])
    return zf[states].astype(np.float32)


def oracle_reconstruction(b: Path, ep: int, states: np.ndarray, n_frames: int, iters: int,
                          n_max: int | None) -> float:
    """``flex reconstruct --refined`` on a copy of the run (``b/run_oracle``) whose refined latents are
    the oracle latents; writes ``b/recon_oracle``. Returns the seconds it took."""
    from cryo_napari.cli.main import main as cli
    from cryo_napari.jobs.atomic import save_npy_atomic
    from cryo_napari.jobs.rundir import RunDir
    from cryo_napari.methods.flex.train import load_latents

    run_o = b / "run_oracle"
    if run_o.exists():
        shutil.rmtree(run_o)
    shutil.copytree(b / "run", run_o)
    rd = RunDir(run_o)
    zo = oracle_latents(load_latents(run_o, ep), states, n_frames)
    save_npy_atomic(rd.refined_latents_path(ep), zo)
    rd.mark_complete(rd.refined_latents_path(ep), ep)
    t = time.time()
    rec = ["flex", "reconstruct", str(run_o), "--prep", str(b / "prep"), "-o", str(b / "recon_oracle"),
           "--iters", str(iters), "--refined"]
    if n_max:
        rec += ["--max-particles", str(n_max)]
    assert cli(rec) == 0
    return time.time() - t


def true_flows(vol: np.ndarray, angles: np.ndarray, f0: int, radius_frac: float = 0.22, domain=None) -> np.ndarray:
    """Ground-truth backward flows (K, 3, D, D, D), xyz components in voxels, [z, y, x] indices, that
    take the true frame ``f0`` to each frame ``k`` by ``V_k(x) = V_f0(x − u_k(x))``: inside frame
    k's (soft) domain mask ``u_k(x) = (x − p) − R(a_f0) R(a_k)ᵀ (x − p)``, zero elsewhere
    (:func:`~cryo_napari.simulate.heterogeneity.rotate_about` conventions)."""
    from scipy.spatial.transform import Rotation

    from cryo_napari.simulate.heterogeneity import domain_mask, domain_mask_series, hinge_axis

    _, centre, pivot = domain_mask(vol, radius_frac=radius_frac) if domain is None else domain
    axis = hinge_axis(centre, pivot)
    masks = domain_mask_series(vol, angles, radius_frac, domain)
    D = vol.shape[-1]
    k = np.arange(D, dtype=np.float64)
    Z, Y, X = np.meshgrid(k, k, k, indexing="ij")
    xp = np.stack([X, Y, Z], -1) - pivot  # (D, D, D, 3) xyz relative to the pivot

    def rot(a):
        return Rotation.from_rotvec(np.deg2rad(a) * axis).as_matrix()

    out = np.empty((len(angles), 3, D, D, D), np.float32)
    for i, a in enumerate(angles):
        M = rot(angles[f0]) @ rot(a).T
        u = xp - xp @ M.T
        out[i] = np.moveaxis(u * masks[i][..., None], -1, 0)
    return out


def reconstruct_with_flows(bench: Path, flows_of_state: np.ndarray, states: np.ndarray, iters: int,
                           n_max: int | None, out: Path) -> np.ndarray:
    """Half-map solves of ``flex reconstruct`` (same data, support, regularisation) with each particle's
    flow taken from ``flows_of_state[state]``; writes ``out/flex_half_{1,2}.mrc`` and ``flex_map.mrc``."""
    import torch

    from cryo_napari.io.mrc import write_mrc
    from cryo_napari.methods.flex.mesh import TetraMesh
    from cryo_napari.methods.flex.model import support_mask
    from cryo_napari.methods.flex.reconstruct import load_reconstruction_set, solve_map
    from cryo_napari.methods.flex.train import load_trained

    _, cfg, _ = load_trained(bench / "run")
    mesh = TetraMesh.from_pickle(cfg["mesh"])
    data = load_reconstruction_set(bench / "prep", n_max)
    st = states[data["sel"]]
    images, rot, shifts, ctf, half = (data[k] for k in ("images", "rot", "shifts", "ctf", "half"))
    D, apix, sigma = data["D"], data["apix"], data["sigma"]
    F = torch.as_tensor(flows_of_state)
    support = support_mask(mesh, D)
    out.mkdir(parents=True, exist_ok=True)
    halves = []
    for h in (0, 1):
        ii = np.nonzero(half == h)[0]
        V, _ = solve_map(images[ii], rot[ii], shifts[ii], ctf[ii], lambda jj, ii=ii: F[st[ii[jj]]], D, sigma,
                         iters, 1e-3, 64, support=support)
        halves.append(V.numpy())
        write_mrc(out / f"flex_half_{h + 1}.mrc", halves[-1], apix)
    write_mrc(out / "flex_map.mrc", 0.5 * (halves[0] + halves[1]), apix)
    return 0.5 * (halves[0] + halves[1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", help="an output folder of flex_hinge.py")
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--recon-particles", type=int, default=None)
    ap.add_argument("--angle", type=float, default=None, help="the hinge angle of the run (default: its report)")
    ap.add_argument("--true-flow", action="store_true",
                    help="also solve with the ground-truth flow (the domain's true rigid motion from the zero "
                         "latent's frame): the best any flow model can do on this data")
    ap.add_argument("--reuse", action="store_true",
                    help="keep existing OUT/recon_oracle and OUT/recon_true_flow maps instead of solving again")
    a = ap.parse_args(argv)

    from cryo_napari.io.mrc import read_mrc
    from cryo_napari.methods.flex.train import load_trained
    from cryo_napari.simulate.heterogeneity import (domain_mask_series, domain_motion_series, domain_only_fsc,
                                                   domain_truth_parts)
    from flex_hinge import bench_map

    b = Path(a.bench)
    rep = json.loads((b / "report.json").read_text())
    args = rep["args"]
    vol, domain = bench_map(args["map"], args["D"], args["apix"], args.get("domain_chain"))
    radius = args.get("domain_radius", 0.22)  # reports written before the option had 0.22
    maps, angles, _ = domain_motion_series(vol, 20, a.angle if a.angle is not None else args["angle"], radius,
                                           domain)
    moved_dmask = domain_mask_series(vol, angles, radius, domain)
    truth = np.load(b / "sim" / "ground_truth.npz")
    rows = np.load(b / "prep" / "indices.npy")
    states = truth["states"][rows]

    _, _, ep = load_trained(b / "run")
    seconds = None
    if not (a.reuse and (b / "recon_oracle" / "flex_map.mrc").exists()):
        seconds = oracle_reconstruction(b, ep, states, len(maps), a.iters, a.recon_particles)

    f0 = rep["frame_of_zero_latent"]
    ref = maps[f0]
    recons = [("flex", b / "recon" / "flex_map.mrc"), ("oracle", b / "recon_oracle" / "flex_map.mrc"),
              ("rigid", b / "recon" / "rigid_map.mrc")]
    seconds_true = None
    if a.true_flow and not (a.reuse and (b / "recon_true_flow" / "flex_map.mrc").exists()):
        t = time.time()
        reconstruct_with_flows(b, true_flows(vol, angles, f0, radius, domain), states, a.iters, a.recon_particles,
                               b / "recon_true_flow")
        seconds_true = time.time() - t
    if a.true_flow:
        recons.insert(2, ("true_flow", b / "recon_true_flow" / "flex_map.mrc"))

    def soft(m):
        return ndimage.gaussian_filter(m.astype(np.float32), 1.0)

    moved = soft(ndimage.binary_dilation(moved_dmask[f0] > 0.1, iterations=2))
    static = soft(~ndimage.binary_dilation(moved_dmask.max(0) > 0.1, iterations=2))
    dom_truth, static_truth = domain_truth_parts(vol, [angles[f0]], radius, domain)
    dom_truth = dom_truth[0]
    out = {"bench": str(b), "frame_of_zero_latent": f0, "reconstruct_s": seconds,
           "abs_spearman_best": rep["abs_spearman_best"]}
    if a.true_flow:
        out["reconstruct_true_flow_s"] = seconds_true
    for name, path in recons:
        m = read_mrc(path)[0]
        for part, mask in (("moved_domain", moved), ("static", static), ("full", np.ones_like(ref))):
            c = masked_fsc(m, ref, mask)
            out[f"{part}_fsc_{name}"] = c.round(4).tolist()
            out[f"{part}_fsc_summary_{name}"] = summary(c)
        c = domain_only_fsc(m, static_truth, dom_truth, moved, static)
        out[f"domain_only_fsc_{name}"] = c.round(4).tolist()
        out[f"domain_only_fsc_summary_{name}"] = summary(c)
    (b / "oracle_report.json").write_text(json.dumps(out, indent=1))
    def band(c, lo, hi):
        return float(np.mean(c[lo:hi])) if len(c) > lo else float("nan")

    for part in ("moved_domain", "domain_only", "static", "full"):
        for name, _ in recons:
            c = out[f"{part}_fsc_{name}"]
            print(f"{part:12s} {name:9s} shells 8-16 {' '.join(f'{v:.3f}' for v in c[8:17])}  "
                  f"mean 1-16 {band(c, 1, 17):.3f}, 8-13 {band(c, 8, 14):.3f}, 14-16 {band(c, 14, 17):.3f}")


if __name__ == "__main__":
    main()
