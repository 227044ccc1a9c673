"""The pictures of docs/guide.md, made from a real run of the guide's own commands.

    python docs/make_guide_figures.py [--work /tmp/guide_figures] [--out docs/img/guide]

runs every command block of the guide (``docs/guide_run.py``, as ``tests/test_guide.py`` does) on
the tiny simulated dataset of its step 0, then copies the plots those commands wrote and draws
central slices of the maps they wrote, one PNG per entry of ``FIGURES``. ``tests/test_guide.py``
checks that every picture the guide shows is listed here and that the guide's commands still
write every source listed here, so the pictures cannot drift from the commands.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS))

#: picture name → files of the guide run it is made from (one plot to copy, or maps to slice)
FIGURES = {
    "bp_fsc.png": ["bp/fsc.png"],
    "convergence_embeddings.png": ["vae_lowres/convergence/embeddings.png"],
    "convergence_maps.png": ["vae_lowres/convergence/maps.png"],
    "pca_scatter.png": ["vae/analysis/pca_scatter.png"],
    "pc1_maps.png": [f"pc1/vol_{i:03d}.mrc" for i in range(5)],
    "class3d_diagnostics.png": ["class3d/diagnostics.png"],
    "class3d_maps.png": [f"class3d/iter_006/class_{k:02d}.mrc" for k in (1, 2, 3)],
    "flex_series.png": [f"flex_series/axis1/axis1_{i:03d}.mrc" for i in range(5)],
    "flex_fsc.png": ["flex_recon/fsc.png"],
}


def slices_montage(paths: list[Path], out: Path, labels: list[str]) -> None:
    """Central slices (z, y, x: one row each) of the maps at ``paths``, one column per map, shared
    grey scale per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from cryo_napari.io.mrc import read_mrc

    vols = [read_mrc(p)[0] for p in paths]
    D = vols[0].shape[0]
    fig, axes = plt.subplots(3, len(vols), figsize=(1.6 * len(vols), 4.8), squeeze=False)
    for row, take in enumerate((lambda v: v[D // 2], lambda v: v[:, D // 2], lambda v: v[:, :, D // 2])):
        sl = [take(v) for v in vols]
        lo, hi = float(np.min(sl)), float(np.max(sl))
        for col, s in enumerate(sl):
            ax = axes[row, col]
            ax.imshow(s, cmap="gray", vmin=lo, vmax=hi, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(labels[col], fontsize=8)
        axes[row, 0].set_ylabel("zyx"[row] + " = D/2", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def make_figures(work: Path, out: Path) -> list[Path]:
    """Copy or draw every ``FIGURES`` entry from the guide run in ``work`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for name, sources in FIGURES.items():
        src = [work / s for s in sources]
        missing = [str(s) for s in src if not s.exists()]
        if missing:
            raise FileNotFoundError(f"{name}: the guide run did not write {', '.join(missing)}")
        if len(src) == 1 and src[0].suffix == ".png":
            shutil.copyfile(src[0], out / name)
        else:
            slices_montage(src, out / name, [s.stem for s in src])
        made.append(out / name)
    return made


def main(argv=None) -> int:
    from guide_run import run_guide

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/guide_figures", help="scratch directory for the guide run")
    ap.add_argument("--out", default=str(DOCS / "img" / "guide"))
    a = ap.parse_args(argv)
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for block, line, r in run_guide(work):
        print(f"[block {block}] {line}", flush=True)
        if r.returncode != 0:
            print(r.stdout[-2000:], r.stderr[-3000:], sep="\n", file=sys.stderr)
            return 1
    for p in make_figures(work, Path(a.out)):
        print("wrote", p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
