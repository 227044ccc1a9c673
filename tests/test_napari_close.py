"""Closing napari or a job dock while a job runs stops it cleanly (offscreen).

The window-close question is exercised by replacing the dialog (``_close_guard._ask_user``) and the
"interactive close" test (``_close_guard._interactive_close``); offscreen, closes never ask.
"""

from __future__ import annotations

import os

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from cryo_napari.io.mrc import read_mrc, write_mrc  # noqa: E402
from cryo_napari.jobs.protocol import Progress  # noqa: E402
from cryo_napari.jobs.rundir import RunDir  # noqa: E402
from cryo_napari.napari import _close_guard as CG  # noqa: E402
from cryo_napari.napari import _jobs  # noqa: E402
from conftest import slow_fake_job  # noqa: E402


def _viewer_with(dock_name: str):
    from cryo_napari.napari._app import open_gui

    viewer, docks = open_gui(None, [dock_name], show=False)
    return viewer, docks[dock_name]


def test_closing_viewer_stops_real_training_and_last_epoch_loads(qtbot, tmp_path, notes):
    from cryo_napari.methods.vae.eval import load_vae_run
    from cryo_napari.simulate.heterogeneity import synthetic_map
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    paths = simulate_dataset(synthetic_map(16, seed=3), tmp_path / "data",
                             SimulationParams(n_particles=128, snr=1.0, apix=6.0, seed=5))
    run = tmp_path / "run"
    viewer, dock = _viewer_with("train-vae")
    closed = False
    try:
        for dest, value in (("particles", str(paths["star"])), ("outdir", str(run)), ("epochs", 500), ("zdim", 2),
                            ("enc_dim", 16), ("dec_dim", 16), ("enc_layers", 1), ("dec_layers", 1),
                            ("batch_size", "32")):
            dock.form.set(dest, value)
        assert dock.start(), notes
        qtbot.waitUntil(lambda: RunDir(run).latest_step("z", "npy") is not None, timeout=40_000)
        done = dock._done  # set in the worker's thread once it has left the job
        viewer.close()  # programmatic: no question, the job is stopped before the window goes
        closed = True
    finally:
        if not closed:
            viewer.close()
    assert done.is_set() and dock.worker is None and dock.aborted and dock.error is None, notes
    assert dock.job.gi_frame is None  # the generator was closed (its finally blocks ran)
    last = RunDir(run).latest_step("weights", "pt")
    assert 1 <= last < 500
    n_files = len(list(run.iterdir()))
    time.sleep(0.5)
    assert len(list(run.iterdir())) == n_files, "the job kept writing after the window closed"
    r = load_vae_run(run)
    assert r.epoch == min(last, RunDir(run).latest_step("z", "npy")) and r.z.shape == (128, 2)
    assert not [p for p in run.iterdir() if p.name.startswith(".tmp-")]


def test_interactive_close_asks_and_cancel_keeps_job(qtbot, tmp_path, notes, monkeypatch):
    asked = []
    answer = {"stop": False}
    monkeypatch.setattr(CG, "_interactive_close", lambda event: True)
    monkeypatch.setattr(CG, "_ask_user", lambda parent, titles: asked.append(titles) or answer["stop"])
    viewer, dock = _viewer_with("backproject")
    window = viewer.window._qt_window
    job, state = slow_fake_job(tmp_path, n=400)
    try:
        assert dock.start_job(job)
        qtbot.waitUntil(lambda: state["last"] is not None, timeout=10_000)
        window.close()  # the user cancels: the window stays, the job keeps running
        assert asked == [["backproject"]]
        assert dock.running and not state["closed"]
        n = len(list(tmp_path.glob("step_*.mrc")))
        qtbot.waitUntil(lambda: len(list(tmp_path.glob("step_*.mrc"))) > n + 2, timeout=10_000)
        answer["stop"] = True
        t0 = time.monotonic()
        window.close()  # the user accepts: stop the job, then close
        assert time.monotonic() - t0 < 5.0
        assert len(asked) == 2 and not dock.running and dock.aborted and state["closed"]
    finally:
        viewer.close()
    n_written = len(list(tmp_path.glob("step_*.mrc")))
    assert 3 < n_written < 400
    vol, _ = read_mrc(state["last"])
    assert vol[0, 0, 0] == n_written - 1  # the last complete output loads


def test_closing_a_job_dock_stops_its_job(qtbot, tmp_path, notes):
    dock = _jobs.backproject_dock(None)
    qtbot.addWidget(dock)
    job, state = slow_fake_job(tmp_path, n=400)
    assert dock.start_job(job)
    qtbot.waitUntil(lambda: state["last"] is not None, timeout=10_000)
    t0 = time.monotonic()
    dock.close()
    assert time.monotonic() - t0 < 5.0
    assert dock.worker is None and dock.aborted and state["closed"] and dock.run_button.isEnabled()
    n = len(list(tmp_path.glob("step_*.mrc")))
    time.sleep(0.2)
    assert len(list(tmp_path.glob("step_*.mrc"))) == n < 400
    assert not [n for n in notes if n[0] == "error"], notes


def test_closing_idle_viewer_with_job_docks_does_not_ask(qtbot, monkeypatch):
    monkeypatch.setattr(CG, "_interactive_close", lambda event: True)
    monkeypatch.setattr(CG, "_ask_user", lambda parent, titles: pytest.fail("asked with no job running"))
    viewer, dock = _viewer_with("backproject")
    assert viewer.window._qt_window._cryo_close_guard.docks
    viewer.close()


@pytest.mark.parametrize("press_stop", [True, False])
def test_close_question_dialog_answers(qtbot, press_stop):
    """The real QMessageBox: 'Stop job and close' → True, Cancel → False."""
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication, QMessageBox

    seen = []

    def answer():
        box = next(w for w in QApplication.topLevelWidgets() if isinstance(w, QMessageBox) and w.isVisible())
        seen.append(box.text())
        for b in box.buttons():
            if (box.buttonRole(b) == QMessageBox.AcceptRole) == press_stop:
                b.click()
                return

    QTimer.singleShot(100, answer)
    assert CG._ask_user(None, ["train-vae"]) is press_stop
    assert seen and "train-vae" in seen[0]
