"""Refine a run's latents by its own decoder's likelihood (closes the encoder's amortisation gap).

RUN is a train-vae run, a flex train run or a cryoDRGN train_vae run. Basis-decoder VAE runs use the exact linear posterior
over --candidates encoder means (cryo_napari.methods.vae.refine); MLP-decoder VAE runs and flex runs
(or --method maps) compare each particle with maps generated at --centres k-means centres of the
latents, at working box --box (cryo_napari.methods.latent_refine). The refined latent is the
posterior mean.

Writes RUN/z.N.refined.npy (N×zdim float32, the run's particle order) and RUN/refine_z.N.json. The
analysis commands read them with --refined (analyze, filter, traverse, eval-vol --particles).
"""

from __future__ import annotations

from cryo_napari.jobs.protocol import run_in_terminal


def add_args(p):
    p.add_argument("run", help="train-vae, flex train or cryoDRGN run directory")
    p.add_argument("--epoch", type=int, help="epoch (default: the latest complete one)")
    p.add_argument("--candidates", type=int, default=1024,
                   help="candidate latents of the posterior: the encoder means of this many random particles "
                        "(default 1024)")
    p.add_argument("--method", choices=("auto", "basis", "maps"), default="auto",
                   help="auto (default): basis for basis-decoder VAE runs, else maps")
    p.add_argument("--centres", type=int, default=64,
                   help="maps method: k-means centres of the latents, one map each (default 64)")
    p.add_argument("--box", type=int,
                   help="working box: compare the images only up to this box's Nyquist (even; default the model's "
                        "box). Smaller boxes helped on the benchmarks (docs/vae.md)")
    p.add_argument("--seed", type=int, default=0, help="seed of the candidate draw (default 0)")
    p.add_argument("-b", "--batch-size", type=int, default=256, help="particles per batch (default 256)")


def make_job(args):
    from cryo_napari.methods.refine_run import refine_run_latents_job

    return refine_run_latents_job(args.run, args.epoch, args.method, args.candidates, args.centres, args.box,
                                  args.seed, args.batch_size)


def main(args):
    res = run_in_terminal(make_job(args), desc="refine-z")
    if res["method"] == "basis":
        what = f"{res['n_candidates']} candidates (effective {res['effective_candidates']:.0f})"
    else:
        what = (f"maps at {res['n_centres']} centres, box {res['working_box']} (effective "
                f"{res['effective_centres']:.1f}{', flipped hand' if res['flip'] else ''})")
    print(f"{res['z_path']}: posterior over {what}, {res['seconds']:.1f} s")
    return 0
