"""Dock workflows on real runs (offscreen): Stop a real training, follow a run's newest epoch,
the histogram view above 100k points, painting in the segmenter, dropping a cryoDRGN run."""

from __future__ import annotations

import os

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import shutil
import time

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from cryo_napari.jobs.protocol import Progress  # noqa: E402
from cryo_napari.jobs.rundir import RunDir  # noqa: E402
from cryo_napari.napari import _jobs  # noqa: E402
from cryo_napari.napari import _latent_explorer as LE  # noqa: E402
from cryo_napari.napari import _mesh_segmenter as MS  # noqa: E402


def test_stop_real_training_leaves_last_epoch_loadable(qtbot, tmp_path, notes):
    """Stop a train-vae job started from its dock: the last complete epoch loads and resumes."""
    from cryo_napari.methods.vae.eval import load_vae_run
    from cryo_napari.simulate.heterogeneity import synthetic_map
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    paths = simulate_dataset(synthetic_map(16, seed=3), tmp_path / "data",
                             SimulationParams(n_particles=256, snr=1.0, apix=6.0, seed=5))
    run = tmp_path / "run"
    dock = _jobs.train_vae_dock(None)
    qtbot.addWidget(dock)
    for dest, value in (("particles", str(paths["star"])), ("outdir", str(run)), ("epochs", 500), ("zdim", 2),
                        ("enc_dim", 16), ("dec_dim", 16), ("enc_layers", 1), ("dec_layers", 1), ("batch_size", "32"),
                        ("convergence_embedding", "pca")):
        dock.form.set(dest, value)
    assert dock.start(), notes
    qtbot.waitUntil(lambda: RunDir(run).latest_step("z", "npy") is not None, timeout=60_000)
    with qtbot.waitSignal(dock.worker.finished, timeout=30_000):
        dock.stop()
    assert dock.aborted and dock.error is None and not dock.running, notes
    assert "stopped" in dock.status.text()
    last = RunDir(run).latest_step("weights", "pt")
    assert 1 <= last < 500
    r = load_vae_run(run)  # the last complete epoch loads
    assert r.epoch == min(last, RunDir(run).latest_step("z", "npy")) and r.z.shape == (256, 2)
    assert any(isinstance(e, Progress) for e in dock.events)


def test_explorer_follows_newest_epoch_of_a_run(qtbot, tmp_path, vae_run, notes):
    run = tmp_path / "run"
    shutil.copytree(vae_run, run)
    ex = LE.LatentExplorer(None)
    qtbot.addWidget(ex)
    ex.load(run)
    assert ex.epoch == 1 and ex.run is not None
    ex.timer.setInterval(20)
    ex.follow.setChecked(True)
    # training writes epoch 2: weights and z with their markers, z shifted so the reload shows
    rd = RunDir(run)
    shutil.copy(run / "weights.1.pt", run / "weights.2.pt")
    rd.mark_complete(run / "weights.2.pt", 2)
    from cryo_napari.jobs.atomic import save_npy_atomic

    z2 = np.load(run / "z.1.npy") + 5.0
    rd.mark_complete(save_npy_atomic(run / "z.2.npy", z2), 2)
    qtbot.waitUntil(lambda: ex.epoch == 2, timeout=10_000)
    np.testing.assert_allclose(ex.z, z2)
    ex.close()
    assert not ex.timer.isActive() and not ex.follow.isChecked()
    assert not [n for n in notes if n[0] == "error"], notes


def test_explorer_histogram_above_100k_points_and_lasso_still_exact(qtbot):
    ex = LE.LatentExplorer(None)
    qtbot.addWidget(ex)
    z = np.random.default_rng(0).standard_normal((150_000, 2)).astype(np.float32)
    t0 = time.perf_counter()
    ex.set_latents(z)
    ex.space_box.setCurrentText("z")
    draw_s = time.perf_counter() - t0
    kinds = {type(a).__name__ for a in ex.ax.collections}
    assert len(z) > LE.HIST_ABOVE == 100_000
    assert "QuadMesh" in kinds and "PathCollection" not in kinds
    square = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)
    sel = ex.select_polygon(square)
    inside = np.flatnonzero((np.abs(z[:, 0]) < 1) & (np.abs(z[:, 1]) < 1))
    np.testing.assert_array_equal(np.sort(sel.indices), inside)
    assert draw_s < 20, draw_s


def test_segmenter_uses_painted_labels(qtbot, small_map, notes):
    """Painting in the napari Labels layer (3-D brush) changes what the mesh is built from."""
    pytest.importorskip("cryo_napari.methods.flex.mesh")
    from napari.components import ViewerModel

    viewer = ViewerModel()
    dock = MS.MeshSegmenter(viewer)
    qtbot.addWidget(dock)
    dock.set_map(small_map, 3.0)
    dock.n_seg.setValue(2)
    labels = dock.seed().copy()  # the layer paints in place
    layer = viewer.layers[MS.SEG_LAYER]
    assert layer.n_edit_dimensions == 3 and layer.scale.tolist() == [3.0] * 3
    # paint a new segment 7 with a ball brush inside the density, as the user would
    zyx = np.argwhere(labels > 0)
    centre = zyx[len(zyx) // 2]
    layer.brush_size = 5
    layer.selected_label = 7
    layer.paint(tuple(centre), 7)
    painted = dock.current_labels()
    assert (painted == 7).sum() > 1 and (labels == 7).sum() == 0
    assert np.count_nonzero(painted[:, :, :] != labels) == (painted == 7).sum()
    # erase: label 0 where the brush goes
    layer.paint(tuple(zyx[0]), 0)
    assert dock.current_labels()[tuple(zyx[0])] == 0
    dock.suggest_fuse()
    dock.cells.setValue(8)
    dock.preview()
    qtbot.waitUntil(lambda: dock.worker is None, timeout=60_000)
    assert dock.mesh is not None, dock.status.text()
    assert 7 in set(dock.mesh.cell_segment.tolist())
    assert MS.MESH_LAYER in viewer.layers and viewer.dims.ndisplay == 3


def test_dropped_cryodrgn_run_opens_as_latents(fixtures_dir):
    from cryo_napari.napari._reader import get_run_reader

    run = fixtures_dir / "cryodrgn-run"
    reader = get_run_reader(str(run))
    assert reader is not None
    [(pts, kw, kind)] = reader(str(run))
    import pickle

    with open(run / "z.pkl", "rb") as f:
        z = pickle.load(f)
    assert kind == "points" and pts.shape == (len(z), 2) and kw["metadata"]["kind"] in ("cryodrgn", None)
