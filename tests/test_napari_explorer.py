"""Latent explorer: polygon selections are exact, combine/invert, export and re-import (offscreen)."""

from __future__ import annotations

import os

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import json

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from cryo_napari.napari import _latent_explorer as LE  # noqa: E402
from cryo_napari.napari import _selection as S  # noqa: E402


def brute_force_inside(xy: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Even-odd ray casting, one point at a time (independent of matplotlib)."""
    out = np.zeros(len(xy), bool)
    n = len(v)
    for k, (x, y) in enumerate(xy):
        inside = False
        for a in range(n):
            (x1, y1), (x2, y2) = v[a], v[(a + 1) % n]
            if (y1 > y) != (y2 > y):
                xc = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
                if x < xc:
                    inside = not inside
        out[k] = inside
    return out


STAR = np.array([[0.0, 2.0], [0.6, 0.6], [2.0, 0.5], [0.9, -0.4], [1.3, -2.0], [0.0, -1.0],
                 [-1.3, -2.0], [-0.9, -0.4], [-2.0, 0.5], [-0.6, 0.6]])


@pytest.fixture
def explorer(qtbot, notes):
    w = LE.LatentExplorer(None)
    qtbot.addWidget(w)
    return w


@pytest.mark.parametrize("G", [8, 64, 512])
def test_grid_selection_equals_brute_force(G):
    rng = np.random.default_rng(3)
    xy = rng.standard_normal((3000, 2)) * 1.2
    v = STAR * 0.9 + [0.2, -0.1]
    ref = np.flatnonzero(brute_force_inside(xy, v))
    assert 100 < len(ref) < 2900
    np.testing.assert_array_equal(S.select_in_polygon(xy, v), ref)
    np.testing.assert_array_equal(S.select_in_polygon(xy, v, S.PointGrid(xy, G=G)), ref)


def test_programmatic_lasso_selects_exactly_inside(explorer):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((2000, 4)).astype(np.float32)
    explorer.set_latents(z)
    explorer.set_view("z", (1, 3))
    sel = explorer.select_polygon(STAR)
    ref = np.flatnonzero(brute_force_inside(z[:, [1, 3]], STAR))
    np.testing.assert_array_equal(sel.indices, ref)
    assert sel.space == "z" and sel.axes == (1, 3)
    assert explorer.sel_list.count() == 1 and str(len(ref)) in explorer.sel_list.item(0).text()


def test_pca_view_and_combinations(explorer):
    rng = np.random.default_rng(1)
    z = rng.standard_normal((1500, 3)).astype(np.float32) * [3, 1, 0.5]
    explorer.set_latents(z)
    explorer.set_view("pca", (0, 1))
    pcs = explorer.space_coords("pca")
    assert pcs.shape == (1500, 3) and pcs[:, 0].var() > pcs[:, 1].var() > pcs[:, 2].var()
    a = explorer.select_polygon(S.rectangle_vertices(-10, -10, 0, 10), "left")
    b = explorer.select_polygon(S.ellipse_vertices(-2, -2, 2, 2), "middle")
    ref_a = np.flatnonzero(brute_force_inside(pcs[:, :2], a.vertices))
    np.testing.assert_array_equal(a.indices, ref_a)
    u = explorer.combine("union", ["left", "middle"])
    i = explorer.combine("intersection", ["left", "middle"])
    np.testing.assert_array_equal(u.indices, np.union1d(a.indices, b.indices))
    np.testing.assert_array_equal(i.indices, np.intersect1d(a.indices, b.indices))
    inv = explorer.invert("left")
    assert len(inv) + len(a) == 1500 and not np.intersect1d(inv.indices, a.indices).size
    explorer.delete(u.name)
    assert u.name not in [s.name for s in explorer.selections] and explorer.sel_list.count() == 4


def test_export_and_reimport(explorer, tmp_path):
    rng = np.random.default_rng(2)
    z = rng.standard_normal((1200, 2)).astype(np.float32)
    explorer.set_latents(z)
    explorer.set_view("z", (0, 1))
    sel = explorer.select_polygon(STAR, "star")
    explorer.export("star", tmp_path / "sel.npy")
    explorer.export("star", tmp_path / "sel.json")
    doc = json.loads((tmp_path / "sel.json").read_text())
    assert set(doc) == {"space", "axes", "vertices", "run", "epoch"}
    assert doc["space"] == "z" and doc["axes"] == [0, 1] and np.allclose(doc["vertices"], STAR)
    explorer.set_view("z", (1, 0))  # the polygon import must switch back to its own axes
    back_npy = explorer.import_selection(tmp_path / "sel.npy")
    back_json = explorer.import_selection(tmp_path / "sel.json")
    np.testing.assert_array_equal(back_npy.indices, sel.indices)
    np.testing.assert_array_equal(back_json.indices, sel.indices)
    assert explorer.axes == (0, 1)
    try:
        from cryo_napari.analysis.polygon import read_polygon
    except ImportError:
        return
    poly = read_polygon(tmp_path / "sel.json")
    np.testing.assert_array_equal(np.flatnonzero(poly.select(z)), sel.indices)


def test_export_filtered_star(explorer, tmp_path, small_map):
    from cryo_napari.io.particles import load_particles
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    paths = simulate_dataset(small_map, tmp_path / "d", SimulationParams(n_particles=60, seed=4))
    z = np.random.default_rng(5).standard_normal((60, 2)).astype(np.float32)

    class Run:  # the fields the explorer reads from a run
        config = {"particles": str(paths["star"])}
        ind = None

    explorer.set_latents(z, run=Run())
    explorer.set_view("z", (0, 1))
    sel = explorer.select_polygon(S.rectangle_vertices(-5, -5, 0, 5), "neg")
    out = explorer.export("neg", tmp_path / "neg.star")
    sub = load_particles(out, datadir=tmp_path / "d")
    full = load_particles(paths["star"], datadir=tmp_path / "d")
    assert len(sub) == len(sel)
    np.testing.assert_allclose(sub.rotations, full.rotations[sel.indices], atol=1e-5)


def test_generate_volume_in_worker_and_follow_epochs(explorer, qtbot, tmp_path):
    class FakeRun:
        apix = 2.5
        D = 8

        def __init__(self):
            self.z = np.random.default_rng(0).standard_normal((50, 2)).astype(np.float32)

        def generate_volumes(self, z, D=None):
            z = np.atleast_2d(z)
            return np.stack([np.full((8, 8, 8), zi[0], np.float32) for zi in z])

    run = FakeRun()
    explorer.set_latents(run.z, run=run)
    w = explorer.generate_at(7)
    qtbot.waitUntil(lambda: explorer.last_volume is not None, timeout=10_000)
    vol, apix = explorer.last_volume
    assert vol.shape == (8, 8, 8) and vol[0, 0, 0] == pytest.approx(run.z[7, 0]) and apix == 2.5
    assert w is not None

    # following a run: a newer complete z.N.npy triggers a reload
    from cryo_napari.jobs.atomic import save_npy_atomic
    from cryo_napari.jobs.rundir import RunDir

    rd = RunDir(tmp_path / "run").create()
    rd.write_config({"apix": 1.0}, kind="train-vae")
    for ep in (1, 2):
        p = save_npy_atomic(rd.path / f"z.{ep}.npy", np.full((30, 2), ep, np.float32))
        rd.mark_complete(p, ep)
    calls = []
    explorer.load = lambda path, epoch=None: calls.append((path, epoch))
    explorer.run_path, explorer.epoch = rd.path, 1
    assert explorer.check_newer_epoch() and calls == [(rd.path, 2)]
    explorer.epoch = 2
    assert not explorer.check_newer_epoch()


def test_plain_npy_loads_and_many_points_use_histogram(explorer, tmp_path, monkeypatch):
    z = np.random.default_rng(0).standard_normal((3000, 3)).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    monkeypatch.setattr(LE, "HIST_ABOVE", 1000)
    explorer.load(tmp_path / "z.npy")
    assert explorer.run is None and explorer.z.shape == (3000, 3)
    kinds = {type(a).__name__ for a in explorer.ax.collections}
    assert "QuadMesh" in kinds and "PathCollection" not in kinds
    monkeypatch.setattr(LE, "HIST_ABOVE", 100_000)
    explorer.redraw()
    assert {type(a).__name__ for a in explorer.ax.collections} == {"PathCollection"}
    with pytest.raises(Exception, match="no decoder"):
        explorer.generate_at(0)
