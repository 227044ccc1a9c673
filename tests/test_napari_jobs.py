"""Job docks: forms from argparse, jobs in a thread worker, Stop, refusal, errors (offscreen)."""

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

from qtpy.QtCore import QTimer  # noqa: E402

from cryo_napari.errors import InputError  # noqa: E402
from cryo_napari.io.mrc import read_mrc, write_mrc  # noqa: E402
from cryo_napari.jobs.protocol import Artifact, Metric, Progress  # noqa: E402
from cryo_napari.napari import _jobs  # noqa: E402
from cryo_napari.napari._forms import FormError, build_form, form_to_argv, parse_form, parser_for  # noqa: E402
from conftest import slow_fake_job  # noqa: E402


def test_form_round_trips_cli_defaults():
    parser = parser_for("backproject")
    form = build_form(parser)
    with pytest.raises(FormError, match="required"):
        parse_form(form, parser)
    form.set("particles", "/data/p.star")
    form.set("outdir", "/data/out")
    args = parse_form(form, parser)
    cli = parser.parse_args(["/data/p.star", "-o", "/data/out"])
    assert vars(args) == vars(cli)
    form.set("batch", 17)
    form.set("flip", True)
    assert form_to_argv(form) == ["/data/p.star", "--outdir", "/data/out", "--flip", "--batch", "17"]
    args = parse_form(form, parser)
    assert args.batch == 17 and args.flip and not args.uninvert


def test_form_of_train_vae_keeps_floats_and_tristate():
    try:
        parser = parser_for("train_vae")
    except ModuleNotFoundError as exc:
        pytest.skip(f"train_vae not in this build ({exc.name})")
    form = build_form(parser)
    form.set("particles", "/p.star")
    form.set("outdir", "/o")
    base = vars(parse_form(form, parser))
    assert base == vars(parser.parse_args(["/p.star", "-o", "/o"]))
    form.set("amp", "no")
    assert parse_form(form, parser).amp is False


def test_every_dock_builds(qtbot):
    for make in (_jobs.backproject_dock, _jobs.train_vae_dock, _jobs.class3d_dock, _jobs.flex_dock,
                 _jobs.analyze_dock, _jobs.convergence_dock, _jobs.refine_z_dock):
        dock = make(None)
        qtbot.addWidget(dock)
        if not dock.available:
            assert "not available in this build" in dock.layout().itemAt(0).widget().text()


def test_backproject_dock_runs_in_thread_while_event_loop_runs(qtbot, tmp_path, small_map, notes):
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    paths = simulate_dataset(small_map, tmp_path / "data", SimulationParams(n_particles=200, snr=1.0, seed=1))
    dock = _jobs.backproject_dock(None)
    qtbot.addWidget(dock)
    dock.form.set("particles", str(paths["star"]))
    dock.form.set("outdir", str(tmp_path / "bp"))
    dock.form.set("batch", 64)
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start(5)
    assert dock.start()
    assert dock.running
    qtbot.waitUntil(lambda: not dock.running, timeout=60_000)
    timer.stop()
    assert not dock.running and dock.error is None, notes
    assert Path(dock.result["map"]).exists()
    vol, apix = read_mrc(dock.result["map"])
    assert vol.shape == (32, 32, 32) and apix == pytest.approx(3.0)
    assert len(ticks) >= 3, "the Qt event loop did not run while the job ran"
    assert any(isinstance(e, Progress) for e in dock.events)
    assert dock.progress.value() == dock.progress.maximum()


def test_stop_aborts_at_next_yield_and_last_output_loads(qtbot, tmp_path, notes):
    dock = _jobs.backproject_dock(None)
    qtbot.addWidget(dock)
    job, state = slow_fake_job(tmp_path, n=500, sleep_s=0.02)
    assert dock.start_job(job, total=500)
    qtbot.waitUntil(lambda: len([e for e in dock.events if isinstance(e, Progress)]) >= 5, timeout=20_000)
    t0 = time.monotonic()
    with qtbot.waitSignal(dock.worker.finished, timeout=10_000):
        dock.stop()
    assert time.monotonic() - t0 < 2.0
    assert dock.aborted and dock.result is None and state["closed"]
    n_written = len(list(tmp_path.glob("step_*.mrc")))
    assert 5 <= n_written < 500
    vol, _ = read_mrc(state["last"])
    assert vol.shape == (4, 4, 4) and vol[0, 0, 0] == n_written - 1
    assert dock.plot.series["loss"][0][-1] >= 4
    assert not dock.running and dock.run_button.isEnabled()


def test_second_job_is_refused_while_one_runs(qtbot, tmp_path, notes):
    dock = _jobs.backproject_dock(None)
    qtbot.addWidget(dock)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    job1, _ = slow_fake_job(tmp_path / "a", n=300)
    job2, state2 = slow_fake_job(tmp_path / "b", n=3)
    assert dock.start_job(job1)
    assert not dock.start_job(job2)
    assert notes and notes[-1][0] == "warning" and "already running" in notes[-1][1]
    assert state2["last"] is None and not list((tmp_path / "b").iterdir())
    with qtbot.waitSignal(dock.worker.finished, timeout=10_000):
        dock.stop()


def test_input_error_becomes_notification(qtbot, tmp_path, notes):
    dock = _jobs.backproject_dock(None)
    qtbot.addWidget(dock)
    bad = tmp_path / "nope.star"
    bad.write_text("this is not a star file\n")
    dock.form.set("particles", str(bad))
    dock.form.set("outdir", str(tmp_path / "out"))
    started = dock.start()
    if started:
        qtbot.waitUntil(lambda: not dock.running, timeout=20_000)
    assert isinstance(dock.error, InputError)
    kind, text = notes[-1]
    assert kind == "error" and "nope.star" in text and "\n" not in text
    assert not dock.running and dock.run_button.isEnabled()
    # the dock keeps working: the next job runs
    job, _ = slow_fake_job(tmp_path, n=2, sleep_s=0.0)
    assert dock.start_job(job)
    qtbot.waitUntil(lambda: not dock.running, timeout=10_000)
    assert dock.result == "finished"


def test_runtime_error_in_job_is_reported(qtbot, notes):
    def boom():
        yield Progress(0, 1)
        raise RuntimeError("decoder exploded")

    dock = _jobs.backproject_dock(None)
    qtbot.addWidget(dock)
    dock.start_job(boom())
    qtbot.waitUntil(lambda: not dock.running, timeout=10_000)
    assert notes[-1] == ("error", "RuntimeError: decoder exploded")


def test_map_artifact_opens_layer(qtbot, tmp_path, notes):
    class FakeLayers(dict):
        pass

    class FakeViewer:
        def __init__(self):
            self.layers = FakeLayers()

        def add_image(self, data, **kw):
            self.layers[kw["name"]] = type("L", (), {"data": data})()

    path = tmp_path / "map.mrc"
    write_mrc(path, np.ones((4, 4, 4), np.float32), apix=2.0)

    def job():
        yield Artifact("map", path)

    viewer = FakeViewer()
    dock = _jobs.JobDock(viewer, "backproject")
    qtbot.addWidget(dock)
    dock.start_job(job())
    qtbot.waitUntil(lambda: not dock.running, timeout=10_000)
    assert "map" in viewer.layers and viewer.layers["map"].data.shape == (4, 4, 4)


def test_convergence_dock_plots_shifts_and_marker_map_agreement(qtbot, tmp_path, notes):
    from cryo_napari.cli.main import main as cli
    from cryo_napari.jobs.protocol import Metric
    from cryo_napari.simulate.heterogeneity import synthetic_map
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    paths = simulate_dataset(synthetic_map(16, seed=3), tmp_path / "data",
                             SimulationParams(n_particles=100, snr=1.0, apix=6.0, seed=5))
    run = tmp_path / "run"
    assert cli(["train-vae", str(paths["star"]), "-o", str(run), "-n", "2", "--enc-dim", "16", "--dec-dim", "16",
                "--zdim", "2"]) == 0
    dock = _jobs.convergence_dock(None)
    qtbot.addWidget(dock)
    for dest, value in (("run", str(run)), ("every", 1), ("embedding", "pca"), ("markers", 3)):
        dock.form.set(dest, value)
    assert dock.start()
    qtbot.waitUntil(lambda: not dock.running, timeout=60_000)
    assert dock.error is None, notes
    assert dock.result["evaluated_epochs"] == [1, 2] and (run / "convergence" / "sketch.png").exists()
    names = {e.name for e in dock.events if isinstance(e, Metric)}
    assert names == {"median_relative_latent_shift", "marker_map_cc"}
