"""Reconstruct a map from particles with their poses and CTF (check that inputs parse right).

Writes OUT/map.mrc, OUT/half_1.mrc, OUT/half_2.mrc, OUT/fsc.txt and OUT/fsc.png. Half-sets come
from the input (rlnRandomSubset, alignments3D/split) or a random split.
"""

from __future__ import annotations

import numpy as np
import torch

from cryo_napari.cli.common import add_particle_args, load_particles_from_args
from cryo_napari.jobs.protocol import run_in_terminal
from cryo_napari.methods.backproject import backproject_job


def add_args(p):
    add_particle_args(p)
    p.add_argument("-o", "--outdir", required=True, help="output directory")
    p.add_argument("--first", type=int, help="use only the first N particles")
    p.add_argument("--uninvert", action="store_true", help="the stack has dark particles (multiply images by -1)")
    p.add_argument("--flip", action="store_true", help="flip handedness of the output maps")
    p.add_argument("--no-ctf", action="store_true", help="ignore CTF parameters")
    p.add_argument("--batch", type=int, default=256, help="images per batch (default 256)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def make_job(args):
    """The job (generator) for these arguments; the CLI and the napari dock both run it."""
    pdata = load_particles_from_args(args, require_poses=True)
    if args.first:
        pdata = pdata.subset(np.arange(min(args.first, len(pdata))))
    res = yield from backproject_job(pdata, args.outdir, args.batch, args.uninvert, args.flip,
                                     not args.no_ctf, args.device)
    res["n"] = len(pdata)
    return res


def main(args):
    res = run_in_terminal(make_job(args), desc="backproject")
    pdata = res
    print(f"{pdata['n']} particles → {res['map']}  FSC=0.143 at {res['res_0143']:.2f} Å, 0.5 at {res['res_05']:.2f} Å")
    return 0
