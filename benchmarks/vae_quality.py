"""VAE benchmarks, run by hand (not a unit test).

Speed (training step throughput, 1 thread, random data, nothing else):

    OMP_NUM_THREADS=1 python benchmarks/vae_quality.py speed --D 32 64 --batch 8 64
    OMP_NUM_THREADS=1 python benchmarks/vae_quality.py speed --D 64 --batch 16 --profile 15   # where time goes

Quality, SNR 0.1, on a discrete dataset (``--kind discrete``: 3 states, full / domain swung /
domain removed) or a continuous one (``--kind continuous``: a domain swung 0–15° over 20 frames;
``--angle`` sets the largest swing):

    OMP_NUM_THREADS=1 python benchmarks/vae_quality.py quality --kind discrete --D 32 -n 3000 --epochs 20 --out /tmp/vae_bench

reports, per evaluated epoch: discrete — k-means(k=3) ARI of the latent means vs the true states;
continuous — Spearman |ρ| of the trajectory index with the latents' first principal component and
with the best linear 1-D projection (least squares, fitted on one half of the particles and scored
on the other); both — per-image FSC AUC (CryoBench: area under the FSC over [0, 0.5] cycles/px)
of maps generated at particles' latents vs their ground-truth maps, images/s and the wall time.
Appends a JSON line to OUT/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def speed(args):
    from cryo_napari.methods.vae.data import HalfLattice, encoder_input, encoder_width
    from cryo_napari.methods.vae.model import build_vae, flops_per_image
    from cryo_napari.methods.vae.train import step_loss

    rows = []
    for D in args.D:
        lat = HalfLattice(D)
        for repr in ("fourier", "hartley"):
            for B in args.batch:
                model = build_vae(D, encoder_width(len(lat), repr), 8, 3, args.dim, 3, args.dim)
                model.lattice_k, model.lattice_w = lat.k, lat.weight
                opt = torch.optim.Adam(model.parameters(), lr=1e-4)
                g = torch.Generator().manual_seed(0)
                batch = {"y": torch.randn(B, len(lat), 2, generator=g), "ctf": torch.rand(B, len(lat), generator=g),
                         "rot": torch.linalg.qr(torch.randn(B, 3, 3, generator=g))[0]}
                assert encoder_input(batch["y"], batch["ctf"], repr).shape[1] == model.arch["enc_in"]

                def step():
                    mse, kl, _ = step_loss(model, batch, len(lat), repr)
                    loss = mse + kl / lat.n_full
                    opt.zero_grad()
                    loss.backward()
                    opt.step()

                step()
                n_steps = max(3, int(args.images / B))
                t0 = time.perf_counter()
                for _ in range(n_steps):
                    step()
                dt = time.perf_counter() - t0
                if args.profile:
                    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                        for _ in range(3):
                            step()
                    print(f"D={D} {repr} batch {B}:")
                    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile))
                ips = n_steps * B / dt
                pts = len(lat) if repr == "fourier" else lat.n_full
                gf = 3 * flops_per_image(model.arch, pts) * ips / 1e9
                row = dict(D=D, repr=repr, batch=B, arch=f"{args.dim}x3", decoder_points=pts, images_per_s=ips,
                           gflops_per_s=gf, threads=torch.get_num_threads())
                rows.append(row)
                print(json.dumps(row))
    return rows


def build_dataset(kind: str, D: int, n: int, snr: float, map_path: str, out: Path, angle: float = 15.0) -> Path:
    """Simulate (once; reused when present) the discrete or continuous benchmark dataset of
    ``n`` particles at box ``D`` and ``snr`` from the synthetic map or an .mrc map; returns its folder.
    ``angle`` (degrees) is the continuous set's largest swing (20 frames from 0 to ``angle``)."""
    from cryo_napari.geometry.fourier import fourier_crop_3d
    from cryo_napari.simulate.heterogeneity import discrete_states, domain_motion_series, synthetic_map
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    swing = f"_a{angle:g}" if kind == "continuous" and angle != 15.0 else ""
    data_dir = Path(out) / f"data_{kind}{swing}_D{D}_n{n}_snr{snr:g}_{Path(map_path).stem}"
    if not (data_dir / "ground_truth.npz").exists():
        if map_path == "synthetic":
            vol = synthetic_map(D, seed=3)
        else:
            from cryo_napari.io.mrc import read_mrc

            v, _ = read_mrc(map_path)
            vol = fourier_crop_3d(torch.as_tensor(v), D).numpy()
        if kind == "discrete":
            maps, _, _ = discrete_states(vol)
        else:
            maps, _, _ = domain_motion_series(vol, 20, angle)
        simulate_dataset(maps, data_dir, SimulationParams(n_particles=n, snr=snr, apix=3.0 * 64 / D, seed=1))
    return data_dir


def dataset_ceiling(kind: str, data_dir: Path, D: int, n: int) -> dict:
    """Bayes ceiling (ARI or |rho| from the true maps, ``benchmarks/ceiling.py``) on the first ``n``
    particles of a ``build_dataset`` folder; printed as a JSON line and returned."""
    from ceiling import ceiling_ari, ceiling_rho

    gt = np.load(data_dir / "ground_truth.npz")
    f = ceiling_ari if kind == "discrete" else ceiling_rho
    apix = 3.0 * 64 / D  # as build_dataset
    ceiling = f(data_dir / "particles.star", gt["maps"], gt["states"], 2 * apix, n)
    print(json.dumps({"ceiling": ceiling}), flush=True)
    return ceiling


def quality(args):
    from cryo_napari.geometry.fsc import fsc, fsc_auc
    from cryo_napari.jobs.protocol import Log, run_to_end
    from cryo_napari.methods.vae.eval import load_vae_run
    from cryo_napari.methods.vae.train import default_lr, train_vae_job

    out = Path(args.out)
    D = args.D[0]
    data_dir = build_dataset(args.kind, D, args.n, args.snr, args.map, out, args.angle)
    run = out / f"run_{args.tag}"
    if args.ceiling_only:
        dataset_ceiling(args.kind, data_dir, D, args.ceiling or 1000)
        return
    cfg = dict(particles=data_dir / "particles.star", outdir=run, epochs=args.epochs, seed=0, repr=args.repr,
               batch_size=args.batch[0], lr=args.lr, march=args.march, enc_dim=args.dim, dec_dim=args.dim,
               beta_schedule=args.beta_schedule, lr_schedule=args.lr_schedule, enc_layers=args.layers,
               dec_layers=args.layers, load=args.load,
               convergence_every=args.convergence_every, enc_radius=args.enc_radius, decoder=args.decoder,
               n_basis=args.n_basis, basis_smooth=args.basis_smooth, basis_pad=args.basis_pad)
    t0 = time.perf_counter()
    run_to_end(train_vae_job(cfg), lambda ev: print(ev.text, flush=True) if isinstance(ev, Log) else None)
    wall = time.perf_counter() - t0
    gt = np.load(data_dir / "ground_truth.npz")
    rng = np.random.default_rng(0)
    sel = rng.choice(args.n, size=min(args.n_fsc, args.n), replace=False)
    # references scored the same way, resolving no heterogeneity: the true population-mean map (an
    # upper bound for any homogeneous model) and the homogeneous back-projection of these particles
    base = [fsc_auc(fsc(gt["mean_map"], gt["maps"][gt["states"][i]])) for i in sel]
    from cryo_napari.io.mrc import read_mrc
    from cryo_napari.io.particles import load_particles
    from cryo_napari.methods.backproject import backproject_job

    bp = run_to_end(backproject_job(load_particles(data_dir / "particles.star"), out / f"bp_{data_dir.name}"))
    bp_map = read_mrc(bp["map"])[0]
    bp_auc = [fsc_auc(fsc(bp_map, gt["maps"][gt["states"][i]])) for i in sel]
    print(json.dumps({"mean_map_fsc_auc": float(np.mean(base)), "backprojection_fsc_auc": float(np.mean(bp_auc))}),
          flush=True)
    ceiling = dataset_ceiling(args.kind, data_dir, D, args.ceiling) if args.ceiling else None
    per_epoch = []
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for e in args.eval_epochs or [args.epochs]:
        r = load_vae_run(run, e)
        scores = latent_scores(r.z, gt["states"], args.kind)
        vols = r.generate_volumes(r.z[sel])
        aucs = [fsc_auc(fsc(v, gt["maps"][gt["states"][i]])) for v, i in zip(vols, sel)]
        t_e = sum(m["time_s"] for m in metrics if m["epoch"] <= e)
        per_epoch.append(dict(epoch=e, **scores, fsc_auc_mean=float(np.mean(aucs)), fsc_auc_min=float(np.min(aucs)),
                              train_time_s=t_e))
        print(json.dumps(per_epoch[-1]), flush=True)
    row = dict(tag=args.tag, kind=args.kind, angle=args.angle if args.kind == "continuous" else None, D=D, n=args.n,
               snr=args.snr, map=args.map, repr=args.repr, batch=args.batch[0],
               lr=args.lr or default_lr(args.batch[0]), march=args.march, lr_schedule=args.lr_schedule,
               enc_radius=args.enc_radius, arch=f"{args.dim}x{args.layers}",
               decoder=args.decoder if args.decoder == "mlp" else f"basis:{args.n_basis}:smooth{args.basis_smooth:g}:pad{args.basis_pad}",
               epochs=args.epochs, wall_s=wall, images_per_s=float(np.mean([m["images_per_s"] for m in metrics])),
               threads=torch.get_num_threads(), mean_map_fsc_auc=float(np.mean(base)), backprojection_fsc_auc=float(np.mean(bp_auc)),
               ceiling=ceiling, evaluation=per_epoch)
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))


def latent_scores(z: np.ndarray, truth: np.ndarray, kind: str) -> dict:
    """Latent vs ground truth: k-means(3) ARI (discrete) or Spearman |ρ| with the frame index (continuous)."""
    from scipy.stats import spearmanr
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score

    if kind == "discrete":
        lab = KMeans(3, n_init=10, random_state=0).fit_predict(z)
        return {"ari": float(adjusted_rand_score(truth, lab))}
    pc1 = PCA(1).fit_transform(z)[:, 0]
    half = np.random.default_rng(0).permutation(len(z)) < len(z) // 2
    x = np.c_[z, np.ones(len(z))]
    w = np.linalg.lstsq(x[half], truth[half].astype(float), rcond=None)[0]
    return {"spearman_pc1": float(abs(spearmanr(pc1, truth)[0])),
            "spearman_best_1d": float(abs(spearmanr(x[~half] @ w, truth[~half])[0]))}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["speed", "quality"])
    p.add_argument("--D", type=int, nargs="+", default=[32])
    p.add_argument("--batch", type=int, nargs="+", default=[8])
    p.add_argument("--dim", type=int, default=256, help="encoder/decoder width (3 layers)")
    p.add_argument("--images", type=int, default=512, help="images per speed measurement")
    p.add_argument("-n", type=int, default=3000)
    p.add_argument("--kind", choices=["discrete", "continuous"], default="discrete")
    p.add_argument("--angle", type=float, default=15.0,
                   help="continuous: largest domain swing, degrees (20 frames from 0)")
    p.add_argument("--layers", type=int, default=3, help="encoder/decoder hidden layers (quality)")
    p.add_argument("--snr", type=float, default=0.1)
    p.add_argument("--map", default="synthetic", help="'synthetic' or an .mrc map (Fourier-cropped to D)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--eval-epochs", type=int, nargs="*")
    p.add_argument("--load", help="'latest': continue the run OUT/run_TAG to --epochs (train_time_s stays cumulative)")
    p.add_argument("--repr", default="fourier")
    p.add_argument("--lr", type=float)
    p.add_argument("--march", type=int, default=0)
    p.add_argument("--beta-schedule", default="constant")
    p.add_argument("--lr-schedule", help="constant (default) or cosine[:E0] (train-vae --lr-schedule)")
    p.add_argument("--convergence-every", type=int, default=5, help="train-vae's in-training convergence check (0 = off)")
    p.add_argument("--enc-radius", type=float, help="train-vae --enc-radius (encoder low-pass, cycles/box)")
    p.add_argument("--decoder", default="mlp", help="train-vae --decoder (mlp or basis)")
    p.add_argument("--n-basis", type=int, default=8, help="train-vae --n-basis")
    p.add_argument("--basis-smooth", type=float, default=1.0, help="train-vae --basis-smooth")
    p.add_argument("--basis-pad", type=int, default=1, help="train-vae --basis-pad")
    p.add_argument("--ceiling", type=int, default=0, metavar="N",
                   help="also the Bayes ceiling (ARI or |rho| from the true maps) on the first N particles")
    p.add_argument("--ceiling-only", action="store_true", help="build the dataset, print its ceiling, stop")
    p.add_argument("--n-fsc", type=int, default=100, help="particles for the per-image FSC AUC")
    p.add_argument("--out", default="/tmp/vae_bench")
    p.add_argument("--tag", default="default")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="speed: also profile 3 steps (torch.profiler), print the N ops with most self CPU time")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    speed(args) if args.mode == "speed" else quality(args)


if __name__ == "__main__":
    main()
