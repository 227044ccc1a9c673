"""Benchmark of 3D classification without alignment on simulated data (run by hand).

Discrete: 3 states of synthetic_map(D) (full, domain swung 25°, domain removed), K=3 and K=6:
ARI vs ground truth (and the ARI of the Bayes classifier given the true maps, the ceiling for
any method on these images), confusion matrices, seconds per F-EM iteration. Continuous:
domain_motion_series (20 frames, 0–15°), K=5: mean trajectory index (frame) per class.

    OMP_NUM_THREADS=1 python benchmarks/class3d_bench.py --n 10000 --D 64 --snr 0.05 -o /tmp/c3d_bench

Prints a markdown summary and writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def read_map(path: str, D: int) -> np.ndarray:
    """A cubic map from ``path`` at box ``D`` (Fourier crop when larger); exits with one line when unusable."""
    from cryo_napari.geometry.fourier import fourier_crop_3d
    from cryo_napari.io.mrc import read_mrc

    v, _ = read_mrc(path)
    if len(set(v.shape)) != 1 or v.shape[0] < D:
        raise SystemExit(f"{path}: map of shape {v.shape} is not a cube of box >= {D}")
    return v if v.shape[0] == D else fourier_crop_3d(torch.as_tensor(v), D).numpy()


def simulate(out: Path, maps, n, snr, seed):
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    if not (out / "particles.star").exists():
        simulate_dataset(maps, out, SimulationParams(n_particles=n, snr=snr, seed=seed))
    return np.load(out / "ground_truth.npz")


def classify(star, run, K, extra):
    from cryo_napari.jobs.protocol import run_to_end
    from cryo_napari.methods.class3d.job import Class3DConfig, class3d_job

    t0 = time.time()
    res = run_to_end(class3d_job(Class3DConfig(particles=str(star), outdir=str(run), K=K, **extra)))
    res["wall_s"] = time.time() - t0
    return res


def confusion(truth, labels, n_true, K):
    m = np.zeros((n_true, K), int)
    np.add.at(m, (truth, labels), 1)
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--D", type=int, default=64)
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--target-res", type=float, default=12.0)
    ap.add_argument("--init-mode", default="pca")
    ap.add_argument("--max-fem", type=int, default=25)
    ap.add_argument("--angle", type=float, default=25.0, help="swing (degrees) of the domain in the 2nd state")
    ap.add_argument("--domain-radius", type=float, default=0.22,
                    help="radius of the moving/removed domain's sphere as a fraction of the box (default 0.22)")
    ap.add_argument("--cont-angle", type=float, default=15.0,
                    help="largest swing (degrees) of the continuous series (20 frames from 0)")
    ap.add_argument("--map", help="an .mrc map (cubic, box >= D; Fourier-cropped to D) instead of synthetic_map(D); "
                    "the simulator treats it as 3 Å/px")
    ap.add_argument("--skip", nargs="*", default=[], help="parts to skip: k3 k6 continuous")
    ap.add_argument("-o", "--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    from ceiling import ceiling_ari, ceiling_rho
    from scipy.stats import spearmanr
    from sklearn.metrics import adjusted_rand_score

    from cryo_napari.simulate.heterogeneity import discrete_states, domain_motion_series, synthetic_map

    out = Path(a.out)
    vol = synthetic_map(a.D) if a.map is None else read_map(a.map, a.D)
    extra = {"target_res": a.target_res, "init_mode": a.init_mode, "max_fem": a.max_fem}
    results = {"args": vars(a)}
    if {"k3", "k6"} - set(a.skip):
        maps, names, _ = discrete_states(vol, a.angle, a.domain_radius)
        gt = simulate(out / "discrete", maps, a.n, a.snr, 0)
        truth = gt["states"]
        results["oracle_ari"] = ceiling_ari(out / "discrete" / "particles.star", gt["maps"], truth, a.target_res)
        print(json.dumps({"oracle_ari_true_maps": results["oracle_ari"]}), flush=True)
    for K in (3, 6):
        if f"k{K}" in a.skip:
            continue
        res = classify(out / "discrete" / "particles.star", out / f"run_k{K}", K, extra)
        secs = [h["seconds"] for h in res["history"]]
        results[f"k{K}"] = {"ari": float(adjusted_rand_score(truth, res["labels"])),
                            "confusion": confusion(truth, res["labels"], 3, K).tolist(), "states": names,
                            "iterations": res["step"], "stop": res["stop_reason"],
                            "sec_per_fem_iter_median": float(np.median(secs)), "wall_s": res["wall_s"]}
        print(json.dumps({f"k{K}": results[f"k{K}"]}), flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=1))  # partial results survive a kill
    if "continuous" not in a.skip:
        cmaps, angles, _ = domain_motion_series(vol, 20, a.cont_angle)
        cgt = simulate(out / "continuous", cmaps, a.n, a.snr, 1)
        frame = cgt["states"]
        # the Bayes ceiling: how well the true maps themselves order these images (posterior-mean frame)
        cont_ceiling = ceiling_rho(out / "continuous" / "particles.star", cgt["maps"], frame, a.target_res)
        print(json.dumps({"continuous_ceiling": cont_ceiling}), flush=True)
        res = classify(out / "continuous" / "particles.star", out / "run_cont_k5", 5, extra)
        lab = res["labels"]
        class_mean = np.array([frame[lab == k].mean() if (lab == k).any() else np.nan for k in range(5)])
        results["continuous_k5"] = {
            "angle": a.cont_angle, "ceiling": cont_ceiling,
            # ordering: |Spearman rho| of the true frame with the mean frame of the particle's class
            "rho_frame_vs_class_mean_frame": float(abs(spearmanr(frame, class_mean[lab]).statistic)),
            "mean_frame_per_class": [float(frame[lab == k].mean()) if (lab == k).any() else None for k in range(5)],
            "sd_frame_per_class": [float(frame[lab == k].std()) if (lab == k).any() else None for k in range(5)],
            "class_sizes": np.bincount(lab, minlength=5).tolist(), "iterations": res["step"],
            "stop": res["stop_reason"], "wall_s": res["wall_s"]}
        print(json.dumps({"continuous_k5": results["continuous_k5"]}), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
