"""Live docks: the series viewer follows a flex run's checkpoints; the explorer offers per-particle colourings."""

from __future__ import annotations

import os

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from cryo_napari.cli.main import main as cli  # noqa: E402
from cryo_napari.io.mrc import write_mrc  # noqa: E402
from cryo_napari.jobs.rundir import RunDir  # noqa: E402

D, N = 16, 60
TINY = ["--hidden", "16", "--layers", "2", "--enc-hidden", "16", "--batch-size", "20", "--seed", "1"]


def test_series_viewer_follows_flex_checkpoints(qtbot, tmp_path, notes, monkeypatch):
    pytest.importorskip("cryo_napari.methods.flex.train")
    from cryo_napari.napari import _series_follow, _series_viewer
    from cryo_napari.simulate.heterogeneity import domain_motion_series, synthetic_map
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    monkeypatch.setattr(_series_viewer, "_notify", lambda kind, text: notes.append((kind, text)))
    series, _, _ = domain_motion_series(synthetic_map(D, seed=3), 4, 15.0)
    paths = simulate_dataset(series, tmp_path / "sim", SimulationParams(n_particles=N, snr=1.0, apix=6.0, seed=1))
    write_mrc(tmp_path / "consensus.mrc", series.mean(0), 6.0)
    assert cli(["flex", "prep", str(paths["star"]), "-o", str(tmp_path / "prep"), "--train-box", str(D),
                "--map", str(tmp_path / "consensus.mrc")]) == 0
    assert cli(["flex", "mesh", str(tmp_path / "consensus.mrc"), "-o", str(tmp_path / "mesh.pkl"),
                "--cells", "4"]) == 0
    run = tmp_path / "run"
    base = ["flex", "train", str(tmp_path / "prep"), "--mesh", str(tmp_path / "mesh.pkl"), "-o", str(run), *TINY]
    assert cli([*base, "--epochs", "1"]) == 0

    from napari.components import ViewerModel

    w = _series_viewer.SeriesViewer(ViewerModel())
    qtbot.addWidget(w)
    shown = []
    real_show = w.show_series

    def record(data, apix, axis="frame", name="series", meta=None):
        shown.append((np.asarray(data), apix, axis, name, meta))
        return real_show(data, apix, axis, name, meta)

    monkeypatch.setattr(w, "show_series", record)
    w.follow_timer.setInterval(100)
    w.follow_frames.setValue(3)
    w.follow_edit.setText(str(run))
    w.follow_box.setChecked(True)  # the checkbox starts following
    assert w.follow_timer.isActive() and w.follow_run == run
    qtbot.waitUntil(lambda: len(shown) == 1, timeout=20_000)
    data, apix, axis, name, meta = shown[0]
    assert data.shape == (3, D, D, D) and np.isfinite(data).all()
    assert axis == "latent" and name == _series_follow.LIVE_LAYER and meta["epoch"] == 1 and w.shown_epoch == 1
    assert apix == pytest.approx(6.0)
    layer = w.viewer.layers[_series_follow.LIVE_LAYER]
    assert layer.data.shape == (3, D, D, D) and layer.axis_labels[0] == "latent"
    # the series matches the CLI generator on the same checkpoint
    assert cli(["flex", "generate", str(run), "-o", str(tmp_path / "gen"), "--frames", "3", "--epoch", "1"]) == 0
    np.testing.assert_allclose(data, np.load(tmp_path / "gen" / "axis1" / "series.npy"), atol=1e-5)
    # no new checkpoint: polling does not regenerate
    qtbot.wait(400)
    assert len(shown) == 1
    # a second epoch appears (resume from the latest checkpoint): the viewer regenerates from it
    assert cli([*base, "--epochs", "1", "--extra-epochs", "1", "--load", "latest"]) == 0
    assert RunDir(run).latest_step("weights", "pt") == 2
    qtbot.waitUntil(lambda: len(shown) == 2, timeout=20_000)
    assert shown[1][4]["epoch"] == 2 and w.shown_epoch == 2
    assert not np.allclose(shown[1][0], shown[0][0])
    assert len(w.viewer.layers) == 1 and w.viewer.layers[0].metadata["epoch"] == 2  # replaced in place
    assert not [n for n in notes if n[0] == "error"], notes
    # unchecking stops the timer; closing stops it too
    w.follow_box.setChecked(False)
    assert not w.follow_timer.isActive() and w.follow_run is None
    w.follow(run)
    assert w.follow_timer.isActive()
    qtbot.waitUntil(lambda: w.follow_worker is None, timeout=20_000)
    w.close()
    assert not w.follow_timer.isActive()


def test_series_viewer_follow_rejects_non_run(qtbot, tmp_path, notes, monkeypatch):
    from cryo_napari.napari import _series_viewer

    monkeypatch.setattr(_series_viewer, "_notify", lambda kind, text: notes.append((kind, text)))
    w = _series_viewer.SeriesViewer(None)
    qtbot.addWidget(w)
    w.follow_edit.setText(str(tmp_path))
    w.follow_box.setChecked(True)
    assert notes and notes[-1][0] == "error" and "config.yaml" in notes[-1][1]
    assert not w.follow_timer.isActive()


def test_explorer_offers_particle_values_of_a_vae_run(qtbot, vae_run, notes):
    from cryo_napari.io.particles import load_particles
    from cryo_napari.methods.vae.eval import load_vae_run
    from cryo_napari.napari import _latent_explorer as LE

    w = LE.LatentExplorer(None)
    qtbot.addWidget(w)
    w.load(vae_run)
    run = load_vae_run(vae_run)
    p = load_particles(run.particles, with_images=False)
    items = [w.colour_box.itemText(i) for i in range(w.colour_box.count())]
    for name in ("defocus (Å)", "scale", "true state"):
        assert name in items, items
    np.testing.assert_allclose(w.values["defocus (Å)"], (p.ctf.defocus_u_A + p.ctf.defocus_v_A) / 2)
    np.testing.assert_allclose(w.values["scale"], p.scale)
    truth = np.load(run.particles.replace("particles.star", "ground_truth.npz"))
    np.testing.assert_array_equal(w.values["true state"], truth["states"])
    if np.ptp(truth["scale"]) > 0:  # a constant true scale is not offered (nothing to colour)
        np.testing.assert_allclose(w.values["true scale"], truth["scale"])
    else:
        assert "true scale" not in items
    assert w.values["defocus (Å)"].std() > 0
    # colouring by it draws without error
    w.colour_box.setCurrentText("defocus (Å)")
    np.testing.assert_allclose(w.colour_values(), w.values["defocus (Å)"])
    # a run whose particle file has vanished still loads, without the extra colourings
    w2 = LE.LatentExplorer(None)
    qtbot.addWidget(w2)
    run.config["particles"] = str(vae_run / "missing.star")
    run.particles = run.config["particles"]
    w2.set_latents(run.z, run=run, epoch=run.epoch)
    assert w2.add_particle_values() == []
    assert w2.colour_box.findText("defocus (Å)") < 0
