"""Analyse the latents of a run: PCA, UMAP, k-means, maps at cluster centres and along PCs.

RUN is a train-vae run directory, a cryoDRGN run directory (config.yaml, weights.pkl, z.pkl) or a
bare z.npy / z.pkl (no maps then). Writes to -o (default RUN/analyze.EPOCH): pca/umap scatter and
density PNGs coloured by k-means cluster (explained variance on the axes), labels.npy,
centers.txt, centers_ind.txt (on-data centres: the particle nearest each centre),
kmeansK/vol_XXX.mrc, pcJ/vol_XXX.mrc (1st to 99th percentile along PC J, on-data) and an
executable notebook analysis.ipynb. UMAP on more than 100,000 particles is fit on a subsample and
the rest placed with transform (logged).
"""

from __future__ import annotations

from cryo_napari.jobs.protocol import run_in_terminal


def add_args(p):
    p.add_argument("run", help="run directory (train-vae, flex train or cryoDRGN) or a z.npy / z.pkl file")
    p.add_argument("--epoch", type=int, help="epoch (default: the latest complete one / cryoDRGN's final)")
    p.add_argument("--refined", action="store_true",
                   help="use the latents `cryo-napari refine-z` wrote (z.N.refined.npy) instead of the encoder's")
    p.add_argument("--ksample", type=int, default=20, help="k-means clusters (default 20)")
    p.add_argument("--pc", type=int, default=2, help="number of PCs to traverse (default 2)")
    p.add_argument("--pc-points", type=int, default=10, help="maps per PC traversal (default 10)")
    p.add_argument("-o", "--outdir", help="output directory (default RUN/analyze.EPOCH)")
    p.add_argument("--skip-umap", action="store_true", help="no UMAP (it takes minutes on large runs)")
    p.add_argument("--skip-vol", action="store_true", help="no maps")
    p.add_argument("-D", dest="D", type=int, help="box of the generated maps (even, ≤ training box)")
    p.add_argument("--flip", action="store_true", help="flip handedness of the maps")
    p.add_argument("--apix", type=float, help="pixel size (Å) of the training box (cryoDRGN runs do not record it)")
    p.add_argument("--seed", type=int, default=0, help="random seed for k-means and UMAP")


def make_job(args):
    """The job (generator) for these arguments; the CLI and the napari dock both run it."""
    from cryo_napari.analysis.analyze import analyze_job
    from cryo_napari.analysis.runs import load_latent_run

    run = load_latent_run(args.run, args.epoch, args.apix, refined=args.refined)
    return (yield from analyze_job(run, args.outdir, args.ksample, args.pc, args.skip_umap, args.skip_vol,
                                   args.pc_points, args.D, args.flip, args.seed))


def main(args):
    res = run_in_terminal(make_job(args), desc="analyze")
    evr = ", ".join(f"{100 * r:.1f}%" for r in res["explained_variance_ratio"][:4])
    print(f"{res['n']} particles analysed → {res['outdir']} (explained variance {evr})")
    return 0
