"""Refine a basis-decoder VAE run's latents by the decoder's likelihood (closes the encoder's
amortisation gap; cryo_napari.methods.vae.refine explains the posterior).

Writes RUN/z.N.refined.npy (N×zdim float32, input particle order) and RUN/refine_z.N.json. The
analysis commands read them with --refined (analyze, filter, traverse, eval-vol --particles).
Needs a run trained with ``train-vae --decoder basis``.
"""

from __future__ import annotations

from cryo_napari.jobs.protocol import run_in_terminal


def add_args(p):
    p.add_argument("run", help="train-vae run directory (trained with --decoder basis)")
    p.add_argument("--epoch", type=int, help="epoch (default: the latest complete one)")
    p.add_argument("--candidates", type=int, default=1024,
                   help="candidate latents of the posterior: the encoder means of this many random particles "
                        "(default 1024)")
    p.add_argument("--seed", type=int, default=0, help="seed of the candidate draw (default 0)")
    p.add_argument("-b", "--batch-size", type=int, default=256, help="particles per batch (default 256)")


def make_job(args):
    from cryo_napari.methods.vae.refine import refine_run_job

    return refine_run_job(args.run, args.epoch, args.candidates, args.seed, args.batch_size)


def main(args):
    res = run_in_terminal(make_job(args), desc="refine-z")
    print(f"{res['z_path']}: posterior over {res['n_candidates']} candidates (effective "
          f"{res['effective_candidates']:.0f}), median shift {res['median_shift']:.2f} of the latent RMS, "
          f"{res['seconds']:.1f} s")
    return 0
