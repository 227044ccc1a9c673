"""Flex (3DFlex family) on a simulated two-domain hinge: latent vs true angle, generator vs truth,
flex vs rigid reconstruction against ground truth in the moving domain.

Runs the five CLI jobs (simulate here, then flex prep → mesh → train → generate → reconstruct) and
prints one JSON report (also written to OUT/report.json). Example (docs/flex.md)::

    OMP_NUM_THREADS=1 python benchmarks/flex_hinge.py -o /tmp/flexbench -D 32 -n 2000 --snr 0.1 --epochs 8

On a real structure, chain B of an atomic model swung about its interface (docs/flex.md, "A real
structure")::

    OMP_NUM_THREADS=1 python benchmarks/flex_hinge.py -o /tmp/f4e43_30 -D 64 -n 3000 --snr 0.05 --apix 2 \
        --map ../shared/fixtures/models/4E43.pdb --domain-chain B --angle 30 --epochs 10 --cells 12
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.stats import spearmanr


def masked_fsc(a, b, mask):
    from cryo_napari.geometry.fsc import fsc

    return fsc(a * mask, b * mask)


def summary(curve):
    """Mean FSC over shells 1 … D/4 and over D/4 … D/2 (a curve of D/2 + 1 shells)."""
    n = len(curve) - 1
    return {"low": float(np.mean(curve[1 : n // 2 + 1])), "high": float(np.mean(curve[n // 2 + 1 :]))}


def bench_map(map_arg: str, D: int, apix: float, chain: str | None = None):
    """The benchmark's map (D, D, D) and its moving domain: the synthetic map; an .mrc map
    Fourier-cropped (or zero-padded) to D; or an atomic model (.pdb/.cif) as Gaussian atoms at
    ``apix``, where ``chain`` names the chain that swings (about the centre of its interface with the
    rest). Returns (map, domain): domain is None (:func:`domain_mask`'s peripheral domain) or the
    (mask, centre, pivot) of :func:`domain_from_maps`."""
    if map_arg == "synthetic":
        from cryo_napari.simulate.heterogeneity import synthetic_map

        return synthetic_map(D, seed=3), None
    if Path(map_arg).suffix.lower() in (".pdb", ".cif", ".ent"):
        from cryo_napari.simulate.atoms import chain_maps, read_model_atoms
        from cryo_napari.simulate.heterogeneity import domain_from_maps

        maps = chain_maps(read_model_atoms(map_arg), D, apix, 1.0)
        vol = sum(maps.values()).astype(np.float32)
        if chain is None:
            return vol, None
        if chain not in maps:
            raise SystemExit(f"{map_arg}: no chain {chain!r} (chains: {', '.join(sorted(maps))})")
        return vol, domain_from_maps(maps[chain], vol - maps[chain])
    import torch

    from cryo_napari.geometry.fourier import fourier_crop_3d
    from cryo_napari.io.mrc import read_mrc

    vol = read_mrc(map_arg)[0]
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise SystemExit(f"{map_arg}: a cubic map is needed, this one is {vol.shape}")
    if vol.shape[-1] < D:  # zero-pad in real space: the object keeps its size in pixels
        p = (D - vol.shape[-1]) // 2
        vol = np.pad(vol, [(p, D - vol.shape[-1] - p)] * 3)
    return fourier_crop_3d(torch.as_tensor(vol), D).numpy().astype(np.float32), None


def fitted_domain_rotation(model, mesh, zf, ok, angles, moved_dmask, vol, radius, domain) -> dict:
    """How far the generator turns the domain: a rigid fit (``fit_rigid_motion``) of the mesh vertices
    inside the domain (its mask at the zero latent's frame) at each true frame's median latent, signed
    along the true hinge axis, against the true angle relative to that frame. ``amplitude``: the
    least-squares slope fitted/true (1 = the full motion)."""
    import torch
    from scipy.spatial.transform import Rotation

    from cryo_napari.geometry.rotations import fit_rigid_motion
    from cryo_napari.methods.flex.model import mesh_points_in_box
    from cryo_napari.simulate.heterogeneity import domain_mask, hinge_axis

    _, centre, pivot = domain_mask(vol, radius_frac=radius) if domain is None else domain
    axis = hinge_axis(centre, pivot)
    frames = np.nonzero(ok)[0]
    f0 = int(frames[np.argmin(np.linalg.norm(zf[frames], axis=1))])
    P = mesh_points_in_box(mesh, model.D)
    ijk = np.clip(np.rint(P[:, ::-1]).astype(int), 0, model.D - 1)
    inside = moved_dmask[f0][tuple(ijk.T)] > 0.5
    with torch.no_grad():
        U = model.displacements(torch.as_tensor(zf[frames].astype(np.float32))).numpy()
    rows = []
    for f, u in zip(frames, U):
        R, _, rms = fit_rigid_motion(P[inside] - u[inside], P[inside])
        rv = Rotation.from_matrix(R).as_rotvec()
        rows.append({"frame": int(f), "true_deg": float(angles[f] - angles[f0]),
                     "fitted_deg": float(np.degrees(rv @ axis)), "nonrigid_rms_vox": rms})
    t = np.array([r["true_deg"] for r in rows])
    y = np.array([r["fitted_deg"] for r in rows])
    amp = float(t @ y / max(t @ t, 1e-12))
    return {"frames": rows, "amplitude": amp}


def latent_dilution(z, true_angle, zf, angles, ok) -> float:
    """How much a generator that reproduced E[angle | z] exactly would under-turn the domain at the
    frames' median latents, from the latent's scatter alone (regression dilution): the slope of the
    true angle on the latent over particles / its slope over the frames' median latents (one latent
    dimension, ``z`` (N,), ``zf`` (F,)). 1 for a noise-free latent; the fitted ``amplitude`` over this
    is what the model itself loses."""
    s_particles = np.polyfit(z, true_angle, 1)[0]
    s_frames = np.polyfit(zf[ok], angles[ok], 1)[0]
    return float(s_particles / s_frames)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("-D", type=int, default=32, help="box (particles and training)")
    ap.add_argument("-n", type=int, default=2000, help="particles")
    ap.add_argument("--snr", type=float, default=0.1)
    ap.add_argument("--apix", type=float, default=4.0)
    ap.add_argument("--map", default="synthetic",
                    help="'synthetic', an .mrc map (Fourier-cropped to D) or an atomic model .pdb/.cif (at --apix)")
    ap.add_argument("--domain-chain", default=None,
                    help="with a model: the chain that swings (default: the peripheral domain of --domain-radius)")
    ap.add_argument("--angle", type=float, default=15.0, help="largest hinge angle (degrees)")
    ap.add_argument("--domain-radius", type=float, default=0.22,
                    help="the moving domain: density within this fraction of the box of its peripheral tip")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("-K", type=int, default=1)
    ap.add_argument("--cells", type=int, default=8)
    ap.add_argument("--segments", action="store_true",
                    help="two-segment mesh: 1 = the region the domain sweeps over all frames, 0 = the rest")
    ap.add_argument("--fuse", default="0>1", help="fuse spec with --segments; 'none' leaves the domain unfused")
    ap.add_argument("--iters", type=int, default=10, help="reconstruction L-BFGS iterations")
    ap.add_argument("--recon-particles", type=int, default=None)
    ap.add_argument("--ceiling", type=int, default=0, metavar="N",
                    help="also the Bayes ceiling of |rho| from the true maps on the first N particles")
    ap.add_argument("--ceiling-only", action="store_true", help="simulate, compute the ceiling, stop")
    ap.add_argument("--seed", type=int, default=None,
                    help="seed of the simulated particles and of 'flex train' (default: particles 1, train's own)")
    ap.add_argument("--train-args", default="", help="extra 'flex train' arguments, e.g. '--noise 0.1'")
    ap.add_argument("--rescore", action="store_true",
                    help="skip simulation and the jobs; evaluate an earlier run in OUT (same arguments) again")
    a = ap.parse_args(argv)

    from cryo_napari.cli.main import main as cli
    from cryo_napari.io.mrc import read_mrc, write_mrc
    from cryo_napari.simulate.heterogeneity import (domain_mask_series, domain_motion_series, domain_only_fsc,
                                                   domain_truth_parts)
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    times = {}
    t = time.time()
    vol, domain = bench_map(a.map, a.D, a.apix, a.domain_chain)
    maps, angles, dmask = domain_motion_series(vol, 20, a.angle, a.domain_radius, domain)
    moved_dmask = domain_mask_series(vol, angles, a.domain_radius, domain)
    if a.rescore:  # the jobs ran before: evaluate their outputs only (with this version's metrics)
        paths = {"truth": out / "sim" / "ground_truth.npz", "star": out / "sim" / "particles.star"}
        if (out / "report.json").exists():  # keep the timings of the run that made the outputs
            times.update(json.loads((out / "report.json").read_text()).get("times_s", {}))
        for need in (paths["truth"], out / "run", out / "recon" / "flex_map.mrc", out / "recon" / "rigid_map.mrc"):
            if not Path(need).exists():
                raise SystemExit(f"--rescore: {need} is missing (run the benchmark without --rescore first)")
    else:
        paths = simulate_dataset(maps, out / "sim", SimulationParams(n_particles=a.n, snr=a.snr, apix=a.apix,
                                                                    seed=1 if a.seed is None else a.seed),
                                 extra_truth={"trajectory_angle_deg": angles})
        write_mrc(out / "consensus.mrc", maps.mean(0), a.apix)
        times["simulate"] = time.time() - t
    ceiling = None
    if a.ceiling or a.ceiling_only:
        t = time.time()
        from ceiling import ceiling_rho

        ceiling = ceiling_rho(paths["star"], maps, np.load(paths["truth"])["states"], 2 * a.apix, a.ceiling or 1000)
        times["ceiling"] = time.time() - t
        print(json.dumps({"ceiling": ceiling}), flush=True)
        if a.ceiling_only:
            return

    def step(name, args):
        if a.rescore:
            return
        t0 = time.time()
        assert cli(args) == 0, name
        times[name] = time.time() - t0

    step("prep", ["flex", "prep", str(paths["star"]), "-o", str(out / "prep"), "--train-box", str(a.D),
                  "--map", str(out / "consensus.mrc")])
    mesh_args = ["flex", "mesh", str(out / "consensus.mrc"), "-o", str(out / "mesh.pkl"), "--cells", str(a.cells),
                 "--preview", str(out / "mesh.vtk")]
    if a.segments and not a.rescore:
        write_mrc(out / "segments.mrc", (moved_dmask.max(0) > 0.5).astype(np.float32), a.apix)
        mesh_args += ["--segments", str(out / "segments.mrc")]
        if a.fuse != "none":
            mesh_args += ["--fuse", a.fuse]
    step("mesh", mesh_args)
    step("train", ["flex", "train", str(out / "prep"), "--mesh", str(out / "mesh.pkl"), "-o", str(out / "run"),
                   "-K", str(a.K), "--epochs", str(a.epochs), *a.train_args.split(),
                   *(["--seed", str(a.seed)] if a.seed is not None else [])])
    step("generate", ["flex", "generate", str(out / "run"), "-o", str(out / "gen"), "--frames", "11"])
    rec = ["flex", "reconstruct", str(out / "run"), "--prep", str(out / "prep"), "-o", str(out / "recon"),
           "--iters", str(a.iters)]
    if a.recon_particles:
        rec += ["--max-particles", str(a.recon_particles)]
    step("reconstruct", rec)

    # -- evaluation -------------------------------------------------------------------------------
    from cryo_napari.methods.flex.generate import generate_series
    from cryo_napari.methods.flex.mesh import TetraMesh
    from cryo_napari.methods.flex.train import load_trained

    truth = np.load(paths["truth"])
    states = truth["states"]
    true_angle = angles[states]
    model, cfg, ep = load_trained(out / "run")
    mesh = TetraMesh.from_pickle(cfg["mesh"])
    z = np.load(out / "run" / f"z.{ep}.npy")
    rho = [float(spearmanr(z[:, k], true_angle).statistic) for k in range(z.shape[1])]
    best = int(np.argmax(np.abs(rho)))
    zr_path = out / "run" / f"z.{ep}.refined.npy"  # flex train's final refine-z (or a later refine-z run)
    rho_refined = ([float(spearmanr(zr[:, k], true_angle).statistic) for k in range(zr.shape[1])]
                   if zr_path.exists() and len(zr := np.load(zr_path)) == len(z) else None)
    # latent of each true frame: median over its particles, all dims
    zf = np.stack([np.median(z[states == f], 0) if (states == f).any() else np.full(z.shape[1], np.nan)
                   for f in range(len(maps))])
    ok = np.isfinite(zf[:, 0])
    gen = generate_series(model, mesh, zf[ok].astype(np.float32))
    # how far the flow moves mesh vertices between the first and last frame's latents, in voxels of the
    # training box: in the region the domain sweeps (dilated 3 voxels) and in the static part (> 10
    # voxels from it), where the truth does not move at all
    import torch

    from cryo_napari.methods.flex.model import mesh_points_in_box

    swept = moved_dmask.max(0) > 0.1
    ijk = np.clip(np.rint(mesh_points_in_box(mesh, model.D)[:, ::-1]).astype(int), 0, model.D - 1)
    in_swept = ndimage.binary_dilation(swept, iterations=3)[tuple(ijk.T)]
    in_static = ~ndimage.binary_dilation(swept, iterations=10)[tuple(ijk.T)]
    ends = [f for f in (0, len(maps) - 1) if ok[f]]
    with torch.no_grad():
        d = model.displacements(torch.as_tensor(zf[ends].astype(np.float32))).numpy()
    move = np.linalg.norm(d[-1] - d[0], axis=1) if len(ends) == 2 else np.full(len(ijk), np.nan)
    canonical = model.V.detach().numpy()
    dilution = latent_dilution(z[:, best], true_angle, zf[:, best], angles, ok)
    domain_rotation = fitted_domain_rotation(model, mesh, zf, ok, angles, moved_dmask, vol, a.domain_radius, domain)
    # "domain" masks: the frame-0 domain dilated (fixed; used up to 2026-12-01), and the domain where it
    # is in each frame (moved with it; the fixed mask scores a 60° swing partly on vacated solvent and
    # static density); "static": outside every frame's domain
    dom = ndimage.gaussian_filter(ndimage.binary_dilation(np.max([dmask, *[np.roll(dmask, s, ax) for s in (-2, 2)
                                                                              for ax in range(3)]], 0) > 0.1,
                                                          iterations=2).astype(np.float32), 1.0)

    def soft(m):
        return ndimage.gaussian_filter(m.astype(np.float32), 1.0)

    moved = [soft(ndimage.binary_dilation(m > 0.1, iterations=2)) for m in moved_dmask]
    static = soft(~ndimage.binary_dilation(moved_dmask.max(0) > 0.1, iterations=2))
    frames = np.nonzero(ok)[0]
    gen_fsc = [summary(masked_fsc(g, maps[f], dom)) for g, f in zip(gen, frames)]
    can_fsc = [summary(masked_fsc(canonical, maps[f], dom)) for f in frames]
    gen_fsc_moved = [summary(masked_fsc(g, maps[f], moved[f])) for g, f in zip(gen, frames)]
    can_fsc_moved = [summary(masked_fsc(canonical, maps[f], moved[f])) for f in frames]
    # the domain alone where it is in each frame, and the static part alone (domain_motion_series's split)
    dom_truths, static_truth = domain_truth_parts(vol, angles, a.domain_radius, domain)
    gen_fsc_dom = [summary(domain_only_fsc(g, static_truth, dom_truths[f], moved[f], static))
                   for g, f in zip(gen, frames)]
    can_fsc_dom = [summary(domain_only_fsc(canonical, static_truth, dom_truths[f], moved[f], static)) for f in frames]
    # the state of the zero latent: the frame whose median latent is nearest to 0
    f0 = int(np.nanargmin(np.linalg.norm(zf, axis=1)))
    flex_map, _ = read_mrc(out / "recon" / "flex_map.mrc")
    rigid_map, _ = read_mrc(out / "recon" / "rigid_map.mrc")
    ref = maps[f0]
    rep = {
        "args": vars(a), "times_s": times, "epoch": ep, "ceiling": ceiling,
        "spearman_per_dim": rho, "abs_spearman_best": abs(rho[best]),
        "spearman_per_dim_refined": rho_refined,
        "abs_spearman_best_refined": None if rho_refined is None else max(abs(r) for r in rho_refined),
        "vertex_move_first_to_last_frame_vox": {
            "swept_mean": float(move[in_swept].mean()), "swept_max": float(move[in_swept].max()),
            "static_mean": float(move[in_static].mean()), "static_max": float(move[in_static].max()),
            "n_swept": int(in_swept.sum()), "n_static": int(in_static.sum())},
        "domain_rotation_per_frame": domain_rotation["frames"],
        "domain_rotation_amplitude": domain_rotation["amplitude"],
        "latent_dilution": dilution,
        "domain_rotation_amplitude_over_dilution": domain_rotation["amplitude"] / dilution,
        "frame_of_zero_latent": f0, "angle_of_zero_latent": float(angles[f0]),
        "generated_vs_truth_domain_fsc_mean": {k: float(np.mean([g[k] for g in gen_fsc])) for k in ("low", "high")},
        "canonical_vs_truth_domain_fsc_mean": {k: float(np.mean([g[k] for g in can_fsc])) for k in ("low", "high")},
        "generated_vs_truth_moved_domain_fsc_mean": {k: float(np.mean([g[k] for g in gen_fsc_moved]))
                                                     for k in ("low", "high")},
        "canonical_vs_truth_moved_domain_fsc_mean": {k: float(np.mean([g[k] for g in can_fsc_moved]))
                                                     for k in ("low", "high")},
        "generated_vs_truth_domain_only_fsc_mean": {k: float(np.mean([g[k] for g in gen_fsc_dom]))
                                                    for k in ("low", "high")},
        "canonical_vs_truth_domain_only_fsc_mean": {k: float(np.mean([g[k] for g in can_fsc_dom]))
                                                    for k in ("low", "high")},
        "domain_only_fsc_per_frame": [{"frame": int(f), "generated": g, "canonical": c}
                                      for f, g, c in zip(frames, gen_fsc_dom, can_fsc_dom)],
        "domain_fsc_flex_vs_truth_f0": masked_fsc(flex_map, ref, dom).round(4).tolist(),
        "domain_fsc_rigid_vs_truth_f0": masked_fsc(rigid_map, ref, dom).round(4).tolist(),
        "domain_fsc_rigid_vs_truth_mean_map": masked_fsc(rigid_map, truth["mean_map"], dom).round(4).tolist(),
        "moved_domain_fsc_flex_vs_truth_f0": masked_fsc(flex_map, ref, moved[f0]).round(4).tolist(),
        "moved_domain_fsc_rigid_vs_truth_f0": masked_fsc(rigid_map, ref, moved[f0]).round(4).tolist(),
        "domain_only_fsc_flex_vs_truth_f0": domain_only_fsc(flex_map, static_truth, dom_truths[f0], moved[f0],
                                                            static).round(4).tolist(),
        "domain_only_fsc_rigid_vs_truth_f0": domain_only_fsc(rigid_map, static_truth, dom_truths[f0], moved[f0],
                                                             static).round(4).tolist(),
        "static_fsc_flex_vs_truth_f0": masked_fsc(flex_map, ref, static).round(4).tolist(),
        "static_fsc_rigid_vs_truth_f0": masked_fsc(rigid_map, ref, static).round(4).tolist(),
        "fsc_flex_vs_truth_f0_full": masked_fsc(flex_map, ref, np.ones_like(ref)).round(4).tolist(),
        "fsc_rigid_vs_truth_f0_full": masked_fsc(rigid_map, ref, np.ones_like(ref)).round(4).tolist(),
        "metrics_last": json.loads((out / "run" / "metrics.jsonl").read_text().splitlines()[-1]),
    }
    for k in ("domain_fsc_flex_vs_truth_f0", "domain_fsc_rigid_vs_truth_f0", "domain_fsc_rigid_vs_truth_mean_map",
              "moved_domain_fsc_flex_vs_truth_f0", "moved_domain_fsc_rigid_vs_truth_f0",
              "domain_only_fsc_flex_vs_truth_f0", "domain_only_fsc_rigid_vs_truth_f0",
              "static_fsc_flex_vs_truth_f0", "static_fsc_rigid_vs_truth_f0"):
        rep[k.replace("fsc", "fsc_summary")] = summary(np.array(rep[k]))
    (out / "report.json").write_text(json.dumps(rep, indent=1))
    print(json.dumps(rep, indent=1))


if __name__ == "__main__":
    main()
