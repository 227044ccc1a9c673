"""Homogeneous reconstruction by direct Fourier back-projection, as a job.

Writes ``map.mrc``, ``half_1.mrc``, ``half_2.mrc``, ``fsc.txt`` (shell, frequency 1/Å, FSC) and
``fsc.png`` into the output directory. This is how users check that poses, shifts and CTF were
parsed right: a sharp map with a good half-map FSC means the inputs are understood.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cryo_napari.geometry.backproject import Backprojector, split_halves
from cryo_napari.geometry.rotations import flip_map_handedness
from cryo_napari.geometry.fsc import fsc, fsc_frequencies, resolution_at
from cryo_napari.io.mrc import write_mrc
from cryo_napari.io.particles import ParticleData
from cryo_napari.jobs.atomic import write_text_atomic
from cryo_napari.jobs.protocol import Artifact, Job, Log, Progress


def backproject_job(pdata: ParticleData, out, batch: int = 256, uninvert: bool = False, flip: bool = False,
                    use_ctf: bool = True, device: str = "cpu") -> Job:
    """Reconstruct full and half maps from ``pdata`` (poses required). Returns a summary dict.

    ``uninvert``: the stack has dark particles (cryoDRGN's ``--uninvert-data``): images are
    multiplied by −1. ``flip``: write the mirror map (handedness flip along z).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n, D = len(pdata), pdata.D
    half = pdata.half if pdata.half is not None else split_halves(n)
    bps = [Backprojector(D, device), Backprojector(D, device)]
    rot = torch.as_tensor(pdata.rotations, dtype=torch.float32)
    sh = torch.as_tensor(pdata.shifts_px, dtype=torch.float32)
    ctf = pdata.ctf.as_tensor() if (use_ctf and pdata.ctf is not None) else None
    apix = torch.as_tensor(pdata.apix, dtype=torch.float32)
    scale = torch.as_tensor(pdata.scale, dtype=torch.float32)
    if ctf is None and use_ctf:
        yield Log("warning", f"{pdata.path.name}: no CTF parameters; back-projecting without CTF")
    yield Progress(0, n, "back-projecting")
    for b in range(0, n, batch):
        ii = np.arange(b, min(n, b + batch))
        imgs = torch.as_tensor(pdata.read_images(ii))
        if not torch.isfinite(imgs).all():
            from cryo_napari.errors import InputError

            raise InputError(pdata.images.metadata, f"NaN or infinite pixel values in images {b + 1}-{b + len(ii)}")
        if uninvert:
            imgs = -imgs
        for h in (0, 1):
            sel = np.nonzero(half[ii] == h)[0]
            if len(sel):
                j = ii[sel]
                c = None if ctf is None else ctf[j]
                bps[h].add_images(imgs[sel], rot[j], sh[j], c, apix[j], scale=scale[j])
        yield Progress(int(ii[-1]) + 1, n, "back-projecting")
    full = Backprojector(D, device)
    full.data = bps[0].data + bps[1].data
    full.weight = bps[0].weight + bps[1].weight
    maps = [bp.reconstruct() for bp in (full, *bps)]
    if flip:
        maps = [flip_map_handedness(m) for m in maps]
    a = float(np.median(pdata.apix))
    for name, m in zip(("map.mrc", "half_1.mrc", "half_2.mrc"), maps):
        write_mrc(out / name, m.numpy(), a)
        yield Artifact("map", out / name)
    curve = fsc(maps[1].numpy(), maps[2].numpy())
    freqs = fsc_frequencies(D) / a
    lines = ["# shell  frequency_1/A  fsc"] + [f"{i:d} {f:.5f} {c:.5f}" for i, (f, c) in enumerate(zip(freqs, curve))]
    write_text_atomic(out / "fsc.txt", "\n".join(lines) + "\n")
    res143, res5 = resolution_at(curve, D, a, 0.143), resolution_at(curve, D, a, 0.5)
    plot_fsc(out / "fsc.png", freqs, {"half-maps": curve}, title=f"{pdata.path.name}: {res143:.1f} Å (0.143)")
    yield Artifact("plot", out / "fsc.png")
    yield Log("info", f"FSC 0.143: {res143:.2f} Å, 0.5: {res5:.2f} Å; wrote {out / 'map.mrc'}")
    return {"fsc": curve, "res_0143": res143, "res_05": res5, "map": out / "map.mrc"}


def plot_fsc(path, freqs_invA, curves: dict, title: str = "") -> Path:
    """FSC curves against resolution (PNG), with 0.143 and 0.5 lines. Atomic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cryo_napari.jobs.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, c in curves.items():
        ax.plot(freqs_invA, c, label=name)
    ax.axhline(0.143, ls="--", c="gray", lw=0.8)
    ax.axhline(0.5, ls=":", c="gray", lw=0.8)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)
