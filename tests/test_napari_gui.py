"""`cryo-napari gui`, the npe2 widget contributions, run-directory drag-and-drop, flex step docks,
and closed docks that must not crash the event loop (offscreen)."""

from __future__ import annotations

import os

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import gc
import importlib
import json
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from cryo_napari.cli import gui as G  # noqa: E402
from cryo_napari.cli.main import main as cli  # noqa: E402
from cryo_napari.errors import InputError  # noqa: E402
from cryo_napari.io.mrc import write_mrc  # noqa: E402
from cryo_napari.napari._reader import get_reader, get_run_reader  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _series(d: Path, frames: int = 3, n: int = 6) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / "series.npy", np.random.default_rng(0).standard_normal((frames, n, n, n)).astype(np.float32))
    (d / "series.json").write_text(json.dumps({"apix": 2.0, "axis": "frame"}))
    return d


# ---------------------------------------------------------------- manifest widgets


def test_manifest_widgets_validate_and_build(qtbot):
    npe2 = pytest.importorskip("npe2")
    from qtpy.QtWidgets import QWidget

    manifest = npe2.PluginManifest.from_file(REPO / "napari.yaml")  # validates (pydantic) on load
    commands = {c.id: c for c in manifest.contributions.commands}
    widgets = manifest.contributions.widgets
    titles = {w.display_name for w in widgets}
    for needed in ("backproject", "train VAE", "analyze", "3D classification", "flex prep", "flex mesh",
                   "flex train", "flex generate", "flex reconstruct"):
        assert any(needed in t for t in titles), needed
    assert {"Latent explorer", "Mesh segmenter", "Volume series viewer", "Class 3D dashboard"} <= titles
    for w in widgets:
        module, _, attr = commands[w.command].python_name.partition(":")
        widget = getattr(importlib.import_module(module), attr)(None)
        qtbot.addWidget(widget)
        assert isinstance(widget, QWidget), w.command
        assert getattr(widget, "available", True), f"{w.command} is not available in this build"
    readers = manifest.contributions.readers
    assert any(r.accepts_directories for r in readers)
    # every gui --dock name builds too (same factories)
    assert set(G.DOCKS.values()) <= {c.python_name for c in commands.values()}


@pytest.mark.parametrize("step", ["prep", "mesh", "train", "generate", "reconstruct"])
def test_flex_step_docks_fix_their_step(qtbot, step):
    from cryo_napari.napari import _jobs

    dock = _jobs.JOB_DOCKS[f"flex-{step}"](None)
    qtbot.addWidget(dock)
    assert dock.form.sub_combo.value == step and not dock.form.sub_combo.visible
    sub = dock.parser._actions[-1].choices[step]
    required = [a for a in sub._actions if a.required or not a.option_strings]
    for a in required:  # fill every required option with a path
        dock.form.set(a.dest, f"/x/{a.dest}")
    from cryo_napari.napari._forms import form_to_argv, parse_form

    argv = form_to_argv(dock.form)
    assert argv[0] == step
    args = parse_form(dock.form, dock.parser)
    assert args.flex_command == step
    assert vars(args) == vars(dock.parser.parse_args(argv))


def test_flex_mesh_dock_runs_the_mesh_step(qtbot, tmp_path, small_map):
    pytest.importorskip("cryo_napari.methods.flex.mesh")
    from cryo_napari.methods.flex.mesh import TetraMesh
    from cryo_napari.napari import _jobs

    write_mrc(tmp_path / "consensus.mrc", small_map, apix=3.0)
    dock = _jobs.flex_mesh_dock(None)
    qtbot.addWidget(dock)
    dock.form.set("map", str(tmp_path / "consensus.mrc"))
    dock.form.set("out", str(tmp_path / "mesh.pkl"))
    dock.form.set("cells", 6)
    assert dock.start(), dock.status.text()
    qtbot.waitUntil(lambda: not dock.running, timeout=60_000)
    assert dock.error is None, dock.status.text()
    mesh = TetraMesh.from_pickle(tmp_path / "mesh.pkl")
    assert len(mesh.cells) > 0 and dock.progress.value() == dock.progress.maximum()


# ---------------------------------------------------------------- drag-and-drop of run directories


def test_reader_opens_vae_run_directory(vae_run):
    from cryo_napari.analysis.runs import load_latent_run

    for target in (vae_run, vae_run / "config.yaml", [str(vae_run)]):
        assert get_run_reader(target) is not None, target
    [(pts, kw, kind)] = get_run_reader(vae_run)(str(vae_run))
    z = load_latent_run(vae_run).z
    assert kind == "points" and pts.shape == (len(z), 2) and kw["metadata"]["run"] == str(vae_run)
    np.testing.assert_array_equal(kw["features"]["particle"], np.arange(len(z)))
    # PC1 (x, column 1) carries at least as much variance as PC2
    assert pts[:, 1].var() >= pts[:, 0].var() - 1e-9
    assert get_reader(str(vae_run)) is None  # the MRC reader declines directories


def test_reader_opens_series_and_declines_other_dirs(tmp_path):
    s = _series(tmp_path / "s")
    [(data, kw, kind)] = get_run_reader(s)(str(s))
    assert kind == "image" and data.shape == (3, 6, 6, 6) and kw["axis_labels"][0] == "frame"
    assert get_run_reader(s / "series.npy") is not None
    (tmp_path / "empty").mkdir()
    (tmp_path / "other.txt").write_text("x")
    assert get_run_reader(tmp_path / "empty") is None and get_run_reader(tmp_path / "other.txt") is None
    assert get_run_reader([str(s), str(s)]) is None


def test_napari_model_opens_dropped_run(vae_run):
    npe2 = pytest.importorskip("npe2")
    from napari.components import ViewerModel

    pm = npe2.PluginManager.instance()
    try:
        pm.get_manifest("cryo-napari")
    except KeyError:
        pm.register(npe2.PluginManifest.from_file(REPO / "napari.yaml"))
    viewer = ViewerModel()
    [layer] = viewer.open(str(vae_run), plugin="cryo-napari")
    assert layer.data.shape[1] == 2 and "latents" in layer.name


# ---------------------------------------------------------------- cryo-napari gui


def test_gui_plan_for_each_input(tmp_path, vae_run):
    assert G.plan() == list(G.DEFAULT_DOCKS)
    assert G.plan(vae_run)[0] == "explorer" and G.classify(vae_run / "config.yaml") == "latent-run"
    assert G.plan(_series(tmp_path / "s")) == ["series"]
    write_mrc(tmp_path / "m.mrc", np.zeros((4, 4, 4), np.float32), apix=1.0)
    assert G.plan(tmp_path / "m.mrc", ["flex-train"]) == ["mesh", "flex-train"]
    run = tmp_path / "c3d"
    write_mrc(run / "iter_001" / "class_01.mrc", np.zeros((4, 4, 4), np.float32), apix=1.0)
    assert G.plan(run) == ["dashboard", "series"]
    with pytest.raises(InputError, match="not found"):
        G.plan(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a run directory"):
        G.classify(tmp_path / "empty")


def test_gui_command_bad_input_exits_2(tmp_path, capsys):
    assert cli(["gui", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.gui
def test_gui_opens_docks_and_loads_run(qtbot, vae_run):
    from cryo_napari.napari._app import open_gui

    viewer, docks = open_gui(vae_run, ["flex-train"], show=False)
    try:
        assert list(docks) == ["explorer", "flex-train"]
        assert set(viewer.window.dock_widgets) >= {"explorer", "flex-train"}
        ex = docks["explorer"]
        assert ex.run is not None and ex.z.shape[1] == 2 and ex.epoch == 1
        assert len(ex.xy) == len(ex.z)
    finally:
        viewer.close()


# ---------------------------------------------------------------- closed docks and timers


@pytest.mark.parametrize("which", ["dashboard", "explorer"])
def test_closed_dock_timer_stops_and_gc_is_safe(qtbot, tmp_path, which):
    """Regression: a closed dock's polling timer kept firing into a garbage-collected lambda (segfault)."""
    from cryo_napari.jobs.rundir import RunDir
    from cryo_napari.napari import _class3d_dashboard as C3
    from cryo_napari.napari import _latent_explorer as LE

    RunDir(tmp_path / "run").create()
    if which == "dashboard":
        dock = C3.Class3DDashboard(None)
        dock.open(tmp_path / "run")
    else:
        dock = LE.LatentExplorer(None)
        dock.follow.setChecked(True)
    dock.timer.setInterval(10)
    assert dock.timer.isActive()
    timer = dock.timer
    dock.close()
    assert not timer.isActive()
    # What pytest-qt does between tests: close(), deleteLater() (not yet run), processEvents().
    # Even with its timer restarted, a dropped dock must not leave a slot whose closure the
    # cyclic GC has cleared (the old lambda slot segfaulted here).
    dock.timer.start()
    dock.deleteLater()
    del dock, timer
    gc.collect()
    from qtpy.QtWidgets import QApplication

    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.2:
        QApplication.processEvents()
        time.sleep(0.005)
