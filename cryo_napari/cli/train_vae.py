"""Train a VAE for heterogeneous reconstruction (cryoDRGN-style) from particles with poses and CTF.

Writes RUN/config.yaml once, and every epoch N: weights.N.pt, z.N.npy (N×zdim latent means in
input particle order), a line of metrics.jsonl — each complete when its .ok marker exists.
`--load latest` resumes a killed run exactly. Architectures are named as in cryoDRGN
(--enc-layers 3 --enc-dim 256 = "256×3").
"""

from __future__ import annotations

import argparse

from cryo_napari.cli.common import add_particle_args
from cryo_napari.jobs.protocol import run_in_terminal


def add_args(p):
    add_particle_args(p)
    p.add_argument("-o", "--outdir", required=True, help="run directory")
    p.add_argument("-n", "--num-epochs", dest="epochs", type=int, default=20, help="epochs (default 20)")
    p.add_argument("--zdim", type=int, default=8, help="latent dimension (default 8)")
    p.add_argument("-D", dest="D", type=int, help="Fourier-crop images to this training box (even)")
    p.add_argument("--lazy", action="store_true", help="read batches from the memory-mapped stack (bounded memory)")
    p.add_argument("--uninvert", action="store_true", help="the stack has dark particles (cryoDRGN --uninvert-data)")
    p.add_argument("--load", help="resume: 'latest' or a weights.N.pt path")
    p.add_argument("-b", "--batch-size", type=int, help="images per batch (default 8 on CPU, 64 on GPU)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default 1e-4·√(batch/8), cryoDRGN's 1e-4 at batch 8)")
    p.add_argument("--wd", type=float, default=0.0, help="weight decay (default 0)")
    p.add_argument("--beta", type=float, help="KL weight (default 1/zdim)")
    p.add_argument("--lr-schedule",
                   help="constant (default), cosine (half cosine to lr/100 at the last epoch) or cosine:E0 (constant "
                        "until epoch E0, then cosine); follows -n; --load keeps the run's schedule and --lr "
                        "unless given")
    p.add_argument("--beta-schedule", default="constant", help="constant (default) or warmup:E (0→β over E epochs)")
    p.add_argument("--enc-layers", type=int, default=3)
    p.add_argument("--enc-dim", type=int, default=256)
    p.add_argument("--dec-layers", type=int, default=3)
    p.add_argument("--dec-dim", type=int, default=256)
    p.add_argument("--decoder", choices=["mlp", "basis"], default="mlp",
                   help="mlp: coordinate MLP (cryoDRGN's, default); basis: --n-basis volumes mixed by an MLP of z, "
                        "started from the back-projection (much cheaper per image, docs/vae.md)")
    p.add_argument("--n-basis", type=int, default=8, help="volumes mixed by the basis decoder (default 8)")
    p.add_argument("--basis-smooth", type=float, default=1.0, metavar="SIGMA",
                   help="Gaussian blur σ (px of the training box) of the basis decoder's difference volumes "
                        "(default 1; 0 = none)")
    p.add_argument("--basis-pad", type=int, choices=(1, 2), default=1,
                   help="zero-padding of the basis volumes before their FFT: 2 is the accurate slice (as the "
                        "simulator), 1 (default) is ~8x cheaper per epoch at D = 64 with ~2.5x the interpolation error")
    p.add_argument("--pe-type", choices=["gaussian", "geom_lowf"], default="gaussian", help="positional encoding")
    p.add_argument("--pe-dim", type=int, help="positional encoding frequencies per axis (default D/2)")
    p.add_argument("--repr", choices=["fourier", "hartley"], default="fourier",
                   help="loss on the Friedel half in Fourier space (default, 2× fewer decoder points) or Hartley")
    p.add_argument("--march", type=int, default=0, metavar="E",
                   help="frequency marching: loss radius grows from D/4 to D/2 over the first E epochs (default off)")
    p.add_argument("--enc-radius", type=float, metavar="R",
                   help="the encoder reads only Fourier components with |k| < R cycles/box (a low-pass at "
                        "D·apix/R Å; default: all up to Nyquist, as cryoDRGN)")
    p.add_argument("--no-ctf", action="store_true", help="ignore CTF parameters")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bfloat16 mixed precision (default on with CUDA, off on CPU)")
    p.add_argument("--device", help="torch device (default cuda when available)")
    p.add_argument("--convergence-every", type=int, default=5, metavar="K",
                   help="run the convergence diagnostics (as `cryo-napari convergence`) into RUN/convergence "
                        "every K epochs and log the verdict; 0 = never (default 5)")
    p.add_argument("--convergence-embedding", choices=("umap", "pca"), default="umap",
                   help="embedding of those checks (default umap; pca skips UMAP's cost)")


def make_job(args):
    """The training job for these arguments (the CLI and the napari dock both run it)."""
    from cryo_napari.methods.vae.train import train_vae_job

    cfg = {k: getattr(args, k) for k in (
        "particles", "poses", "ctf", "datadir", "ind", "outdir", "epochs", "zdim", "D", "lazy", "uninvert", "load",
        "batch_size", "lr", "wd", "beta", "beta_schedule", "lr_schedule", "enc_layers", "enc_dim", "dec_layers", "dec_dim",
        "pe_type", "pe_dim", "repr", "march", "seed", "amp", "device", "convergence_every", "convergence_embedding",
        "enc_radius", "decoder", "n_basis", "basis_smooth", "basis_pad")}
    cfg["use_ctf"] = not args.no_ctf
    return train_vae_job(cfg)


def main(args):
    import os

    res = run_in_terminal(make_job(args), desc="train-vae")
    if "loss" in res and os.environ.get("RANK", "0") == "0":  # one summary under torchrun
        print(f"{res['epochs']} epochs → {res['run']}  loss {res['loss']:.5g}, {res['images_per_s']:.0f} images/s")
    return 0
