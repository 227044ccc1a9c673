"""Foundation bar: simulate a map series, back-project its own .star and .cs, FSC vs ground truth.

Run by hand (needs ../shared/fixtures): ``python benchmarks/foundation_backproject.py [-n 5000]``.
Writes a Markdown table to stdout (paste into docs/benchmarks.md) and keeps the runs in
/tmp/cryo_napari_bench/. Maps: the shared hand map (64³, taken as 3 Å/px) and a map computed
from the 4E43 atomic model (Gaussian atoms, σ = 1 Å) at 2 Å/px in a 64 box. Series: a peripheral
domain swung 0–15° over 20 frames (continuous heterogeneity). SNR as cryoDRGN's add_noise:
variance of all clean pixels / noise variance.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT.parent / "shared" / "fixtures"
OUT = Path("/tmp/cryo_napari_bench")


def cli(*args):
    subprocess.run([sys.executable, "-m", "cryo_napari.cli.main", *map(str, args)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5000)
    ap.add_argument("--snr", type=float, nargs="+", default=[0.1])
    ap.add_argument("--snr-region", default="box", choices=["box", "particle"])
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from cryo_napari.geometry.fsc import fsc
    from cryo_napari.io.mrc import read_mrc, write_mrc
    from cryo_napari.simulate.atoms import chain_maps, read_model_atoms

    OUT.mkdir(parents=True, exist_ok=True)
    atoms = read_model_atoms(FIX / "models" / "4E43.pdb")
    write_mrc(OUT / "4e43_2A.mrc", sum(chain_maps(atoms, 64, 2.0, 1.0).values()), 2.0)
    maps = {"hand (3 Å/px)": (FIX / "volumes" / "hand-vol.mrc", ["--apix", "3"]),
            "4E43 model map (2 Å/px)": (OUT / "4e43_2A.mrc", [])}
    rows = []
    for snr in args.snr:
        for name, (path, extra) in maps.items():
            run = OUT / f"{Path(path).stem}_snr{snr}_{args.snr_region}_n{args.n}"
            t0 = time.time()
            cli("simulate", path, *extra, "--preset", "domain-motion", "-n", args.n, "--snr", snr,
                "--snr-region", args.snr_region, "-o", run)
            t_sim = time.time() - t0
            truth = np.load(run / "ground_truth.npz")
            for fmt in ("star", "cs"):
                t0 = time.time()
                cli("backproject", run / f"particles.{fmt}", "-o", run / f"bp_{fmt}")
                t_bp = time.time() - t0
                vol, _ = read_mrc(run / f"bp_{fmt}" / "map.mrc")
                c = fsc(vol, truth["mean_map"])
                D = vol.shape[-1]
                rows.append((name, f"{snr} ({args.snr_region})", fmt, float(c[: D // 4 + 1].min()), float(c[D // 4]), t_sim, t_bp))
    print(f"machine: {platform.processor() or platform.machine()}, {platform.python_version()}, n={args.n}, D=64")
    print("| map | SNR | input | min FSC vs truth, shells 0…D/4 | FSC at half Nyquist | simulate s | backproject s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | .{r[2]} | {r[3]:.3f} | {r[4]:.3f} | {r[5]:.1f} | {r[6]:.1f} |")


if __name__ == "__main__":
    main()
