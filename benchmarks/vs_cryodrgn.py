"""Side by side with cryoDRGN's ``train_vae`` on the same simulated dataset and machine (run by hand).

cryoDRGN lives in its own venv (it is never a dependency of cryo_napari)::

    python3 -m venv /tmp/cdrgn && /tmp/cdrgn/bin/pip install torch==2.13.0 cryodrgn==4.3.1

Then, with this project's venv active::

    python benchmarks/vs_cryodrgn.py --cryodrgn /tmp/cdrgn/bin/cryodrgn --kind discrete --D 32 -n 4000 \\
        --snr 0.1 --epochs 20 --threads 1 --out /tmp/vs_cdrgn \\
        --fast "-b 64 --lr 1e-3" --fast-epochs 10

Three runs, each a separate process launched the same way (so wall time and peak RSS compare):

1. ``cryodrgn train_vae`` with the issue's settings: 256×3 encoder and decoder, zdim 8, its other
   defaults (batch 16, lr 1e-4, gaussian positional encoding), ``--epochs``;
2. ``cryo-napari train-vae`` with the same architecture, batch, lr and epochs (per-epoch time at
   equal work);
3. ``cryo-napari train-vae`` with ``--fast`` settings, scored after every epoch, to find the first
   epoch that reaches cryoDRGN's final latent score and per-image FSC AUC (time to quality).

Scores at each evaluated epoch: k-means(3) ARI of the latent means vs the true states (discrete),
Spearman |ρ| of the best 1-D linear projection with the trajectory index (continuous), and the
per-image FSC AUC (CryoBench: area under the FSC over [0, 0.5] cycles/px) between the map generated
at a particle's latent and its ground-truth map, mean over ``--n-fsc`` particles. cryoDRGN's maps
are generated from its weights by :mod:`cryo_napari.analysis.cryodrgn_run` (bit-identical to its
``eval_vol``, tested) and compared in the handedness that fits the truth better (logged).

Writes OUT/results.json and OUT/table.md (with the machine description).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from vae_quality import build_dataset, latent_scores  # noqa: E402

ARCH = ["--zdim", "8", "--enc-dim", "256", "--enc-layers", "3", "--dec-dim", "256", "--dec-layers", "3"]


def launch(cmd: list[str], threads: int, log: Path) -> dict:
    """Run ``cmd`` as a child with ``threads`` CPU threads; wall seconds and peak RSS (MiB)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[0]} failed (see {log})")
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024, "cmd": shlex.join(cmd)}


def cryodrgn_epoch_times(run: Path) -> list[float]:
    """Seconds per epoch from cryoDRGN's run.log ('Epoch: N ... Finished in H:MM:SS.ffffff')."""
    out = []
    for m in re.finditer(r"Epoch: (\d+) .*?Finished in (\d+):(\d+):([\d.]+)", (run / "run.log").read_text()):
        out.append(int(m.group(2)) * 3600 + int(m.group(3)) * 60 + float(m.group(4)))
    return out


def adopt_cryodrgn_run(run: Path, log: Path | None, epochs: int) -> dict:
    """Record a cryoDRGN run made outside this script: its command (config.yaml), wall time and peak
    RSS from a ``/usr/bin/time -v`` log. Refuses a run that did not finish ``epochs`` epochs."""
    times = cryodrgn_epoch_times(run)
    if len(times) < epochs:
        raise SystemExit(f"{run}: only {len(times)} of {epochs} epochs finished (run.log)")
    info = {"cmd": f"cryodrgn train_vae (adopted run {run}, see its config.yaml) -o {run}", "adopted": True}
    text = log.read_text(errors="replace") if log else ""
    m = re.search(r"Elapsed \(wall clock\) time.*?: (?:(\d+):)?(\d+):([\d.]+)", text)
    info["wall_s"] = (int(m.group(1) or 0) * 3600 + int(m.group(2)) * 60 + float(m.group(3))) if m else float(sum(times))
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    info["peak_rss_mib"] = int(m.group(1)) / 1024 if m else float("nan")
    cmd = re.search(r"Command being timed: \"(.*)\"", text)
    if cmd:
        info["cmd"] = cmd.group(1)
    return info


def our_epoch_times(run: Path) -> list[float]:
    return [json.loads(x)["time_s"] for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


def score(run: Path, epoch: int, gt, sel, kind: str, flip: bool | None = None, refined: bool = False) -> dict:
    """Latent score and per-image FSC AUC of ``run`` (ours or cryoDRGN's) at ``epoch`` (with
    ``refined``: of the latents ``refine-z`` wrote)."""
    from cryo_napari.analysis.runs import load_latent_run
    from cryo_napari.geometry.fsc import fsc, fsc_auc

    r = load_latent_run(run, epoch, refined=refined)
    truth_maps = gt["maps"][gt["states"][sel]]

    def aucs(f):
        vols = r.generate_volumes(r.z[sel], flip=f)
        return [fsc_auc(fsc(v, t)) for v, t in zip(vols, truth_maps)]

    if flip is None:  # first scored epoch of a run: keep the handedness that fits the truth better
        a0, a1 = aucs(False), aucs(True)
        flip = bool(np.mean(a1) > np.mean(a0))
        a = a1 if flip else a0
    else:
        a = aucs(flip)
    truth = gt["states"]
    return {"epoch": epoch, **latent_scores(r.z, truth, kind), "fsc_auc": float(np.mean(a)), "flip": flip}


def refine_scores(run: Path, info: dict, epochs: list[int], gt, sel, a, save) -> None:
    """Run refine-z (in this process, ``a.threads`` threads) at each epoch of ``run`` and score the
    refined latents; rows go to ``info["scores_refined"]`` with the refinement's seconds."""
    import torch

    from cryo_napari.jobs.protocol import run_to_end
    from cryo_napari.methods.refine_run import refine_run_latents_job

    torch.set_num_threads(a.threads)
    rows = info.setdefault("scores_refined", [])
    done = {r["epoch"] for r in rows}
    for e in epochs:
        if e in done:
            continue
        res = run_to_end(refine_run_latents_job(run, e))
        row = score(run, e, gt, sel, a.kind, False, refined=True)
        row["refine_s"] = res["seconds"]
        row["train_s"] = float(np.sum(info["epoch_s"][:e])) + res["seconds"]
        rows.append(row)
        print("refined", json.dumps(row), flush=True)
        save()


def key_score(row: dict, kind: str) -> float:
    return row["ari"] if kind == "discrete" else row["spearman_best_1d"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cryodrgn", required=True, help="path of the cryodrgn executable (its own venv)")
    p.add_argument("--kind", choices=["discrete", "continuous"], default="discrete")
    p.add_argument("--D", type=int, default=32)
    p.add_argument("-n", type=int, default=4000)
    p.add_argument("--snr", type=float, default=0.1)
    p.add_argument("--map", default="synthetic")
    p.add_argument("--angle", type=float, default=15.0, help="continuous set: largest swing, degrees")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--eval-epochs", type=int, nargs="*", help="epochs scored for runs 1-2 (default: 5 10 15 ... and the last)")
    p.add_argument("--fast", default="-b 64 --lr 1e-3", help="train-vae options of run 3 (architecture stays 256x3)")
    p.add_argument("--fast-epochs", type=int, default=10)
    p.add_argument("--fast-name", default="fast", help="name of run 3 (several fast settings can share OUT)")
    p.add_argument("--n-fsc", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip", nargs="*", default=[], help="runs to skip: cryodrgn same, or the --fast-name")
    p.add_argument("--same-epochs", type=int, help="epochs of run 2 (default --epochs; 1 measures only its epoch time)")
    p.add_argument("--cryodrgn-run", metavar="DIR",
                   help="adopt a finished cryoDRGN run instead of launching one (e.g. started by hand under "
                        "`/usr/bin/time -v ... > LOG 2>&1` so it could run across sessions); give the log with "
                        "--cryodrgn-log for its wall time and peak RSS")
    p.add_argument("--cryodrgn-log", metavar="LOG", help="that run's /usr/bin/time -v output")
    p.add_argument("--refine-z", action="store_true",
                   help="also score run 3 after `cryo-napari refine-z` at each epoch (its seconds are added to the "
                        "training time in the table)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = build_dataset(a.kind, a.D, a.n, a.snr, a.map, out, a.angle)
    gt = np.load(data / "ground_truth.npz")
    sel = np.random.default_rng(0).choice(a.n, size=min(a.n_fsc, a.n), replace=False)
    evals = a.eval_epochs or sorted({*range(5, a.epochs + 1, 5), a.epochs})
    stack = [str(data / "particles.mrcs"), "--poses", str(data / "poses.pkl"), "--ctf", str(data / "ctf.pkl")]
    res_file = out / "results.json"
    res = json.loads(res_file.read_text()) if res_file.exists() else {}
    res["machine"] = {"cpu": _cpu_name(), "cores": os.cpu_count(), "threads_per_run": a.threads,
                      "python": platform.python_version()}
    res["dataset"] = {"kind": a.kind, "D": a.D, "n": a.n, "snr": a.snr, "map": a.map, "dir": str(data),
                      **({"angle": a.angle} if a.kind == "continuous" else {})}

    def save():
        res_file.write_text(json.dumps(res, indent=1))

    runs = {
        "cryodrgn": [a.cryodrgn, "train_vae", *stack, *ARCH, "-n", str(a.epochs), "--seed", "0", "--no-analysis",
                     "--checkpoint", "1", "--max-threads", str(a.threads), "-o"],
        # no convergence checks in our runs, as cryoDRGN runs no analysis (--no-analysis)
        "same": ["cryo-napari", "train-vae", *stack, *ARCH, "-b", "16", "--lr", "1e-4", "-n", str(a.same_epochs or a.epochs),
                 "--seed", "0", "--convergence-every", "0", "-o"],
        a.fast_name: ["cryo-napari", "train-vae", *stack, *ARCH, *shlex.split(a.fast), "-n", str(a.fast_epochs),
                      "--seed", "0", "--convergence-every", "0", "-o"],
    }
    for name, cmd in runs.items():
        if name in a.skip:
            continue
        run = out / f"run_{name}"
        if name == "cryodrgn" and a.cryodrgn_run and name not in res.get("runs", {}):
            run = Path(a.cryodrgn_run)
            info = adopt_cryodrgn_run(run, Path(a.cryodrgn_log) if a.cryodrgn_log else None, a.epochs)
            info["epoch_s"] = cryodrgn_epoch_times(run)
            info["images_per_s"] = a.n / float(np.median(info["epoch_s"]))
            res.setdefault("runs", {})[name] = info
            save()
        elif name == "cryodrgn" and a.cryodrgn_run:
            run = Path(a.cryodrgn_run)
        if name not in res.get("runs", {}):
            shutil.rmtree(run, ignore_errors=True)  # a run interrupted before it was recorded
            print(f"running {name}: {shlex.join(cmd + [str(run)])}", flush=True)
            load = os.getloadavg()[0]
            info = launch(cmd + [str(run)], a.threads, out / f"{name}.log")
            info["load_avg_at_start"] = load
            times = cryodrgn_epoch_times(run) if name == "cryodrgn" else our_epoch_times(run)
            info["epoch_s"] = times
            info["images_per_s"] = a.n / float(np.median(times))
            res.setdefault("runs", {})[name] = info
            save()
        info = res["runs"][name]
        todo = list(range(1, a.fast_epochs + 1) if name not in ("cryodrgn", "same") else evals)
        todo = [e for e in todo if e <= len(info["epoch_s"])]
        # our maps are in the simulator's hand (tested); cryoDRGN's hand is chosen at its last epoch
        flip = None if name == "cryodrgn" else False
        todo = todo[-1:] + todo[:-1] if flip is None else todo
        rows = info.setdefault("scores", [])
        done = {r["epoch"] for r in rows}
        for e in todo:
            if e in done:
                continue
            row = score(run, e, gt, sel, a.kind, flip)
            flip = row["flip"]
            row["train_s"] = float(np.sum(info["epoch_s"][:e]))
            rows.append(row)
            print(name, json.dumps(row), flush=True)
            save()
        if a.refine_z and name not in ("cryodrgn", "same"):
            refine_scores(run, info, todo, gt, sel, a, save)
    (out / "table.md").write_text(table(res, a.kind))
    print((out / "table.md").read_text())
    return 0


def table(res: dict, kind: str) -> str:
    metric = "ARI" if kind == "discrete" else "Spearman |ρ| (best 1-D)"
    m, d = res["machine"], res["dataset"]
    swing = f" (swing 0-{d['angle']:g} degrees)" if "angle" in d else ""
    lines = [f"Dataset: {d['kind']}{swing}, D = {d['D']}, {d['n']} particles, SNR {d['snr']}, map {d['map']}. "
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads_per_run']} thread(s) per run; 1-minute "
             "load average when each run started: " + ", ".join(
                 f"{k} {v['load_avg_at_start']:.2f}" for k, v in res.get("runs", {}).items() if "load_avg_at_start" in v)
             + ".", "",
             f"| run | options (besides the stack, poses, CTF) | epoch | train s (cumulative) | images/s | peak RSS MiB | {metric} | FSC AUC |",
             "|---|---|---|---|---|---|---|---|"]
    for name, info in res.get("runs", {}).items():
        for r in sorted(info.get("scores", []), key=lambda r: r["epoch"]):
            opts = info["cmd"].split(" -o ")[0].split("ctf.pkl ", 1)[-1]
            lines.append(f"| {name} | `{opts}` | {r['epoch']} | {r['train_s']:.0f} | "
                         f"{info['images_per_s']:.1f} | {info['peak_rss_mib']:.0f} | {key_score(r, kind):.3f} | "
                         f"{r['fsc_auc']:.4f} |")
        for r in sorted(info.get("scores_refined", []), key=lambda r: r["epoch"]):
            lines.append(f"| {name} + refine-z | (refine-z: {r['refine_s']:.1f} s) | {r['epoch']} | {r['train_s']:.0f} | "
                         f"{info['images_per_s']:.1f} | {info['peak_rss_mib']:.0f} | {key_score(r, kind):.3f} | "
                         f"{r['fsc_auc']:.4f} |")
    runs = res.get("runs", {})
    if "cryodrgn" in runs and runs["cryodrgn"].get("scores"):
        ref = max(runs["cryodrgn"]["scores"], key=lambda r: r["epoch"])
        t_ref = ref["train_s"]
        lines.append("")
        lines.append(f"cryoDRGN final (epoch {ref['epoch']}): {metric} {key_score(ref, kind):.3f}, FSC AUC "
                     f"{ref['fsc_auc']:.4f}, {t_ref:.0f} s of training.")
        if "same" in runs:
            r = np.median(runs["same"]["epoch_s"]) / np.median(runs["cryodrgn"]["epoch_s"])
            lines.append(f"Per-epoch time, same architecture and batch, ours / cryoDRGN: {r:.2f}.")
        for name in [k for k in runs if k != "cryodrgn"]:
            for label, key in ((name, "scores"), (f"{name} + refine-z", "scores_refined")):
                if not runs[name].get(key):
                    continue
                hit = [r for r in sorted(runs[name][key], key=lambda r: r["epoch"])
                       if key_score(r, kind) >= key_score(ref, kind) and r["fsc_auc"] >= ref["fsc_auc"]]
                lines.append(f"Run '{label}' reaches both cryoDRGN final scores: " + (
                    f"epoch {hit[0]['epoch']}, {hit[0]['train_s']:.0f} s = {hit[0]['train_s'] / t_ref:.2f} of "
                    "cryoDRGN's time." if hit else "not within the epochs run."))
    return "\n".join(lines) + "\n"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
