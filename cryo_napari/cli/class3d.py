"""3D classification without alignment (cryoSPARC 3D Classification / RELION Class3D --skip_align).

Poses and shifts stay fixed from the input. O-EM warm-up on random batches, then full-batch EM
(F-EM) until class switches fall below --switch-conv % (or the RMS map change below --rms-conv),
at most --max-fem iterations. After every F-EM iteration RUN/iter_NNN/ holds class_KK.mrc
(ranked by size, largest first), posterior.npy (N×K), class.npy, ess.npy, scales.npy and
particles.star/.cs with class columns; RUN/final.json points to the last complete iteration;
RUN/metrics.jsonl and RUN/diagnostics.png hold the diagnostics. After a kill, the same command
with --load latest continues from the last complete iteration. Definitions: docs/class3d.md.
"""

from __future__ import annotations

from dataclasses import fields

from cryo_napari.cli.common import add_particle_args
from cryo_napari.jobs.protocol import run_in_terminal
from cryo_napari.methods.class3d.job import Class3DConfig, class3d_job


def add_args(p):
    add_particle_args(p)
    p.add_argument("-K", type=int, default=10, help="number of classes (default 10)")
    p.add_argument("-o", "--outdir", required=True, help="output run directory")
    p.add_argument("--target-res", type=float, default=8.0,
                   help="resolution (Å) of the working box: images are Fourier-cropped to Nyquist ≈ this (default 8)")
    p.add_argument("--init-res", type=float, default=20.0, help="low-pass (Å) of the initial maps (default 20)")
    p.add_argument("--init-mode", choices=["simple", "pca", "input"], default="pca",
                   help="pca (default): cluster averages of many small reconstructions; simple: random-subset "
                        "reconstructions (cryoSPARC); input: --init-maps")
    p.add_argument("--init-maps", nargs="+", default=[], metavar="MRC", help="K initial maps (--init-mode input)")
    p.add_argument("--init-subset", type=int, help="particles per initial reconstruction (default: automatic)")
    p.add_argument("--oem-epochs", type=int, default=2, help="O-EM epochs (default 2)")
    p.add_argument("--oem-batch-per-class", type=int, default=1000, help="O-EM batch size per class (default 1000)")
    p.add_argument("--lr-init", type=float, default=0.4, help="initial O-EM learning rate η (default 0.4)")
    p.add_argument("--lr-halflife", type=float, default=50.0,
                   help="η half-life in %% of O-EM batches (0: fixed; default 50)")
    p.add_argument("--class-similarity", type=float, default=0.5,
                   help="posterior tempering s (0 = none; annealed to 0 by --anneal-end; default 0.5)")
    p.add_argument("--anneal-end", type=int, default=10, help="F-EM iteration where similarity reaches 0 (default 10)")
    p.add_argument("--auto-similarity", action="store_true",
                   help="tune the initial class similarity so the mean class ESS is --target-ess-frac·K")
    p.add_argument("--target-ess-frac", type=float, default=0.75,
                   help="target class ESS fraction for --auto-similarity (default 0.75)")
    p.add_argument("--hard", action="store_true", help="hard classification (posteriors 0/1)")
    p.add_argument("--scales", choices=["none", "input", "optimal"], default="input",
                   help="per-particle scale: none (1), input (alignments3D/alpha), optimal (least squares); default input")
    p.add_argument("--static-noise", action="store_true", help="keep the noise model of the first estimate")
    p.add_argument("--mask", help="solvent mask .mrc (default: auto from the consensus map)")
    p.add_argument("--mask-threshold", type=float, default=0.15,
                   help="auto mask: threshold as a fraction of the low-passed consensus maximum (default 0.15)")
    p.add_argument("--mask-near", type=float, default=2.0, help="auto mask: dilation (near edge), px of the working box (default 2)")
    p.add_argument("--mask-far", type=float, default=3.0, help="auto mask: soft edge width (far edge), px (default 3)")
    p.add_argument("--focus-mask", help="focus mask .mrc: classify on this region only")
    p.add_argument("--switch-conv", type=float, default=2.0, help="stop when class switches < this %% (default 2)")
    p.add_argument("--rms-conv", type=float, help="also stop when the mean RMS map change of 2 iterations < this")
    p.add_argument("--max-fem", type=int, default=25, help="maximum F-EM iterations (default 25)")
    p.add_argument("--hard-recon", action="store_true", help="also write reconstructions from hard assignments")
    p.add_argument("--no-ctf", action="store_true", help="ignore CTF parameters")
    p.add_argument("--uninvert", action="store_true", help="the stack has dark particles (multiply by -1)")
    p.add_argument("--load", help="resume the run in -o from 'latest' (or an iteration number) complete iteration")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=256, help="particles per batch (memory)")


def make_job(args):
    """The job (generator) for these arguments; the CLI and the napari dock both run it."""
    names = {f.name for f in fields(Class3DConfig)}
    cfg = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if cfg.get("target_res") is not None and cfg["target_res"] <= 0:
        cfg["target_res"] = None
    return class3d_job(Class3DConfig(**cfg))


def main(args):
    res = run_in_terminal(make_job(args), desc="class3d")
    sizes = res["history"][-1]["class_sizes"]
    print(f"{res['outdir'] / ('iter_%03d' % res['step'])}: class sizes {sizes} (stopped: {res['stop_reason']})")
    return 0
