"""Flex reconstruction with oracle latents: how much of the flex-vs-rigid gap is per-particle latent error?

Takes an output folder of ``benchmarks/flex_hinge.py`` (simulated hinge, trained run, flex and rigid
reconstructions) and reconstructs the flex map once more with the run's own generator and canonical map
but each particle's latent replaced by the median latent of the particles in its true frame (the
latent the run gives that state; no particle is moved the wrong way by its own latent error). Scores
the three maps — flex (learned latents), flex (oracle latents), rigid — in the moving domain (the mask
moved to the zero latent's frame) and the static part against the ground truth, as ``flex_hinge.py``
does, and writes ``OUT/oracle_report.json``.

    OMP_NUM_THREADS=1 python benchmarks/flex_oracle_recon.py /tmp/fhm60 --iters 6 --recon-particles 3000

Sources of a flex loss it separates: if the oracle map beats rigid where the learned-latent map loses,
the loss is the latents' error; if the oracle map loses too, it is the flow model (its shape or
amplitude, the rigidity prior) or the convection operator.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from flex_hinge import masked_fsc, summary


def oracle_latents(z: np.ndarray, states: np.ndarray, n_frames: int) -> np.ndarray:
    """Each particle's latent (N, K) replaced by the median over the particles of its true frame."""
    zf = np.stack([np.median(z[states == f], 0) if (states == f).any() else np.zeros(z.shape[1])
                   for f in range(n_frames)])
    return zf[states].astype(np.float32)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", help="an output folder of flex_hinge.py")
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--recon-particles", type=int, default=None)
    ap.add_argument("--angle", type=float, default=None, help="the hinge angle of the run (default: its report)")
    a = ap.parse_args(argv)

    from cryo_napari.cli.main import main as cli
    from cryo_napari.io.mrc import read_mrc
    from cryo_napari.jobs.atomic import save_npy_atomic
    from cryo_napari.jobs.rundir import RunDir
    from cryo_napari.methods.flex.train import load_latents, load_trained
    from cryo_napari.simulate.heterogeneity import domain_mask_series, domain_motion_series, synthetic_map

    b = Path(a.bench)
    rep = json.loads((b / "report.json").read_text())
    args = rep["args"]
    if args["map"] != "synthetic":
        raise SystemExit(f"{b}: only the synthetic map is supported here")
    vol = synthetic_map(args["D"], seed=3)
    maps, angles, _ = domain_motion_series(vol, 20, a.angle if a.angle is not None else args["angle"])
    moved_dmask = domain_mask_series(vol, angles)
    truth = np.load(b / "sim" / "ground_truth.npz")
    rows = np.load(b / "prep" / "indices.npy")
    states = truth["states"][rows]

    _, _, ep = load_trained(b / "run")
    run_o = b / "run_oracle"
    if run_o.exists():
        shutil.rmtree(run_o)
    shutil.copytree(b / "run", run_o)
    rd = RunDir(run_o)
    z = load_latents(run_o, ep)
    zo = oracle_latents(z, states, len(maps))
    save_npy_atomic(rd.refined_latents_path(ep), zo)
    rd.mark_complete(rd.refined_latents_path(ep), ep)
    t = time.time()
    rec = ["flex", "reconstruct", str(run_o), "--prep", str(b / "prep"), "-o", str(b / "recon_oracle"),
           "--iters", str(a.iters), "--refined"]
    if a.recon_particles:
        rec += ["--max-particles", str(a.recon_particles)]
    assert cli(rec) == 0
    seconds = time.time() - t

    f0 = rep["frame_of_zero_latent"]
    ref = maps[f0]

    def soft(m):
        return ndimage.gaussian_filter(m.astype(np.float32), 1.0)

    moved = soft(ndimage.binary_dilation(moved_dmask[f0] > 0.1, iterations=2))
    static = soft(~ndimage.binary_dilation(moved_dmask.max(0) > 0.1, iterations=2))
    out = {"bench": str(b), "frame_of_zero_latent": f0, "reconstruct_s": seconds,
           "abs_spearman_best": rep["abs_spearman_best"]}
    for name, path in (("flex", b / "recon" / "flex_map.mrc"), ("oracle", b / "recon_oracle" / "flex_map.mrc"),
                       ("rigid", b / "recon" / "rigid_map.mrc")):
        m = read_mrc(path)[0]
        for part, mask in (("moved_domain", moved), ("static", static), ("full", np.ones_like(ref))):
            c = masked_fsc(m, ref, mask)
            out[f"{part}_fsc_{name}"] = c.round(4).tolist()
            out[f"{part}_fsc_summary_{name}"] = summary(c)
    (b / "oracle_report.json").write_text(json.dumps(out, indent=1))
    for part in ("moved_domain", "static", "full"):
        for name in ("flex", "oracle", "rigid"):
            c = out[f"{part}_fsc_{name}"]
            print(f"{part:13s} {name:6s} shells 8-16 {' '.join(f'{v:.3f}' for v in c[8:17])}  "
                  f"mean 1-16 {np.mean(c[1:17]):.3f}")


if __name__ == "__main__":
    main()
