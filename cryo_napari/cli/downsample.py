"""Downsample a particle stack or a map by Fourier cropping (pixel size grows by D/D_new).

For a .star/.cs input the images are written to OUT (an .mrcs) and a matching .star with
updated pixel size and origin-shift units (Å shifts unchanged; pixel shifts rescaled) is written
beside it, so the downsampled stack can be used directly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cryo_napari.errors import InputError
from cryo_napari.geometry.fourier import fourier_crop_2d, fourier_crop_3d
from cryo_napari.io.mrc import read_header, read_mrc, write_mrc
from cryo_napari.io.particles import load_particles
from cryo_napari.io.star import read_star_tables, write_star


def add_args(p):
    p.add_argument("input", help=".mrcs/.txt stack, .star, .cs, or a .mrc map")
    p.add_argument("-D", "--box", type=int, required=True, help="new box size (even, smaller)")
    p.add_argument("-o", "--output", required=True, help="output .mrcs (stacks) or .mrc (maps)")
    p.add_argument("--datadir", help="where stacks named in a .star/.cs are")
    p.add_argument("-b", "--batch", type=int, default=1000, help="images per chunk (bounded memory)")


def main(args):
    inp, out = Path(args.input), Path(args.output)
    if args.box % 2:
        raise InputError(None, f"-D must be even, got {args.box}")
    if inp.suffix.lower() in (".mrc", ".map") and not read_header(inp)["is_stack"]:
        vol, apix = read_mrc(inp)
        if args.box > vol.shape[-1]:
            raise InputError(inp, f"box {vol.shape[-1]} is smaller than -D {args.box}")
        write_mrc(out, fourier_crop_3d(torch.as_tensor(vol), args.box).numpy(), apix * vol.shape[-1] / args.box)
        print(f"{inp} → {out} ({args.box}³)")
        return 0
    pdata = load_particles(inp, datadir=args.datadir)
    D = pdata.D
    if args.box > D:
        raise InputError(inp, f"box {D} is smaller than -D {args.box}")
    n = len(pdata)
    chunks = []
    for b in range(0, n, args.batch):
        ii = np.arange(b, min(n, b + args.batch))
        chunks.append(fourier_crop_2d(torch.as_tensor(pdata.images.read(ii)), args.box).numpy())
    apix_new = float(np.median(pdata.apix)) * D / args.box
    write_mrc(out.with_suffix(".mrcs"), np.concatenate(chunks), apix_new)
    if inp.suffix == ".star":
        particles, optics = read_star_tables(inp)
        particles = particles.copy()
        particles["rlnImageName"] = [f"{i + 1:06d}@{out.with_suffix('.mrcs').name}" for i in range(n)]
        for c in ("rlnOriginX", "rlnOriginY"):
            if c in particles.columns:
                particles[c] = particles[c].astype(float) * args.box / D
        if optics is not None:
            optics = optics.copy()
            optics["rlnImagePixelSize"] = optics["rlnImagePixelSize"].astype(float) * D / args.box
            optics["rlnImageSize"] = args.box
        write_star(out.with_suffix(".star"), particles, optics)
    print(f"{n} images {D}px → {args.box}px ({apix_new:.3f} Å/px) → {out.with_suffix('.mrcs')}")
    return 0
