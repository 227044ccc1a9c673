"""Flexible refinement (3DFlex family): prep, mesh, train, generate, reconstruct.

  cryo-napari flex prep particles.star -o PREP [--train-box 128] [--map consensus.mrc]
  cryo-napari flex mesh consensus.mrc -o mesh.pkl [--cells 20] [--segments seg.mrc --fuse "0>1,1>2"]
  cryo-napari flex train PREP --mesh mesh.pkl -o RUN [-K 2] [--epochs 20] [--load latest]
  cryo-napari flex generate RUN -o SERIES [--frames 41] [--path points.npy] [--map highres.mrc]
  cryo-napari flex reconstruct RUN --prep PREP -o RECON [--iters 20]

The model is cryoSPARC 3DFlex's: a canonical map convected by a flow generated from a per-particle
latent through a tetrahedral mesh, with a rigidity prior. See docs/flex.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryo_napari.jobs.protocol import Log, run_in_terminal

SUBCOMMANDS = ("prep", "mesh", "train", "generate", "reconstruct")


def add_args(p):
    sub = p.add_subparsers(dest="flex_command", metavar="STEP", required=True)

    s = sub.add_parser("prep", help="Fourier-crop particles to the training box (3DFlex Data Prep)")
    s.add_argument("particles", help="particles: .star, .cs, or .mrcs/.txt stack (then give --poses, --ctf)")
    s.add_argument("--poses", help="cryoDRGN poses.pkl (overrides poses in the particle file)")
    s.add_argument("--ctf", help="cryoDRGN ctf.pkl (for stacks)")
    s.add_argument("--ind", help="particle indices to use (.npy, .pkl, or text)")
    s.add_argument("--datadir", help="directory to find image stacks named in the particle file")
    s.add_argument("-o", "--outdir", required=True, help="output PREP directory")
    s.add_argument("--train-box", type=int, default=128, help="training box in pixels (default 128)")
    s.add_argument("--max-particles", type=int, help="use at most N particles (a random subset)")
    s.add_argument("--map", help="consensus map at the particle box (default: back-project the particles)")
    s.add_argument("--uninvert", action="store_true", help="the stack has dark particles")
    s.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("mesh", help="tetrahedral mesh over a consensus map (3DFlex Mesh Prep)")
    s.add_argument("map", help="consensus map (.mrc)")
    s.add_argument("-o", "--out", required=True, help="output mesh pickle (.pkl, cryoSPARC schema)")
    s.add_argument("--mask", help="solvent mask (.mrc); default: made from the map")
    s.add_argument("--threshold", type=float, default=0.15,
                   help="mask threshold as a fraction of the 10 Å low-passed map's maximum (default 0.15)")
    s.add_argument("--cells", type=int, default=20, help="mesh cubes across the box (default 20)")
    s.add_argument("--segments", help="label volume (.mrc) for a custom topology")
    s.add_argument("--fuse", help='segments to fuse, a tree "PARENT>CHILD,...", e.g. "0>3,0>4,3>2"')
    s.add_argument("--rigid", type=int, nargs="*", default=[], help="segments made rigid (weight 20)")
    s.add_argument("--rigidity-min", type=float, default=0.5, help="rigidity weight of empty cells (default 0.5)")
    s.add_argument("--stiffen-periphery", type=float, default=3.0, help="weight factor of boundary cells (default 3)")
    s.add_argument("--preview", help="also write a preview (.vtk tetrahedra or .ply surface)")

    s = sub.add_parser("train", help="train the flex model (3DFlex Training)")
    s.add_argument("prep", help="PREP directory from 'flex prep'")
    s.add_argument("--mesh", required=True, help="mesh pickle from 'flex mesh' (or cryoSPARC)")
    s.add_argument("-o", "--outdir", required=True, help="output RUN directory")
    s.add_argument("-K", type=int, default=2, help="latent dimensions (default 2)")
    s.add_argument("--epochs", type=int, default=20,
                   help="epochs of the annealing schedule (default 20); with many particles its ramp is capped by "
                        "--ramp-visits and the rest of these epochs run at the final settings")
    s.add_argument("--extra-epochs", type=int, default=0, help="epochs at the final settings (default 0)")
    s.add_argument("--ramp-visits", type=int, default=30_000,
                   help="cap the learning-rate / loss-band ramp at this many particle visits (default 30000; 0: "
                        "ramp over all --epochs). A 100,000-visit ramp left 10,000 particles without the motion; "
                        "docs/flex.md")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--lr", type=float, default=5e-3, help="generator learning rate (default 5e-3)")
    s.add_argument("--lr-map", type=float, default=0.02, help="canonical map learning rate × map std (default 0.02)")
    s.add_argument("--lr-z", type=float, default=0.1, help="auto-decoded latent learning rate (default 0.1)")
    s.add_argument("--latent", choices=("encoder", "autodecode"), default="encoder",
                   help="latents from an image encoder (default) or auto-decoded per particle")
    s.add_argument("--lr-enc", type=float, default=3e-3, help="encoder learning rate (default 3e-3)")
    s.add_argument("--enc-hidden", type=int, default=128, help="encoder width (default 128)")
    s.add_argument("--enc-box", type=int, default=0,
                   help="Fourier-crop the encoder's input images to this even box (a low-pass; default 0: the "
                        "training box)")
    s.add_argument("--hidden", type=int, default=64, help="generator width (default 64)")
    s.add_argument("--layers", type=int, default=6, help="generator hidden layers (default 6)")
    s.add_argument("--noise", type=float, default=0.05,
                   help="latent noise injection (default 0.05; cryoSPARC uses 0.15)")
    s.add_argument("--center-lam", type=float, default=1.0,
                   help="latent-centering prior strength (default 1; cryoSPARC uses 20)")
    s.add_argument("--rigidity", type=float, default=0.1,
                   help="rigidity prior strength λ (default 0.1; cryoSPARC uses 2; the prior sums over "
                        "tetrahedra, so a finer mesh weighs it more)")
    s.add_argument("--load", help="'latest' or a weights.N.pt to resume from")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--refine-z", action=argparse.BooleanOptionalAction, default=True,
                   help="end training by refining the final latents by the trained model, as `cryo-napari refine-z` "
                        "(z.N.refined.npy, read by --refined; default on, --no-refine-z skips)")
    s.add_argument("--refine-box", type=int,
                   help="working box of the final latent refinement (even; default half the training box, ≥ 16)")
    s.add_argument("--refine-centres", type=int, default=64,
                   help="latent centres (maps) of the final latent refinement (default 64)")

    s = sub.add_parser("generate", help="volume series along latent axes or a path (3DFlex Generator)")
    s.add_argument("run", help="RUN directory from 'flex train' (may still be training)")
    s.add_argument("-o", "--outdir", required=True, help="output directory")
    s.add_argument("--frames", type=int, default=41, help="frames per axis, odd (default 41)")
    s.add_argument("--path", help="(F, K) latents (.npy) instead of the axes")
    s.add_argument("--map", help="high-resolution map to deform instead of the canonical map")
    s.add_argument("--epoch", type=int, help="checkpoint epoch (default: latest complete)")
    s.add_argument("--refined", action="store_true",
                   help="span the axes by the latents `cryo-napari refine-z` wrote (z.N.refined.npy)")
    s.add_argument("--interp", choices=("cubic", "linear"), default="cubic",
                   help="interpolation of the convected map: cubic B-spline (default; keeps high-resolution "
                        "detail where the map moves) or trilinear (as in training; faster on large boxes)")

    s = sub.add_parser("reconstruct", help="flex and rigid half-map reconstructions (3DFlex Reconstruction)")
    s.add_argument("run", help="RUN directory from 'flex train'")
    s.add_argument("--prep", required=True, help="PREP directory used for training")
    s.add_argument("-o", "--outdir", required=True, help="output directory")
    s.add_argument("--iters", type=int, default=20, help="L-BFGS iterations per half (default 20)")
    s.add_argument("--lam", type=float, default=1e-3, help="Tikhonov regularisation λ (default 1e-3)")
    s.add_argument("--batch", type=int, default=64)
    s.add_argument("--epoch", type=int, help="checkpoint epoch (default: latest complete)")
    s.add_argument("--max-particles", type=int, help="use only the first N particles")
    s.add_argument("--refined", action="store_true",
                   help="deform by the latents `cryo-napari refine-z` wrote (z.N.refined.npy) instead of the encoder's")


def _mesh_job(args):
    import numpy as np

    from cryo_napari.errors import InputError
    from cryo_napari.io.mrc import read_mrc
    from cryo_napari.jobs.protocol import Artifact, Progress
    from cryo_napari.methods.flex.mesh import make_tetramesh

    yield Progress(0, 1, "meshing")
    vol, apix = read_mrc(args.map)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise InputError(args.map, f"expected a cubic map, got shape {vol.shape}")
    mask = seg = None
    if args.mask:
        mask, _ = read_mrc(args.mask)
        if mask.shape != vol.shape:
            raise InputError(args.mask, f"mask shape {mask.shape} differs from the map {vol.shape}")
    if args.segments:
        seg, _ = read_mrc(args.segments)
        if seg.shape != vol.shape:
            raise InputError(args.segments, f"label volume shape {seg.shape} differs from the map {vol.shape}")
        if not np.allclose(seg, np.rint(seg)):
            raise InputError(args.segments, "label volume must hold integer labels")
    elif args.fuse:
        raise InputError("--fuse", "needs --segments")
    try:
        mesh = make_tetramesh(vol, apix, mask, args.cells, seg, args.fuse, tuple(args.rigid), args.rigidity_min,
                              args.stiffen_periphery, args.threshold)
    except ValueError as exc:
        raise InputError(args.mask or args.map, str(exc)) from None
    mesh.to_pickle(args.out)
    yield Artifact("mesh", Path(args.out))
    if args.preview:
        mesh.write_preview(args.preview)
        yield Artifact("mesh", Path(args.preview))
    yield Log("info", f"mesh: {len(mesh.points)} vertices, {len(mesh.cells)} tetrahedra, "
                      f"{len(np.unique(mesh.cell_segment))} segment(s) → {args.out}")
    yield Progress(1, 1, "done")
    return mesh


def make_job(args):
    """The job (generator) for ``args.flex_command``; the CLI and the napari dock both run it."""
    cmd = args.flex_command
    if cmd == "prep":
        from cryo_napari.methods.flex.prep import flex_prep_job

        return flex_prep_job(args.particles, args.outdir, args.train_box, args.max_particles, args.map,
                             args.datadir, args.poses, args.ctf, args.ind, args.uninvert, args.seed)
    if cmd == "mesh":
        return _mesh_job(args)
    if cmd == "train":
        from cryo_napari.methods.flex.train import flex_train_job

        cfg = dict(prep=args.prep, mesh=args.mesh, outdir=args.outdir, K=args.K, epochs=args.epochs,
                   extra_epochs=args.extra_epochs, ramp_visits=args.ramp_visits, batch_size=args.batch_size,
                   lr=args.lr, lr_map=args.lr_map,
                   lr_z=args.lr_z, hidden=args.hidden, layers=args.layers, noise=args.noise,
                   center_lam=args.center_lam, rigidity=args.rigidity, load=args.load, seed=args.seed,
                   latent=args.latent, lr_enc=args.lr_enc, enc_hidden=args.enc_hidden,
                   enc_box=args.enc_box, refine_z=args.refine_z, refine_box=args.refine_box,
                   refine_centres=args.refine_centres)
        return flex_train_job(cfg)
    if cmd == "generate":
        from cryo_napari.methods.flex.generate import flex_generate_job

        return flex_generate_job(args.run, args.outdir, args.frames, args.path, args.map, args.epoch, args.refined,
                                 args.interp)
    if cmd == "reconstruct":
        from cryo_napari.methods.flex.reconstruct import flex_reconstruct_job

        return flex_reconstruct_job(args.run, args.prep, args.outdir, args.iters, args.lam, args.batch, args.epoch,
                                    args.max_particles, args.refined)
    raise ValueError(f"unknown flex step {cmd!r} (expected one of {', '.join(SUBCOMMANDS)})")


def main(args):
    import torch

    torch.set_num_threads(min(torch.get_num_threads(), 8))
    res = run_in_terminal(make_job(args), desc=f"flex {args.flex_command}")
    if args.flex_command == "reconstruct":
        r = res["res_0143"]
        print(f"half-map FSC 0.143: flex {r['flex']:.2f} Å, rigid {r['rigid']:.2f} Å → {res['flex_map']}")
    elif args.flex_command == "train":
        print(f"trained to epoch {res['epoch']} → {res['run']}")
        if res.get("z_refined"):
            print(f"refined latents → {res['z_refined']} (read with --refined: flex generate/reconstruct, analyze, "
                  "filter, traverse)")
        else:  # the encoder's latent trails the posterior over the trained generator's maps (docs/flex.md)
            print(f"next: cryo-napari refine-z {res['run']} (sharper latents; then reconstruct/generate --refined)")
    return 0
