"""Series viewer, class3d dashboard and mesh segmenter docks (offscreen, no image layers)."""

from __future__ import annotations

import os

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import json

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from cryo_napari.io.mrc import read_mrc, write_mrc  # noqa: E402
from cryo_napari.jobs.atomic import save_npy_atomic  # noqa: E402
from cryo_napari.jobs.rundir import RunDir  # noqa: E402
from cryo_napari.napari import _class3d_dashboard as C3  # noqa: E402
from cryo_napari.napari import _mesh_segmenter as MS  # noqa: E402
from cryo_napari.napari import _series_viewer as SV  # noqa: E402
from cryo_napari.napari._series_io import is_series, read_series  # noqa: E402


class RecordingViewer:
    """The parts of napari.Viewer the docks call, recording layers (no rendering)."""

    class _Dims:
        ndisplay = 2
        current = {}

        def set_current_step(self, axis, i):
            self.current[axis] = i

    class _Grid:
        enabled = False

    def __init__(self):
        self.layers = {}
        self.dims, self.grid = self._Dims(), self._Grid()

    def _add(self, kind, data, **kw):
        layer = type("Layer", (), {"data": data, "kind": kind, **kw})()
        self.layers[kw.get("name", f"{kind}{len(self.layers)}")] = layer
        return layer

    def add_image(self, data, **kw):
        return self._add("image", data, **kw)

    def add_labels(self, data, **kw):
        return self._add("labels", data, **kw)

    def add_surface(self, data, **kw):
        return self._add("surface", data, **kw)


# ---------------------------------------------------------------- series viewer


def test_series_npy_becomes_4d_layer(qtbot, tmp_path):
    frames = np.random.default_rng(0).standard_normal((7, 8, 8, 8)).astype(np.float32)
    frames[3] += 5  # one bright frame: the contrast must cover it in every frame
    np.save(tmp_path / "series.npy", frames)
    (tmp_path / "series.json").write_text(json.dumps({"apix": 2.5, "axis": "latent"}))
    assert is_series(tmp_path) and is_series(tmp_path / "series.npy")
    viewer = RecordingViewer()
    dock = SV.SeriesViewer(viewer)
    qtbot.addWidget(dock)
    (layer,) = dock.open(tmp_path)
    np.testing.assert_array_equal(layer.data, frames)
    assert layer.scale == (1.0, 2.5, 2.5, 2.5)
    assert layer.axis_labels == ("latent", "z", "y", "x")
    assert layer.rendering == "iso" and viewer.dims.ndisplay == 3
    assert layer.contrast_limits == (pytest.approx(frames.min()), pytest.approx(frames.max()))
    assert "7 latent steps of 8³" in dock.status.text()


def test_mrc_directory_and_class_run_series(tmp_path):
    for i in range(3):
        write_mrc(tmp_path / "frames" / f"vol_{i:03d}.mrc", np.full((6, 6, 6), i, np.float32), apix=1.5)
    (data, kw, kind), = read_series(tmp_path / "frames")
    assert data.shape == (3, 6, 6, 6) and data[2, 0, 0, 0] == 2 and kw["scale"] == (1.0, 1.5, 1.5, 1.5)
    run = tmp_path / "run"
    for it in (1, 2):
        for k in (1, 2, 3):
            write_mrc(run / f"iter_{it:03d}" / f"class_{k:02d}.mrc", np.full((4, 4, 4), 10 * it + k, np.float32), 2.0)
        write_mrc(run / f"iter_{it:03d}" / "class_01_hard.mrc", np.zeros((4, 4, 4), np.float32), 2.0)
    layers = read_series(run)
    assert [kw["name"] for _, kw, _ in layers] == ["class 1", "class 2", "class 3"]
    d, kw, _ = layers[1]
    assert d.shape == (2, 4, 4, 4) and d[1, 0, 0, 0] == 22 and kw["axis_labels"][0] == "iteration"
    assert all(kw["contrast_limits"] == (11.0, 23.0) for _, kw, _ in layers)


def test_write_gif_movie(tmp_path):
    import imageio.v2 as iio

    frames = [np.full((16, 20, 4), 40 * i, np.uint8) for i in range(4)]
    out = SV.write_movie(frames, tmp_path / "m.gif", fps=4)
    back = iio.mimread(out)
    assert len(back) == 4 and back[0].shape[:2] == (16, 20)


# ---------------------------------------------------------------- class3d dashboard


def _fake_class3d_run(path, n_iter=3, K=3, N=40, scales_one=True):
    rd = RunDir(path).create()
    rng = np.random.default_rng(0)
    for t in range(1, n_iter + 1):
        d = path / f"iter_{t:03d}"
        for k in range(K):
            write_mrc(d / f"class_{k + 1:02d}.mrc", np.full((4, 4, 4), k, np.float32), 2.0)
        np.save(d / "ess.npy", rng.uniform(1, K, N))
        np.save(d / "scales.npy", np.ones(N) if scales_one else rng.uniform(0.8, 1.2, N))
        p = save_npy_atomic(d / "posterior.npy", rng.dirichlet(np.ones(K), N).astype(np.float32))
        rd.mark_complete(p, t)
        rd.append_metrics({"phase": "fem", "iteration": t, "class_sizes": [20 - t, 12, 8 + t],
                           "switch_pct": 10.0 / t, "rms_change": 10.0 ** -t, "mean_kl": None if t == 1 else 0.1 / t,
                           "ess_hist": [1] * 10})
    return rd


def test_dashboard_reads_metrics_and_refreshes(qtbot, tmp_path):
    rd = _fake_class3d_run(tmp_path / "run", n_iter=2)
    viewer = RecordingViewer()
    dock = C3.Class3DDashboard(viewer)
    qtbot.addWidget(dock)
    dock.open(rd.path)
    d = dock.data
    assert d["sizes"].shape == (2, 3) and d["last"] == 2
    np.testing.assert_allclose(d["rms_change"], [0.1, 0.01])
    assert np.isnan(d["mean_kl"][0]) and d["mean_kl"][1] == pytest.approx(0.05)
    assert d["scales_all_one"] and "WARNING" in dock.status.text() and "1.000e-02" in dock.status.text()
    titles = [a.get_title() for a in dock.figure.axes]
    assert any("scales are 1" in t for t in titles) and any("1.000e-02" in t for t in titles)
    assert not dock.refresh()  # nothing changed
    # the run goes on: a third iteration appears
    _fake_class3d_run(tmp_path / "run", n_iter=3)
    assert dock.refresh() and dock.data["last"] == 3 and len(dock.data["iterations"]) == 5
    layers = dock.show_maps()
    assert len(layers) == 3 and viewer.grid.enabled
    assert layers[2].data[0, 0, 0] == 2


def test_dashboard_without_scale_warning(qtbot, tmp_path):
    rd = _fake_class3d_run(tmp_path / "run", n_iter=1, scales_one=False)
    dock = C3.Class3DDashboard(None)
    qtbot.addWidget(dock)
    dock.open(rd.path)
    assert not dock.data["scales_all_one"] and "WARNING" not in dock.status.text()


# ---------------------------------------------------------------- mesh segmenter


@pytest.mark.parametrize("method", ["watershed", "k-means"])
def test_mesh_segmenter_seeds_labels(qtbot, small_map, method):
    viewer = RecordingViewer()
    dock = MS.MeshSegmenter(viewer)
    qtbot.addWidget(dock)
    dock.set_map(small_map, 3.0)
    dock.method.setCurrentText(method)
    dock.n_seg.setValue(4)
    labels = dock.seed()
    present = np.unique(labels[labels > 0])
    assert 2 <= len(present) <= 4
    assert viewer.layers["segments"].n_edit_dimensions == 3
    mask = MS.density_mask(small_map, dock.threshold.value())
    np.testing.assert_array_equal(labels > 0, mask) if method == "k-means" else None
    assert np.all(labels[~mask] == 0)


def test_mesh_preview_and_save(qtbot, tmp_path, small_map):
    pytest.importorskip("cryo_napari.methods.flex.mesh", reason="flex mesh not in this build")
    viewer = RecordingViewer()
    dock = MS.MeshSegmenter(viewer)
    qtbot.addWidget(dock)
    dock.set_map(small_map, 3.0)
    dock.n_seg.setValue(3)
    labels = dock.seed()
    segs = [int(s) for s in np.unique(labels[labels > 0])]
    tree = dock.suggest_fuse()
    edges = [tuple(map(int, e.split(">"))) for e in tree.split(",") if e]
    assert edges and all(tuple(sorted(e)) in MS.touching_pairs(labels) for e in edges)
    assert len({c for _, c in edges}) == len(edges)  # each child has one parent: a forest
    dock.rigid.setText(str(segs[-1]))
    dock.cells.setValue(8)
    dock.preview()
    qtbot.waitUntil(lambda: dock.worker is None, timeout=60_000)
    assert dock.mesh is not None, dock.status.text()
    v, f, vals = dock.surface
    assert v.shape[1] == 3 and f.shape[1] == 3 and len(f) > 10
    assert set(np.unique(vals)) <= set(segs) | {0}
    layer = viewer.layers["mesh preview"]
    assert layer.kind == "surface" and layer.scale == (3.0, 3.0, 3.0)
    seg, pkl = dock.save(tmp_path / "out")
    back, apix = read_mrc(seg)
    np.testing.assert_array_equal(back.astype(np.int32), labels)
    from cryo_napari.methods.flex.mesh import TetraMesh

    assert len(TetraMesh.from_pickle(pkl).cells) == len(dock.mesh.cells)


def test_touching_pairs_and_fuse_tree():
    lab = np.zeros((6, 6, 6), np.int32)
    lab[:, :, :2], lab[:, :, 2:4], lab[:, :, 5:] = 1, 2, 3  # 1|2 touch, 3 is separated by solvent
    lab[0, 0, 2] = 1
    assert MS.touching_pairs(lab) == {(1, 2)}
    lab[:, :, 4] = 3  # now 2|3 touch; 2 is the largest segment
    lab[:, :, 2:4] = 2
    lab[:, :, 1] = 2
    assert MS.touching_pairs(lab) == {(1, 2), (2, 3)}
    assert MS.suggest_fuse_tree(lab) == "2>1,2>3"


def test_mesh_bad_fuse_is_reported(qtbot, small_map, monkeypatch):
    pytest.importorskip("cryo_napari.methods.flex.mesh", reason="flex mesh not in this build")
    seen = []
    monkeypatch.setattr(MS, "_notify", lambda kind, text: seen.append((kind, text)))
    dock = MS.MeshSegmenter(None)
    qtbot.addWidget(dock)
    dock.set_map(small_map, 3.0)
    dock.seed()
    dock.fuse.setText("1>99")
    dock.cells.setValue(6)
    dock.preview()
    qtbot.waitUntil(lambda: dock.worker is None, timeout=60_000)
    assert dock.mesh is None and seen and seen[-1][0] == "error"


def test_series_iso_threshold_shows_binary_series():
    from cryo_napari.napari._series_io import series_kwargs

    binary = np.zeros((3, 8, 8, 8), np.float32)
    binary[:, 2:6, 2:6, 2:6] = 1  # 12 % of voxels: the 97th percentile is the maximum
    kw = series_kwargs(binary, 1.0, "frame", "mask")
    assert kw["contrast_limits"] == (0.0, 1.0) and 0.0 <= kw["iso_threshold"] < 1.0
    smooth = np.random.default_rng(0).standard_normal((2, 8, 8, 8)).astype(np.float32)
    assert series_kwargs(smooth, 1.0, "frame", "x")["iso_threshold"] == pytest.approx(np.percentile(smooth, 97))
