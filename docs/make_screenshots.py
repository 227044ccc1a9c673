"""Screenshots of every cryo_napari dock on the bundled sample data, for docs/napari.md.

Run under a display (OpenGL for the 3-D views)::

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshots.py [--out docs/img] [--work /tmp/shots]

It trains a small VAE on the sample particles (a minute on a laptop CPU), runs a short 3-D
classification, generates a series from the VAE along its first principal component, and
writes one PNG per dock (``docs/img/<dock>.png``): the whole napari window with the dock shown.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "cryo_napari" / "sample_data"


def _wait(app, viewer, seconds=0.5):
    import time

    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        app.processEvents()
        time.sleep(0.01)


def _shoot(app, viewer, dock_name: str, path: Path) -> None:
    for name, dw in viewer.window.dock_widgets.items():
        if name == dock_name:
            dw.raise_()
    _wait(app, viewer, 0.5)
    viewer.window.screenshot(str(path), flash=False)  # once to warm up the GL canvas
    _wait(app, viewer, 0.2)
    viewer.window.screenshot(str(path), flash=False)
    print("wrote", path)


def _wait_for(app, cond, timeout=600):
    import time

    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError("timed out")
        app.processEvents()
        time.sleep(0.02)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "docs" / "img"))
    ap.add_argument("--work", default="/tmp/cryo_napari_shots")
    ap.add_argument("--epochs", type=int, default=8)
    a = ap.parse_args(argv)
    out, work = Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)

    from cryo_napari.cli.main import main as cli

    star = SAMPLE / "particles.star"
    vae = work / "vae"
    if not (vae / "final.json").exists():
        assert cli(["train-vae", str(star), "-o", str(vae), "-n", str(a.epochs), "--zdim", "2", "--enc-dim", "64",
                    "--dec-dim", "64", "--enc-layers", "2", "--dec-layers", "2", "-b", "16"]) == 0
    c3d = work / "class3d"
    if not (c3d / "final.json").exists():
        assert cli(["class3d", str(star), "-K", "2", "-o", str(c3d), "--max-fem", "4"]) == 0

    import napari
    from qtpy.QtWidgets import QApplication

    from cryo_napari.analysis.runs import load_latent_run
    from cryo_napari.napari._app import open_gui

    # a volume series along PC1 of the VAE latents
    series = work / "series"
    if not (series / "series.npy").exists():
        run = load_latent_run(vae)
        z = np.asarray(run.z, np.float64)
        zc = z - z.mean(0)
        pc1 = np.linalg.svd(zc, full_matrices=False)[2][0]
        s = zc @ pc1
        path = z.mean(0)[None] + np.linspace(s.min(), s.max(), 9)[:, None] * pc1[None]
        vols = np.asarray(run.generate_volumes(path.astype(np.float32)), np.float32)
        series.mkdir(parents=True, exist_ok=True)
        np.save(series / "series.npy", vols)
        (series / "series.json").write_text(json.dumps({"apix": float(run.apix), "axis": "latent"}))

    viewer, docks = open_gui(None, ["train-vae"], show=True)
    viewer.window._qt_window.resize(1500, 950)
    app = QApplication.instance()
    form = docks["train-vae"].form
    form.set("particles", str(star))
    form.set("outdir", str(work / "vae_from_dock"))
    for dest, value in (("epochs", 2), ("zdim", 2), ("enc_dim", 64), ("dec_dim", 64), ("batch_size", "16")):
        form.set(dest, value)
    shutil.rmtree(work / "vae_from_dock", ignore_errors=True)
    dock = docks["train-vae"]
    assert dock.start(), dock.status.text()
    _wait_for(app, lambda: not dock.running)
    _shoot(app, viewer, "train-vae", out / "job_dock.png")
    viewer.close()

    viewer, docks = open_gui(vae, show=True)
    viewer.window._qt_window.resize(1500, 950)
    ex = docks["explorer"]
    ex.colour_box.setCurrentText("k-means")
    xy = ex.xy
    c, r = xy.mean(0), xy.std(0)
    ex.select_polygon(np.array([c, c + [r[0], 0], c + r, c + [0, r[1]]]), "quadrant")
    ex.generate_at(int(np.argmin(((xy - c) ** 2).sum(1))))
    _wait_for(app, lambda: ex.worker is None)
    _shoot(app, viewer, "explorer", out / "latent_explorer.png")
    viewer.close()

    viewer, docks = open_gui(SAMPLE / "consensus.mrc", show=True)
    viewer.window._qt_window.resize(1500, 950)
    ms = docks["mesh"]
    ms.n_seg.setValue(3)
    ms.seed()
    ms.suggest_fuse()
    ms.cells.setValue(12)
    ms.preview()
    _wait_for(app, lambda: ms.worker is None)
    for name in ("consensus", "segments"):
        viewer.layers[name].visible = False
    viewer.camera.angles = (20, 30, 140)
    _shoot(app, viewer, "mesh", out / "mesh_segmenter.png")
    viewer.close()

    viewer, docks = open_gui(series, show=True)
    viewer.window._qt_window.resize(1500, 950)
    viewer.dims.set_current_step(0, 4)
    viewer.camera.angles = (20, 30, 140)
    _shoot(app, viewer, "series", out / "series_viewer.png")
    viewer.close()

    viewer, docks = open_gui(c3d, show=True)
    viewer.window._qt_window.resize(1500, 950)
    docks["dashboard"].show_maps()
    _shoot(app, viewer, "dashboard", out / "class3d_dashboard.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    os.environ.pop("QT_QPA_PLATFORM", None) if os.environ.get("DISPLAY") else None
    sys.exit(main())
