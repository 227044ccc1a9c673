"""Stopping each training job from its dock leaves a loadable run (offscreen): 3D classification
mid-F-EM (the last complete ``iter_NNN`` loads with the class3d loaders) and flex train after an
epoch (the last checkpoint loads and generates). train-vae: tests/test_napari_workflows.py."""

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
from cryo_napari.napari import _jobs  # noqa: E402


def _fill(dock, values: dict) -> None:
    for dest, value in values.items():
        dock.form.set(dest, value)


def _stop(qtbot, dock, notes) -> None:
    with qtbot.waitSignal(dock.worker.finished, timeout=30_000):
        dock.stop()
    assert dock.aborted and dock.error is None and not dock.running, notes
    assert dock.job.gi_frame is None  # the generator was closed


def test_stop_class3d_mid_fem_leaves_last_iteration_loadable(qtbot, tmp_path, notes):
    pytest.importorskip("cryo_napari.methods.class3d")
    from cryo_napari.methods.class3d.outputs import complete_iterations, load_iteration
    from cryo_napari.napari._series_io import read_series
    from cryo_napari.simulate.heterogeneity import discrete_states, synthetic_map
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    maps, _, _ = discrete_states(synthetic_map(32))
    paths = simulate_dataset(maps[:2], tmp_path / "data", SimulationParams(n_particles=240, snr=1.0, seed=0))
    run = tmp_path / "run"
    dock = _jobs.class3d_dock(None)
    qtbot.addWidget(dock)
    _fill(dock, {"particles": str(paths["star"]), "outdir": str(run), "K": 2, "target_res": 12.0,
                 "init_mode": "simple", "oem_epochs": 1, "oem_batch_per_class": 60, "anneal_end": 1,
                 "switch_conv": 0.0, "max_fem": 500})
    assert dock.start(), notes
    qtbot.waitUntil(lambda: len(complete_iterations(run)) >= 2, timeout=45_000)
    _stop(qtbot, dock, notes)
    steps = complete_iterations(run)
    assert steps == list(range(1, steps[-1] + 1)) and 2 <= steps[-1] < 500
    it = load_iteration(run)
    assert it["step"] == steps[-1] and it["posterior"].shape == (240, 2)
    assert it["maps"].shape[0] == 2 and np.isfinite(it["maps"]).all()
    assert np.bincount(it["labels"], minlength=2).tolist() == it["metrics"]["class_sizes"]
    assert dock.result is None  # stopped, not finished
    # the series viewer's reader shows one frame per complete iteration
    layers = read_series(run)
    assert len(layers) == 2 and all(data.shape[0] >= len(steps) for data, _, _ in layers)
    assert not [p for p in run.rglob(".tmp-*")]


def test_stop_flex_train_after_an_epoch_leaves_checkpoint_loadable(qtbot, tmp_path, notes):
    pytest.importorskip("cryo_napari.methods.flex.train")
    from cryo_napari.methods.flex.train import load_trained
    from cryo_napari.simulate.heterogeneity import domain_motion_series, synthetic_map
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    D, N = 16, 80
    series, _, _ = domain_motion_series(synthetic_map(D, seed=3), 4, 15.0)
    paths = simulate_dataset(series, tmp_path / "sim", SimulationParams(n_particles=N, snr=1.0, apix=6.0, seed=1))
    write_mrc(tmp_path / "consensus.mrc", series.mean(0), 6.0)
    assert cli(["flex", "prep", str(paths["star"]), "-o", str(tmp_path / "prep"), "--train-box", str(D),
                "--map", str(tmp_path / "consensus.mrc")]) == 0
    assert cli(["flex", "mesh", str(tmp_path / "consensus.mrc"), "-o", str(tmp_path / "mesh.pkl"),
                "--cells", "4"]) == 0
    run = tmp_path / "run"
    dock = _jobs.flex_train_dock(None)
    qtbot.addWidget(dock)
    _fill(dock, {"prep": str(tmp_path / "prep"), "mesh": str(tmp_path / "mesh.pkl"), "outdir": str(run),
                 "hidden": 16, "layers": 2, "batch_size": 20, "epochs": 500})
    assert dock.start(), notes
    qtbot.waitUntil(lambda: RunDir(run).latest_step("weights", "pt") is not None, timeout=45_000)
    _stop(qtbot, dock, notes)
    rd = RunDir(run)
    done = rd.complete_steps("weights", "pt")
    assert done == list(range(1, done[-1] + 1)) and done[-1] < 500
    model, cfg, step = load_trained(run)
    assert step == done[-1] and model is not None
    z = np.load(run / f"z.{rd.latest_step('z', 'npy')}.npy")
    assert z.shape[0] == N and np.isfinite(z).all()
    # the stopped run is usable: generate a short series from its last checkpoint
    assert cli(["flex", "generate", str(run), "-o", str(tmp_path / "gen"), "--frames", "3"]) == 0
    assert np.load(tmp_path / "gen" / "axis1" / "series.npy").shape == (3, D, D, D)
    assert not [p for p in run.iterdir() if p.name.startswith(".tmp-")]
