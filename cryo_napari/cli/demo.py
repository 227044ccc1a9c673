"""Run the main pipeline end to end on a small simulated dataset and write a report.

Steps: simulate three discrete states (full map, a domain swung 25°, the domain removed) →
back-project from the .star and the .cs and compare with the ground truth (FSC) → train a VAE
(`train-vae`) → analyse its latents (`analyze`: PCA, k-means, maps at cluster centres) →
3D classification without alignment (`class3d -K 3`) → one report with the recovered states
(adjusted Rand index against the truth). Each step runs the same job as its CLI subcommand, with
arguments parsed by that subcommand's parser. Everything goes to OUT (default ./demo_run); a few
minutes on 2 CPU cores with the defaults.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from cryo_napari.geometry.fsc import fsc, fsc_auc, fsc_frequencies, resolution_at
from cryo_napari.io.mrc import read_mrc
from cryo_napari.io.particles import load_particles
from cryo_napari.jobs.atomic import write_text_atomic
from cryo_napari.jobs.protocol import run_in_terminal
from cryo_napari.methods.backproject import backproject_job, plot_fsc
from cryo_napari.simulate.heterogeneity import discrete_states, synthetic_map
from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

STEPS = ("backproject", "vae", "class3d")


def add_args(p):
    p.add_argument("-o", "--outdir", default="demo_run", help="output directory (default ./demo_run)")
    p.add_argument("-n", "--particles", type=int, default=2000, help="particles to simulate (default 2000)")
    p.add_argument("-D", "--box", type=int, default=32, help="box size in pixels (default 32)")
    p.add_argument("--snr", type=float, default=0.1, help="signal-to-noise ratio, whole box (default 0.1)")
    p.add_argument("--epochs", type=int, default=15, help="VAE epochs (default 15)")
    p.add_argument("--lr", type=float, default=1e-3,
                   help="VAE learning rate (default 1e-3: on a small dataset cryoDRGN's 1e-4 needs many more epochs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip", nargs="*", choices=STEPS, default=[], help="steps to leave out")


def _subcommand_job(name: str, argv: list[str]):
    """The job of CLI subcommand ``name`` for ``argv``, parsed by that subcommand's own parser."""
    import importlib

    from cryo_napari.cli.main import COMMANDS, build_parser

    args = build_parser(only=name).parse_args([name, *argv])
    return importlib.import_module(COMMANDS[name]).make_job(args)


def _ari(labels_true: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(labels_true, labels))


def main(args):
    out = Path(args.outdir)
    t0 = time.time()
    maps, names, _ = discrete_states(synthetic_map(args.box, seed=args.seed))
    p = SimulationParams(n_particles=args.particles, snr=args.snr, apix=3.0, seed=args.seed)
    print(f"[1/5] simulating {args.particles} particles, {len(maps)} states ({', '.join(names)}), "
          f"D={args.box}, SNR {args.snr}")
    paths = simulate_dataset(maps, out / "data", p)
    truth = np.load(paths["truth"])
    states = truth["states"]
    report = {"dataset": {"particles": args.particles, "box": args.box, "snr": args.snr, "states": names,
                          "state_counts": np.bincount(states).tolist()}}

    if "backproject" not in args.skip:
        curves = {}
        for fmt in ("star", "cs"):
            print(f"[2/5] back-projecting from particles.{fmt}")
            pdata = load_particles(paths[fmt], require_poses=True)
            res = run_in_terminal(backproject_job(pdata, out / f"backproject_{fmt}"), desc=f"backproject {fmt}")
            vol, _ = read_mrc(out / f"backproject_{fmt}" / "map.mrc")
            c = fsc(vol, truth["mean_map"])
            curves[f"{fmt} vs ground truth"] = c
            report[f"backproject_{fmt}"] = {"half_map_res_0143_A": res["res_0143"],
                                            "fsc_vs_truth_min_to_half_nyquist": float(c[: len(c) // 2 + 1].min()),
                                            "fsc_vs_truth_auc": fsc_auc(c),
                                            "res_vs_truth_05_A": resolution_at(c, args.box, 3.0, 0.5)}
        plot_fsc(out / "fsc_vs_truth.png", fsc_frequencies(args.box) / 3.0, curves, "back-projection vs ground truth")

    if "vae" not in args.skip:
        from sklearn.cluster import KMeans

        print(f"[3/5] train-vae: {args.epochs} epochs, 128×2 encoder/decoder, zdim 8, lr {args.lr:g}")
        t = time.time()
        res = run_in_terminal(_subcommand_job("train-vae", [
            str(paths["star"]), "-o", str(out / "vae"), "-n", str(args.epochs), "--enc-layers", "2",
            "--enc-dim", "128", "--dec-layers", "2", "--dec-dim", "128", "--lr", str(args.lr),
            "--seed", str(args.seed)]),
            desc="train-vae")
        train_s = time.time() - t
        print("[4/5] analyze: PCA, k-means, maps at cluster centres and along PC1")
        ana = run_in_terminal(_subcommand_job("analyze", [
            str(out / "vae"), "--skip-umap", "--ksample", "6", "--pc", "1", "--pc-points", "5",
            "-o", str(out / "vae" / "analyze"), "--seed", str(args.seed)]), desc="analyze")
        z = np.load(out / "vae" / f"z.{res['epochs'] - 1}.npy") if (out / "vae" / f"z.{res['epochs'] - 1}.npy").exists() \
            else np.load(sorted((out / "vae").glob("z.*.npy"), key=lambda f: int(f.name.split(".")[1]))[-1])
        k3 = KMeans(3, n_init=10, random_state=args.seed).fit_predict(z)
        report["vae"] = {"epochs": res["epochs"], "train_time_s": round(train_s, 1),
                         "images_per_s": round(float(res.get("images_per_s", 0.0)), 1),
                         "final_loss": float(res.get("loss", float("nan"))),
                         "latent_kmeans3_ari_vs_truth": round(_ari(states, k3), 3),
                         "pca_explained_variance": [round(float(v), 3) for v in ana["explained_variance_ratio"][:3]],
                         "analysis_dir": str(out / "vae" / "analyze")}

    if "class3d" not in args.skip:
        print("[5/5] class3d: K=3, O-EM then F-EM, poses fixed")
        t = time.time()
        res = run_in_terminal(_subcommand_job("class3d", [
            str(paths["star"]), "-K", "3", "-o", str(out / "class3d"), "--max-fem", "15",
            "--seed", str(args.seed)]), desc="class3d")
        last = res["history"][-1]
        report["class3d"] = {"iterations": res["step"], "stop_reason": res["stop_reason"],
                             "time_s": round(time.time() - t, 1), "class_sizes": last["class_sizes"],
                             "ari_vs_truth": round(_ari(states, np.asarray(res["labels"])), 3)}

    report["total_time_s"] = round(time.time() - t0, 1)
    write_text_atomic(out / "report.json", json.dumps(report, indent=2) + "\n")
    print("report:")
    for k, v in report.items():
        print(f"  {k}: {v}")
    print(f"wrote {out / 'report.json'}")
    return 0
