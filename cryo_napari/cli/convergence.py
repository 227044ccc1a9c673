"""Convergence diagnostics of a train-vae run (cryoDRGN protocol, Box 1): loss curve, latent
shifts, UMAP of the latents over epochs, and maps at UMAP local-maxima markers compared epoch to
epoch.

Writes RUN/convergence/ (or -o DIR): loss.png, latent_shifts.png, embeddings.png, sketch.png,
maps.png, embeddings/emb.N.npy and convergence.json with the numbers and a "looks converged from
epoch N" verdict with its reasoning. Markers: the particles in the 3×3 bins around the 10 highest
local maxima (after pruning) of the last evaluated epoch's UMAP density (30 bins, smoothed 1 bin),
followed back through the epochs as the on-data median latent of each set; their maps are masked
as cryoDRGN does before correlation and FSC.
"""

from __future__ import annotations

from cryo_napari.jobs.protocol import run_in_terminal


def add_args(p):
    p.add_argument("run", help="train-vae run directory")
    p.add_argument("-o", "--outdir", help="output directory (default RUN/convergence)")
    p.add_argument("--every", type=int, default=5,
                   help="embed the latents and generate marker maps every K epochs and at the last (default 5, "
                        "cryoDRGN's --epoch-interval)")
    p.add_argument("--markers", type=int, default=10, help="local maxima kept as markers (default 10)")
    p.add_argument("--embedding", choices=("umap", "pca"), default="umap",
                   help="2-D embedding for the markers (default umap; pca is fast, no umap-learn needed)")
    p.add_argument("--subset", type=int, default=50_000,
                   help="particles embedded (random subset, default 50000 as cryoDRGN)")
    p.add_argument("-D", dest="D", type=int, help="box of the marker maps (default: training box)")
    p.add_argument("--loss-tol", type=float, default=0.005, help="relative loss change per epoch (default 0.005)")
    p.add_argument("--shift-tol", type=float, default=0.1, help="median relative latent shift (default 0.1)")
    p.add_argument("--cc-tol", type=float, default=0.99, help="marker-map correlation (default 0.99)")


def make_job(args):
    from cryo_napari.methods.vae.convergence import convergence_job

    return convergence_job(args.run, args.every, args.markers, args.D, args.outdir, args.loss_tol, args.shift_tol,
                           args.cc_tol, args.embedding, args.subset)


def main(args):
    res = run_in_terminal(make_job(args), desc="convergence")
    e = res["looks_converged_from_epoch"]
    print(f"looks converged from epoch {e}" if e else "not converged", "—", res["reasoning"])
    return 0
