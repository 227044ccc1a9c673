"""Peak memory of ``train-vae --lazy`` on a large stack (run by hand, not a unit test).

Makes a synthetic N×D×D float32 stack (noise, random poses and CTF, cryoDRGN pkls), then, each
in a fresh process, measures the peak resident memory (``VmHWM``, which counts touched pages of
the memory-mapped stack and of torch's shared libraries too; the resident memory right after the
imports is reported as the baseline) and the anonymous part (``RssAnon``) of:

- ``pass``: ``VAEData(lazy=True)`` prepared and iterated over *every* particle once, batch by batch
  at the full box (reading, windowing, FFT, phase shift, CTF) — the data path of one epoch;
- ``train``: ``train_vae_job`` with ``lazy=True`` (256×3, zdim 8) for ``--steps`` optimizer steps,
  then aborted the way the napari dock aborts (``close()``);
- ``memory``: the same pass with the default in-memory mode, for comparison (skipped with
  ``--no-memory`` because it holds N×M×2 float32 values).

    OMP_NUM_THREADS=1 python benchmarks/vae_lazy_memory.py --n 10000 40000 --D 128 --out /tmp/lazy_bench

Prints one JSON line per measurement. Running two sizes shows whether the peak depends on N.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_stack(out: Path, n: int, D: int, seed: int = 0) -> Path:
    """``out/stack.mrcs`` (n, D, D) written in chunks, with ``poses.pkl`` and ``ctf.pkl``."""
    import mrcfile

    from cryo_napari.geometry.ctf import CTFParams
    from cryo_napari.geometry.rotations import random_rotations
    from cryo_napari.io.cryodrgn import write_ctf_pkl, write_poses_pkl

    out.mkdir(parents=True, exist_ok=True)
    stack = out / "stack.mrcs"
    if stack.exists():
        return stack
    rng = np.random.default_rng(seed)
    tmp = out / ".stack.tmp.mrcs"
    with mrcfile.new_mmap(tmp, shape=(n, D, D), mrc_mode=2, overwrite=True) as m:
        m.set_image_stack()
        for b in range(0, n, 2000):
            e = min(n, b + 2000)
            m.data[b:e] = rng.standard_normal((e - b, D, D), dtype=np.float32)
        m.voxel_size = 2.0
    tmp.rename(stack)
    df = rng.uniform(1e4, 3e4, n)
    ctf = CTFParams(df, df, np.zeros(n), 300.0, 2.7, 0.1, 0.0, 0.0)
    write_poses_pkl(out / "poses.pkl", random_rotations(n, rng), rng.normal(0, 2, (n, 2)), D)
    write_ctf_pkl(out / "ctf.pkl", ctf, D, 2.0)
    return stack


def _mem() -> dict:
    status = Path("/proc/self/status").read_text().splitlines()
    vals = {ln.split(":")[0]: int(ln.split()[1]) for ln in status if ln.split(":")[0] in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}
    return {k: v / 1024 for k, v in vals.items()}  # MiB


def measure(mode: str, stack: Path, batch: int, steps: int) -> dict:
    """In this process: run ``mode`` and report memory (MiB) and time."""
    import torch

    from cryo_napari.io.particles import load_particles
    from cryo_napari.methods.vae.data import VAEData
    from cryo_napari.methods.vae.train import train_vae_job  # noqa: F401  (same imports in every mode)

    torch.set_num_threads(1)
    start = _mem()  # after importing torch and the data code: shared libraries are file-backed RSS
    d = stack.parent
    t0 = time.perf_counter()
    peak_anon = 0.0
    if mode in ("pass", "memory"):
        pdata = load_particles(stack, poses=d / "poses.pkl", ctf=d / "ctf.pkl", require_poses=True)
        data = VAEData(pdata, lazy=(mode == "pass"))
        for _ in data.prepare():
            peak_anon = max(peak_anon, _mem()["RssAnon"])
        n = 0
        for i, b in enumerate(data.iter_batches(np.random.default_rng(0).permutation(data.N), batch)):
            n += len(b["ind"])
            if i % 50 == 0:
                peak_anon = max(peak_anon, _mem()["RssAnon"])
        count = n
    else:
        from cryo_napari.jobs.protocol import Progress
        from cryo_napari.methods.vae.train import train_vae_job

        job = train_vae_job(dict(particles=stack, poses=d / "poses.pkl", ctf=d / "ctf.pkl", outdir=d / "run_lazy",
                                 lazy=True, batch_size=batch, epochs=1, seed=0))
        count = 0
        for ev in job:
            if isinstance(ev, Progress) and ev.message.startswith("epoch"):
                count = ev.step
                peak_anon = max(peak_anon, _mem()["RssAnon"])
                if count >= steps:
                    break
        job.close()
        count *= batch
    m = _mem()
    return {"mode": mode, "images": count, "seconds": time.perf_counter() - t0, "rss_after_imports_mib": start["VmRSS"],
            "rss_file_after_imports_mib": start["RssFile"], "peak_rss_mib": m["VmHWM"],
            "rss_anon_peak_sampled_mib": max(peak_anon, m["RssAnon"]), "rss_file_end_mib": m["RssFile"]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[10000, 40000])
    p.add_argument("--D", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=30, help="optimizer steps in the 'train' measurement")
    p.add_argument("--modes", nargs="+", default=["pass", "train", "memory"])
    p.add_argument("--out", default="/tmp/lazy_bench")
    p.add_argument("--child", nargs=2, metavar=("MODE", "STACK"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], Path(args.child[1]), args.batch, args.steps)))
        return
    for n in args.n:
        stack = make_stack(Path(args.out) / f"n{n}_D{args.D}", n, args.D)
        for mode in args.modes:
            r = subprocess.run([sys.executable, __file__, "--child", mode, str(stack), "--batch", str(args.batch),
                                "--steps", str(args.steps)], capture_output=True, text=True)
            if r.returncode:
                print(r.stderr[-2000:], file=sys.stderr)
                continue
            row = {"n": n, "D": args.D, "stack_gib": stack.stat().st_size / 2**30, **json.loads(r.stdout.splitlines()[-1])}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
