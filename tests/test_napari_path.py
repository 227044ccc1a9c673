"""Latent explorer paths (offscreen): clicked particles / a drawn polyline → a volume series
decoded in a worker and opened in the series viewer; each frame is the volume at its latent."""

from __future__ import annotations

import os

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from cryo_napari.errors import InputError  # noqa: E402
from cryo_napari.napari import _latent_explorer as LE  # noqa: E402
from cryo_napari.napari import _latent_path as LP  # noqa: E402


@pytest.fixture
def explorer(qtbot, vae_run):
    from napari.components import ViewerModel

    viewer = ViewerModel()
    ex = LE.LatentExplorer(viewer)
    qtbot.addWidget(ex)
    ex.load(vae_run)
    ex.D_box.setValue(8)  # small preview box keeps decoding fast
    return ex, viewer


def _click(ex, i: int):
    """A matplotlib button press at particle ``i``'s marker (display coordinates)."""
    px, py = ex.ax.transData.transform(ex.xy[i])
    return type("Click", (), {"inaxes": ex.ax, "x": px, "y": py})()


def test_clicked_path_series_frames_equal_volumes_at_interpolated_latents(qtbot, explorer, notes):
    ex, viewer = explorer
    ex.set_view("z", (0, 1))
    ex.tool_box.setCurrentText("path")
    anchors = [int(np.argmin(ex.z[:, 0])), int(np.argmax(ex.z[:, 1])), int(np.argmax(ex.z[:, 0]))]
    for a in anchors:
        ex._on_click(_click(ex, a))
    assert ex.path_points == anchors
    ex.path_n.setValue(4)
    w = ex.generate_path()
    assert w is not None
    qtbot.waitUntil(lambda: ex.path_worker is None, timeout=30_000)
    assert not notes, notes
    layer = viewer.layers[LP.SERIES_LAYER]
    series = layer.data
    assert series.shape == (2 * 3 + 1, 8, 8, 8)
    assert layer.axis_labels[0] == "latent" and viewer.dims.ndisplay == 3
    # expected latents: straight lines between the clicked particles' latents, joints once
    t = np.linspace(0, 1, 4)[:, None]
    za, zb, zc = ex.z[anchors]
    expected = np.vstack([(1 - t) * za + t * zb, ((1 - t) * zb + t * zc)[1:]]).astype(np.float32)
    np.testing.assert_allclose(ex.path_traversal.z, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(layer.metadata["z"], expected, rtol=1e-6, atol=1e-6)
    for f, zf in enumerate(expected):
        vol = ex.run.generate_volumes(zf[None], 8)[0]
        np.testing.assert_allclose(series[f], vol, rtol=1e-5, atol=1e-5)
    assert not np.allclose(series[0], series[-1])  # the path really moves through latent space
    assert layer.scale[1] == pytest.approx(ex.run.apix_at(8))


def test_drawn_polyline_on_data_frames_are_particle_volumes(qtbot, explorer, notes):
    ex, viewer = explorer
    ex.set_view("pca", (0, 1))
    lo, hi = ex.xy.min(0), ex.xy.max(0)
    vertices = np.array([lo, [hi[0], lo[1]], hi])  # an L through the PCA scatter
    ex.generate_path(vertices=vertices, n_per_segment=3, on_data=True)
    qtbot.waitUntil(lambda: ex.path_worker is None, timeout=30_000)
    tr = ex.path_traversal
    series = viewer.layers[LP.SERIES_LAYER].data
    assert series.shape[0] == len(tr.z) == 5 and tr.ind is not None
    assert tr.info["anchors"] == LP.path_anchors(ex.xy, vertices).tolist()
    np.testing.assert_array_equal(tr.z, ex.z[tr.ind])  # on-data: every point is a particle's latent
    for f in (0, 2, 4):
        np.testing.assert_allclose(series[f], ex.run.generate_volumes(ex.z[tr.ind[f]][None], 8)[0], atol=1e-5)
    # a second path replaces the layer in place (one series layer)
    ex.generate_path(anchors=[0, 1], n_per_segment=2, on_data=False)
    qtbot.waitUntil(lambda: ex.path_worker is None, timeout=30_000)
    assert [lay.name for lay in viewer.layers].count(LP.SERIES_LAYER) == 1
    assert viewer.layers[LP.SERIES_LAYER].data.shape[0] == 2
    assert not notes, notes


def test_path_needs_two_points_and_a_decoder(qtbot, explorer):
    ex, _ = explorer
    with pytest.raises(InputError, match="at least 2"):
        ex.generate_path(anchors=[3])
    with pytest.raises(InputError, match="at least 2 vertices"):
        LP.path_anchors(ex.xy, [[0.0, 0.0]])
    bare = LE.LatentExplorer(None)
    qtbot.addWidget(bare)
    bare.set_latents(ex.z)
    with pytest.raises(InputError, match="no decoder"):
        bare.generate_path(anchors=[0, 1])


def test_stop_aborts_a_long_path_between_frames(qtbot, explorer):
    ex, viewer = explorer
    ex.generate_path(anchors=[0, 1, 2, 3], n_per_segment=200, on_data=False)  # 598 frames
    qtbot.waitUntil(lambda: "volume" in ex.status.text(), timeout=10_000)
    ex.stop_path()
    qtbot.waitUntil(lambda: ex.path_worker is None, timeout=10_000)
    assert LP.SERIES_LAYER not in viewer.layers and ex.path_series is None


@pytest.mark.render  # adds a 3-D layer to a real canvas: needs OpenGL (xvfb-run), skipped offscreen
def test_path_series_opens_a_series_viewer_dock_in_the_window(qtbot, vae_run, notes):
    from cryo_napari.napari._app import open_gui
    from cryo_napari.napari._series_viewer import SeriesViewer

    viewer, docks = open_gui(vae_run, show=False)
    try:
        ex = docks["explorer"]
        ex.D_box.setValue(8)
        ex.generate_path(anchors=[0, 1, 2], n_per_segment=3)
        qtbot.waitUntil(lambda: ex.path_worker is None, timeout=30_000)
        assert "series (path)" in viewer.window.dock_widgets
        assert isinstance(ex.series_dock, SeriesViewer) and ex.series_dock.layers[0].data.shape[0] == 5
        assert "5 latent steps" in ex.series_dock.status.text()
    finally:
        viewer.close()
    assert not notes, notes
