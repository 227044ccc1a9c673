"""Junk removal from a trained VAE's latent space (issue 3's bar), run by hand.

Dataset: the 3-state discrete set of ``benchmarks/vae_quality.py`` (full / domain swung 25° /
domain removed) with 10% of the images replaced by junk, half of each kind:

- ``noise``: white noise only, same σ as the particles' noise (an empty picked spot);
- ``ice``: the same noise plus a smooth random field (Gaussian noise low-passed to ``D/8``
  cycles, std 3× the particles' signal std), like ice or carbon edges.

Junk keeps the random pose and CTF the simulator drew, as junk in a real refinement gets some pose.
Then, with the project's own commands (subprocesses, as a user runs them)::

    cryo-napari train-vae particles.star -o RUN ...       (TRAIN options below)
    cryo-napari analyze RUN --skip-umap --skip-vol ...    (k-means labels)
    cryo-napari filter RUN --zscore 2 -o F_Z
    cryo-napari filter RUN --clusters ... -o F_C          (clusters chosen WITHOUT the truth: drop
                                                           those whose mean |z| is an outlier)

and reports, per rule, the fraction of junk removed and of good particles kept, plus whether the
filtered ``particles.star`` re-imports with the kept count and the optics table. Example::

    OMP_NUM_THREADS=1 python benchmarks/junk_filter.py --D 32 -n 3000 --snr 0.1 --epochs 8 \\
        --train "-b 64 --lr 1e-3" --out /tmp/junk_bench
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from vae_quality import build_dataset  # noqa: E402


def add_junk(data: Path, frac: float, seed: int = 7) -> np.ndarray:
    """Replace ``frac`` of the images in ``data/particles.mrcs`` by junk (in place, once);
    returns the junk kind per particle: 0 good, 1 noise-only, 2 ice-like."""
    import mrcfile
    import torch

    from cryo_napari.geometry.fourier import fft_centered, ifft_centered, radial_frequency_2d

    kind_file = data / "junk_kind.npy"
    if kind_file.exists():
        return np.load(kind_file)
    gt = np.load(data / "ground_truth.npz")
    sigma = float(gt["noise_sigma"])
    signal_std = sigma * np.sqrt(float(gt["snr"]))
    with mrcfile.open(data / "particles.mrcs", "r+") as f:
        n, D = f.data.shape[0], f.data.shape[-1]
        rng = np.random.default_rng(seed)
        junk = rng.choice(n, size=int(round(frac * n)), replace=False)
        kind = np.zeros(n, np.int8)
        kind[junk[: len(junk) // 2]] = 1
        kind[junk[len(junk) // 2:]] = 2
        noise = rng.normal(0, sigma, (len(junk), D, D)).astype(np.float32)
        field = torch.as_tensor(rng.normal(size=(len(junk), D, D)).astype(np.float32))
        lp = (radial_frequency_2d(D) <= D / 8).to(torch.complex64)
        field = ifft_centered(fft_centered(field.to(torch.complex64), 2) * lp, 2).real.numpy()
        field *= 3 * signal_std / field.std(axis=(1, 2), keepdims=True)
        imgs = noise + np.where((kind[junk] == 2)[:, None, None], field, 0).astype(np.float32)
        f.data[junk] = imgs
    np.save(kind_file, kind)
    return kind


def cli(*args: str, log: Path) -> None:
    cmd = ["cryo-napari", *args]
    with open(log, "a") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        if subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT) != 0:
            raise SystemExit(f"failed: {shlex.join(cmd)} (see {log})")


def outlier_clusters(z: np.ndarray, labels: np.ndarray) -> list[int]:
    """Clusters whose mean latent norm is > 3 robust σ (over clusters) above the median cluster:
    a rule a user applies by eye on the analyze plots, here without the ground truth."""
    k = int(labels.max()) + 1
    m = np.array([np.linalg.norm(z[labels == c], axis=1).mean() if (labels == c).any() else 0 for c in range(k)])
    med = np.median(m)
    mad = 1.4826 * np.median(np.abs(m - med)) + 1e-12
    return [c for c in range(k) if (m[c] - med) / mad > 3]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--D", type=int, default=32)
    p.add_argument("-n", type=int, default=3000)
    p.add_argument("--snr", type=float, default=0.1)
    p.add_argument("--junk", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--train", default="-b 64 --lr 1e-3", help="extra train-vae options")
    p.add_argument("--ksample", type=int, default=8, help="k-means clusters of analyze")
    p.add_argument("--zscore", type=float, default=2.0)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    from cryo_napari.io.particles import load_particles
    from cryo_napari.io.star import read_star_tables

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = build_dataset("discrete", a.D, a.n, a.snr, "synthetic", out / "base")
    kind = add_junk(data, a.junk)
    is_junk = kind > 0
    log = out / "log.txt"
    run = out / "run"
    if not (run / f"z.{a.epochs}.npy").exists():
        cli("train-vae", str(data / "particles.star"), "-o", str(run), "-n", str(a.epochs), "--seed", "0",
            *shlex.split(a.train), *(["--load", "latest"] if run.exists() else []), log=log)
    ana = out / "analyze"
    cli("analyze", str(run), "--skip-umap", "--skip-vol", "--ksample", str(a.ksample), "-o", str(ana), log=log)
    z = np.load(run / f"z.{a.epochs}.npy")
    labels = np.load(ana / "labels.npy")
    drop = outlier_clusters(z, labels)
    keep_c = [c for c in range(int(labels.max()) + 1) if c not in drop]
    results = {"args": vars(a), "junk": int(is_junk.sum()), "good": int((~is_junk).sum()),
               "dropped_clusters": drop}
    rules = {"zscore": ["--zscore", str(a.zscore)],
             "clusters": ["--clusters", *map(str, keep_c), "--labels", str(ana / "labels.npy")]}
    for name, opts in rules.items():
        fdir = out / f"filter_{name}"
        cli("filter", str(run), *opts, "-o", str(fdir), log=log)
        keep = np.zeros(a.n, bool)
        keep[np.load(fdir / "indices.npy")] = True
        back = load_particles(fdir / "particles.star", with_images=False)
        optics_src, optics_back = read_star_tables(data / "particles.star")[1], read_star_tables(fdir / "particles.star")[1]
        row = {"junk_removed": float((~keep[is_junk]).mean()), "good_kept": float(keep[~is_junk].mean()),
               "noise_junk_removed": float((~keep[kind == 1]).mean()), "ice_junk_removed": float((~keep[kind == 2]).mean()),
               "kept": int(keep.sum()), "star_reimported": len(back),
               "optics_table_same": bool(optics_src is not None and optics_src.equals(optics_back))}
        results[name] = row
        print(name, json.dumps(row), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
