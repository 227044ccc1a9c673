"""Convergence diagnostics of a train-vae run: loss curve, latent shifts, marker-map agreement.

Writes RUN/convergence/ (or -o DIR): loss.png, latent_shifts.png, maps.png and convergence.json
with the numbers and a "looks converged from epoch N" verdict with its reasoning. Marker
particles are those nearest the k-means centres of the last epoch's latents (PCA space).
"""

from __future__ import annotations

from cryo_napari.jobs.protocol import run_in_terminal


def add_args(p):
    p.add_argument("run", help="train-vae run directory")
    p.add_argument("-o", "--outdir", help="output directory (default RUN/convergence)")
    p.add_argument("--every", type=int, default=1, help="generate marker maps every K epochs (default 1)")
    p.add_argument("--markers", type=int, default=10, help="number of marker particles (default 10)")
    p.add_argument("-D", dest="D", type=int, help="box of the marker maps (default: training box)")
    p.add_argument("--loss-tol", type=float, default=0.005, help="relative loss change per epoch (default 0.005)")
    p.add_argument("--shift-tol", type=float, default=0.1, help="median relative latent shift (default 0.1)")
    p.add_argument("--cc-tol", type=float, default=0.99, help="marker-map correlation (default 0.99)")


def make_job(args):
    from cryo_napari.methods.vae.convergence import convergence_job

    return convergence_job(args.run, args.every, args.markers, args.D, args.outdir, args.loss_tol, args.shift_tol,
                           args.cc_tol)


def main(args):
    res = run_in_terminal(make_job(args), desc="convergence")
    e = res["looks_converged_from_epoch"]
    print(f"looks converged from epoch {e}" if e else "not converged", "—", res["reasoning"])
    return 0
