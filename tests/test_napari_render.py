"""3-D rendering through a real OpenGL context: a generated volume and a mesh preview.

Run with ``xvfb-run -a -s "-screen 0 1280x1024x24" python -m pytest -m render
tests/test_napari_render.py`` (no ``QT_QPA_PLATFORM``); the normal offscreen run skips these (tests/conftest.py). Screenshots are
written to ``$RENDER_ARTEFACTS`` (default: the test's tmp dir) so they can be looked at.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.render


def _artefact_dir(tmp_path) -> Path:
    d = Path(os.environ.get("RENDER_ARTEFACTS", tmp_path))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _shot(viewer, qtbot, path: Path) -> np.ndarray:
    """Screenshot of the canvas (RGBA uint8), after one throw-away grab (the first can be black)."""
    viewer.reset_view()
    if viewer.dims.ndisplay == 3:
        viewer.camera.angles = (20, 30, 140)
    qtbot.wait(200)
    viewer.screenshot(canvas_only=True, flash=False)
    qtbot.wait(100)
    img = viewer.screenshot(str(path), canvas_only=True, flash=False)
    return np.asarray(img)


def _lit_fraction(img: np.ndarray, background) -> float:
    """Fraction of pixels that differ from the background colour by more than 30 (of 255)."""
    rgb = img[..., :3].astype(int)
    return float((np.abs(rgb - np.asarray(background)[None, None, :3]).max(-1) > 30).mean())


@pytest.fixture
def viewer(qtbot):
    import napari

    v = napari.Viewer(show=True)
    v.window._qt_window.resize(1100, 700)
    yield v
    v.close()


def test_generated_volume_iso_rendering_is_not_black(viewer, qtbot, tmp_path, vae_run):
    from cryo_napari.napari import _latent_explorer as LE

    ex = LE.LatentExplorer(viewer)
    viewer.window.add_dock_widget(ex, name="explorer")
    ex.load(vae_run)
    assert ex.generate_at(0) is not None
    qtbot.waitUntil(lambda: ex.worker is None, timeout=60_000)
    assert ex.last_volume is not None, ex.status.text()
    layer = viewer.layers[LE.VOLUME_LAYER]
    assert layer.rendering == "iso" and viewer.dims.ndisplay == 3
    img = _shot(viewer, qtbot, _artefact_dir(tmp_path) / "generated_volume_iso.png")
    bg = img[0, 0]  # the canvas corner is background
    lit = _lit_fraction(img, bg)
    assert lit > 0.01, f"iso rendering is blank ({lit:.4f} of pixels lit)"
    # and the threshold matters: above the maximum nothing is drawn
    layer.iso_threshold = float(ex.last_volume[0].max()) * 2 + 1
    blank = _lit_fraction(_shot(viewer, qtbot, _artefact_dir(tmp_path) / "generated_volume_blank.png"), bg)
    assert blank < lit / 5, (blank, lit)


def test_mesh_preview_surface_renders(viewer, qtbot, tmp_path, small_map):
    pytest.importorskip("cryo_napari.methods.flex.mesh")
    from cryo_napari.napari import _mesh_segmenter as MS

    dock = MS.MeshSegmenter(viewer)
    viewer.window.add_dock_widget(dock, name="mesh")
    dock.set_map(small_map, 3.0)
    dock.n_seg.setValue(3)
    dock.seed()
    dock.suggest_fuse()
    dock.cells.setValue(8)
    viewer.layers[MS.MAP_LAYER].visible = False
    viewer.layers[MS.SEG_LAYER].visible = False
    dock.preview()
    qtbot.waitUntil(lambda: dock.worker is None, timeout=60_000)
    assert dock.mesh is not None, dock.status.text()
    img = _shot(viewer, qtbot, _artefact_dir(tmp_path) / "mesh_preview.png")
    bg = img[0, 0]  # the canvas corner is background
    assert _lit_fraction(img, bg) > 0.01


def test_series_viewer_plays_and_exports_a_movie(viewer, qtbot, tmp_path):
    import imageio.v2 as iio

    from cryo_napari.napari import _series_viewer as SV

    # a growing sphere: every frame renders differently
    n, frames = 24, 5
    g = np.indices((n, n, n)) - n / 2
    r = np.sqrt((g ** 2).sum(0))
    series = np.stack([(r < 3 + 1.5 * i).astype(np.float32) for i in range(frames)])
    d = tmp_path / "s"
    d.mkdir()
    np.save(d / "series.npy", series)
    (d / "series.json").write_text('{"apix": 2.0, "axis": "frame"}')
    dock = SV.SeriesViewer(viewer)
    viewer.window.add_dock_widget(dock, name="series")
    (layer,) = dock.open(d)
    assert viewer.dims.axis_labels[0] == "frame" and viewer.dims.nsteps[0] == frames
    out = dock.export_movie(_artefact_dir(tmp_path) / "series.gif")
    back = iio.mimread(out)
    assert len(back) == frames
    lit = [_lit_fraction(np.asarray(f), np.asarray(back[0])[0, 0]) for f in back]
    assert all(a < b for a, b in zip(lit, lit[1:])), lit  # the sphere grows on screen
    dock.play()
    qtbot.waitUntil(lambda: viewer.dims.current_step[0] != 0, timeout=5_000)
    viewer.window._qt_viewer.dims.stop()
