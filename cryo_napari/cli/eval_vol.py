"""Generate maps from a trained VAE run at latent points: one DIR/vol_XXX.mrc per point.

Latent points come from --z (zdim values per point, concatenated), --z-file (an (M, zdim) .npy
or text file) or --particles (rows of the run's z.N.npy, i.e. positions within the trained
subset). -D below the training box gives low-resolution previews (larger pixel size). --apix
overrides the training pixel size recorded in the run. Writes DIR/z_values.txt too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryo_napari.errors import InputError
from cryo_napari.jobs.protocol import Artifact, Progress, run_in_terminal


def add_args(p):
    p.add_argument("run", help="run directory (train-vae, flex train or cryoDRGN)")
    p.add_argument("--epoch", type=int, help="epoch (default: the latest complete one)")
    p.add_argument("--refined", action="store_true",
                   help="use the latents `cryo-napari refine-z` wrote (z.N.refined.npy) instead of the encoder's")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--z", type=float, nargs="+", help="latent point(s): zdim values each")
    g.add_argument("--z-file", help="(M, zdim) latent points, .npy or text")
    g.add_argument("--particles", type=int, nargs="+", metavar="I", help="use the latents of these particles")
    p.add_argument("-o", "--outdir", required=True, help="output directory")
    p.add_argument("-D", dest="D", type=int, help="box of the generated maps (even, ≤ training box)")
    p.add_argument("--flip", action="store_true", help="flip handedness")
    p.add_argument("--apix", type=float, help="pixel size (Å) of the training box (default: from the run)")


def open_run(path, epoch=None, apix=None, refined: bool = False):
    """The run at ``epoch``: through cryo_napari.analysis.runs when present, else our VAE loader.

    ``apix`` (Å) overrides the training pixel size recorded in the run.
    """
    try:
        from cryo_napari.analysis.runs import load_latent_run
    except ImportError:
        from cryo_napari.methods.vae.eval import load_vae_run

        run = load_vae_run(path, epoch, "refined" if refined else "encoder")
        if apix:
            run.apix = float(apix)
        return run
    return load_latent_run(path, epoch, apix, refined=refined)


def latent_points(args, run) -> np.ndarray:
    zdim = int(run.zdim)
    if args.z is not None:
        z = np.asarray(args.z, dtype=np.float32)
        if len(z) % zdim:
            raise InputError(None, f"--z got {len(z)} values, not a multiple of zdim {zdim}")
        return z.reshape(-1, zdim)
    if args.z_file is not None:
        f = Path(args.z_file)
        if not f.exists():
            raise InputError(f, "file not found")
        try:
            z = np.load(f) if f.suffix == ".npy" else np.loadtxt(f, ndmin=2)
        except (ValueError, OSError) as exc:
            raise InputError(f, f"unreadable latent file ({str(exc).splitlines()[0][:100]})") from None
        z = np.atleast_2d(np.asarray(z, dtype=np.float32))
        if z.ndim != 2 or z.shape[1] != zdim or not np.isfinite(z).all():
            raise InputError(f, f"expected finite (M, {zdim}) latent points, got shape {z.shape}")
        return z
    ind = np.asarray(args.particles)
    n = len(run.z)
    if ind.min() < 0 or ind.max() >= n:
        raise InputError(Path(args.run), f"particle index {int(ind.max() if ind.max() >= n else ind.min())} out of range for {n}")
    return np.asarray(run.z, dtype=np.float32)[ind]


def make_job(args):
    """Job: write one map per latent point; returns the list of paths."""
    from cryo_napari.io.mrc import write_mrc
    from cryo_napari.jobs.atomic import write_text_atomic

    run = open_run(args.run, args.epoch, args.apix, refined=args.refined)
    z = latent_points(args, run)
    D = args.D or int(run.D)
    apix = run.apix_at(D) if hasattr(run, "apix_at") else float(run.apix) * int(run.D) / D
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    yield Progress(0, len(z), "generating")
    for i, zi in enumerate(z):
        vol = run.generate_volumes(zi[None], D, flip=args.flip)[0]
        p = out / f"vol_{i:03d}.mrc"
        write_mrc(p, vol, apix)
        paths.append(p)
        yield Artifact("map", p)
        yield Progress(i + 1, len(z), "generating")
    write_text_atomic(out / "z_values.txt", "\n".join(" ".join(f"{v:.6g}" for v in zi) for zi in z) + "\n")
    return paths


def main(args):
    paths = run_in_terminal(make_job(args), desc="eval-vol")
    print(f"wrote {len(paths)} map(s) to {args.outdir}")
    return 0
