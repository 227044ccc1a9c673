"""Simulate a particle dataset with ground truth from one map or a series of maps.

Give several maps (or one .npy of shape (K, D, D, D)) for discrete states / a trajectory, or one
map with --preset to build a series from it: `domain-motion` (a peripheral domain swung from 0 to
--max-angle degrees over --frames frames, continuous), `discrete` (full / domain swung /
domain removed). Writes OUT/particles.mrcs, particles.star (RELION 3.1), particles.cs,
poses.pkl, ctf.pkl, ground_truth.npz (states, poses, maps, mean map) and maps/state_KK.mrc.
SNR = var(clean images) / noise variance over the whole stack.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cryo_napari.errors import InputError
from cryo_napari.geometry.fourier import fourier_crop_3d
from cryo_napari.io.mrc import read_mrc, write_mrc
from cryo_napari.simulate.heterogeneity import discrete_states, domain_motion_series, synthetic_map
from cryo_napari.jobs.protocol import run_in_terminal
from cryo_napari.simulate.particles import SimulationParams, simulate_job


def add_args(p):
    p.add_argument("maps", nargs="*", help=".mrc maps (one per state) or a (K,D,D,D) .npy; none with --synthetic")
    p.add_argument("-o", "--outdir", required=True)
    p.add_argument("-n", "--particles", type=int, default=1000, help="number of particles (default 1000)")
    p.add_argument("--snr", type=float, default=0.1, help="signal-to-noise ratio (default 0.1)")
    p.add_argument("--snr-region", choices=["box", "particle"], default="box",
                   help="signal variance over the whole box (cryoDRGN, default) or inside the particle's disc")
    p.add_argument("-D", "--box", type=int, help="Fourier-crop maps to this box first (even)")
    p.add_argument("--apix", type=float, help="pixel size in Å of the (cropped) maps (default: from the header)")
    p.add_argument("--preset", choices=["none", "domain-motion", "discrete"], default="none")
    p.add_argument("--frames", type=int, default=20, help="frames of the domain-motion trajectory")
    p.add_argument("--max-angle", type=float, default=15.0, help="domain swing in degrees (domain-motion)")
    p.add_argument("--synthetic", type=int, metavar="D", help="use a synthetic chiral map of box D")
    p.add_argument("--model", help="atomic model (.pdb/.cif): maps from Gaussian atoms (needs -D and --apix)")
    p.add_argument("--remove-chains", nargs="+", default=[], metavar="CHAIN",
                   help="with --model: add one state per chain with that chain removed (compositional)")
    p.add_argument("--defocus", type=float, nargs=2, default=(1.0, 3.0), metavar=("MIN", "MAX"), help="µm")
    p.add_argument("--shift-sigma", type=float, default=2.0, help="origin shift s.d. in pixels")
    p.add_argument("--scale-sigma", type=float, default=0.0, help="per-particle scale s.d. (0: all 1)")
    p.add_argument("--no-ctf", action="store_true")
    p.add_argument("--seed", type=int, default=0)


def load_maps(args) -> tuple[np.ndarray, float]:
    if args.model:
        from cryo_napari.simulate.atoms import chain_maps, read_model_atoms

        if not (args.box and args.apix):
            raise InputError(args.model, "--model needs -D (box) and --apix")
        cm = chain_maps(read_model_atoms(args.model), args.box, args.apix)
        missing = [c for c in args.remove_chains if c not in cm]
        if missing:
            raise InputError(args.model, f"no chain(s) {', '.join(missing)} (chains: {', '.join(cm)})")
        full = sum(cm.values())
        return np.stack([full] + [full - cm[c] for c in args.remove_chains]).astype(np.float32), args.apix
    if args.synthetic:
        return synthetic_map(args.synthetic, seed=args.seed)[None], args.apix or 3.0
    if not args.maps:
        raise InputError(None, "give at least one map, or --synthetic D")
    vols, apix = [], None
    for m in args.maps:
        if str(m).endswith(".npy"):
            arr = np.load(m)
            if arr.ndim != 4:
                raise InputError(m, f"expected (K, D, D, D), got {arr.shape}")
            vols += list(arr)
            continue
        v, a = read_mrc(m)
        if v.shape[0] != v.shape[1] or v.shape[1] != v.shape[2]:
            raise InputError(m, f"map must be cubic, got {v.shape}")
        vols.append(v)
        apix = apix or a
    shapes = {v.shape for v in vols}
    if len(shapes) > 1:
        raise InputError(args.maps[0], f"maps differ in shape: {sorted(shapes)}")
    maps = np.stack(vols).astype(np.float32)
    apix = apix or 1.0
    if args.box and args.box != maps.shape[-1]:
        apix *= maps.shape[-1] / args.box
        maps = np.stack([fourier_crop_3d(torch.as_tensor(v), args.box).numpy() for v in maps])
    return maps, args.apix or apix


def make_job(args):
    """The simulation job for these arguments (CLI and napari dock)."""
    maps, apix = load_maps(args)
    if maps.shape[-1] % 2:
        raise InputError(args.maps[0] if args.maps else None, f"box {maps.shape[-1]} is odd; use -D to crop to an even box")
    extra = {}
    if args.preset == "domain-motion":
        maps, angles, _ = domain_motion_series(maps[0], args.frames, args.max_angle)
        extra = {"trajectory_angle_deg": angles}
    elif args.preset == "discrete":
        maps, names, _ = discrete_states(maps[0])
        extra = {"state_names": np.array(names)}
    p = SimulationParams(n_particles=args.particles, snr=args.snr, apix=apix, defocus_min_um=args.defocus[0],
                         defocus_max_um=args.defocus[1], shift_sigma_px=args.shift_sigma, scale_sigma=args.scale_sigma,
                         seed=args.seed, ctf=not args.no_ctf, snr_region=args.snr_region)
    paths = yield from simulate_job(maps, args.outdir, p, extra_truth=extra)
    out = Path(args.outdir)
    for k, v in enumerate(maps):
        write_mrc(out / "maps" / f"state_{k:02d}.mrc", v, apix)
    return {"paths": paths, "n_states": len(maps), "box": maps.shape[-1], "apix": apix}


def main(args):
    res = run_in_terminal(make_job(args), desc="simulate")
    maps_n, box, apix = res["n_states"], res["box"], res["apix"]
    paths = res["paths"]
    print(f"{args.particles} particles, {maps_n} state(s), box {box}, {apix:.3g} Å/px, SNR {args.snr} → {paths['star']}")
    return 0
