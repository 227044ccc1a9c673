"""Time ``analyze`` (PCA + UMAP + k-means, no maps) on N synthetic latents (zdim 8).

The latents are a mixture of 20 anisotropic Gaussian blobs plus a 1-D continuous arc, saved as a
bare ``z.npy`` (no decoder, so no maps: this times the latent-space part of analyze). Above
``--umap-max-fit`` (default 100,000) UMAP is fit on a subsample and the rest placed with
``transform``; the log says so. Prints the per-stage timings from ``analysis.json``.

    OMP_NUM_THREADS=2 NUMBA_NUM_THREADS=2 python benchmarks/analyze_scale.py --n 100000 -o /tmp/an100k
    OMP_NUM_THREADS=2 NUMBA_NUM_THREADS=2 python benchmarks/analyze_scale.py --n 1000000 -o /tmp/an1m

UMAP's first use in a fresh environment also compiles its numba kernels (1-3 min on 2 cores);
that is included in the wall time but not in ``umap_s`` when the cache is warm.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def synthetic_latents(n: int, zdim: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n_arc = n // 5
    centres = rng.normal(0, 2.0, (20, zdim))
    scales = rng.uniform(0.1, 0.5, (20, zdim))
    lab = rng.integers(0, 20, n - n_arc)
    blobs = centres[lab] + rng.normal(size=(n - n_arc, zdim)) * scales[lab]
    t = rng.uniform(0, np.pi, n_arc)
    arc = np.zeros((n_arc, zdim))
    arc[:, 0], arc[:, 1] = 4 * np.cos(t), 4 * np.sin(t)
    arc += rng.normal(0, 0.1, arc.shape)
    return rng.permutation(np.concatenate([blobs, arc])).astype(np.float32)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--ksample", type=int, default=20)
    p.add_argument("--umap-max-fit", type=int, default=100_000)
    p.add_argument("--skip-umap", action="store_true")
    p.add_argument("-o", "--outdir", required=True)
    args = p.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from cryo_napari.analysis.analyze import analyze_job
    from cryo_napari.analysis.runs import load_latent_run
    from cryo_napari.jobs.protocol import Log

    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    zf = out / "z.npy"
    np.save(zf, synthetic_latents(args.n))
    run = load_latent_run(zf)
    t0 = time.time()
    job = analyze_job(run, out / "analyze", args.ksample, skip_umap=args.skip_umap, umap_max_fit=args.umap_max_fit)
    try:
        while True:
            ev = next(job)
            if isinstance(ev, Log):
                print(ev.text, flush=True)
    except StopIteration:
        pass
    wall = time.time() - t0
    summary = json.loads((out / "analyze" / "analysis.json").read_text())
    print(json.dumps({"n": args.n, "wall_s": round(wall, 1), **summary["timings_s"], "notes": summary["notes"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
