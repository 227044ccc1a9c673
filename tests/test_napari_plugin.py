"""The npe2 plugin: reader, writer, sample data, manifest, and napari itself (offscreen)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before anything imports Qt

import importlib
from pathlib import Path

import numpy as np
import pytest

import cryo_napari
from cryo_napari.errors import InputError
from cryo_napari.io.mrc import read_header, read_mrc, write_mrc
from cryo_napari.napari import _sample_data
from cryo_napari.napari._reader import get_reader
from cryo_napari.napari._writer import write_volume

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "napari.yaml"
PLUGIN = "cryo-napari"


# ---------------------------------------------------------------- helpers / fixtures


def _volume(path: Path, n: int = 6, apix: float = 2.0) -> np.ndarray:
    data = np.random.default_rng(0).normal(size=(n, n, n)).astype(np.float32)
    write_mrc(path, data, apix=apix)
    return data


def _stack(path: Path, n: int = 5, box: int = 6, apix: float = 1.5, is_stack: bool | None = None) -> np.ndarray:
    data = np.random.default_rng(1).normal(size=(n, box, box)).astype(np.float32)
    write_mrc(path, data, apix=apix, is_stack=is_stack)
    return data


def _read(path) -> list[tuple]:
    reader = get_reader(str(path))
    assert callable(reader)
    return reader(str(path))


@pytest.fixture
def sample_dir(tmp_path, monkeypatch) -> Path:
    """A temporary sample-data directory with a small consensus map and 40 particles."""
    _volume(tmp_path / "consensus.mrc", n=8, apix=3.0)
    _stack(tmp_path / "particles.mrcs", n=40, box=8, apix=3.0)
    monkeypatch.setattr(_sample_data, "sample_data_dir", lambda: tmp_path)
    return tmp_path


@pytest.fixture
def plugin_manager():
    """npe2's plugin manager with this plugin registered (installed or not)."""
    npe2 = pytest.importorskip("npe2")
    pm = npe2.PluginManager.instance()
    pm.discover()
    try:
        pm.get_manifest(PLUGIN)
    except KeyError:  # running from a checkout that is not pip-installed
        pm.register(npe2.PluginManifest.from_file(MANIFEST))
    return pm


# ---------------------------------------------------------------- reader


def test_reader_volume(tmp_path):
    data = _volume(tmp_path / "vol.mrc", n=6, apix=2.0)
    [(arr, kwargs, layer_type)] = _read(tmp_path / "vol.mrc")
    assert layer_type == "image"
    assert arr.shape == (6, 6, 6)
    np.testing.assert_allclose(arr, data)
    assert tuple(kwargs["scale"]) == pytest.approx((2.0, 2.0, 2.0))
    assert kwargs["name"] == "vol"
    assert kwargs["colormap"] == "gray"
    assert kwargs["metadata"] == {"voxel_size": 2.0, "path": str(tmp_path / "vol.mrc"), "is_stack": False}


def test_reader_map_suffix_is_a_volume(tmp_path):
    _volume(tmp_path / "vol.map", n=4, apix=1.25)
    [(arr, kwargs, _)] = _read(tmp_path / "vol.map")
    assert arr.shape == (4, 4, 4)
    assert tuple(kwargs["scale"]) == pytest.approx((1.25,) * 3)


def test_reader_stack(tmp_path):
    data = _stack(tmp_path / "parts.mrcs", n=5, box=6, apix=1.5)
    [(arr, kwargs, layer_type)] = _read(tmp_path / "parts.mrcs")
    assert layer_type == "image"
    assert arr.shape == (5, 6, 6)
    np.testing.assert_allclose(np.asarray(arr), data)
    assert tuple(kwargs["scale"]) == pytest.approx((1.0, 1.5, 1.5))
    assert kwargs["axis_labels"][0] == "particle"
    assert kwargs["metadata"]["is_stack"] is True
    assert kwargs["metadata"]["voxel_size"] == pytest.approx(1.5)


def test_reader_stack_in_mrc_told_by_header(tmp_path):
    _stack(tmp_path / "parts.mrc", n=3, box=6, apix=1.5, is_stack=True)
    assert read_header(tmp_path / "parts.mrc")["is_stack"]
    [(_, kwargs, _)] = _read(tmp_path / "parts.mrc")
    assert tuple(kwargs["scale"]) == pytest.approx((1.0, 1.5, 1.5))


def test_reader_declines_other_paths(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "folder.mrc").mkdir()
    _volume(tmp_path / "vol.mrc", n=4)
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path / "folder.mrc")) is None
    assert get_reader([str(tmp_path / "vol.mrc"), str(tmp_path / "notes.txt")]) is None
    assert get_reader([]) is None


def test_reader_several_files(tmp_path):
    _volume(tmp_path / "a.mrc", n=4)
    _stack(tmp_path / "b.mrcs", n=2, box=4)
    paths = [str(tmp_path / "a.mrc"), str(tmp_path / "b.mrcs")]
    layers = get_reader(paths)(paths)
    assert [kw["name"] for _, kw, _ in layers] == ["a", "b"]


def test_reader_broken_file_is_input_error(tmp_path):
    bad = tmp_path / "broken.mrc"
    bad.write_bytes(b"not an mrc file" * 10)
    reader = get_reader(str(bad))
    with pytest.raises(InputError, match="broken.mrc"):
        reader(str(bad))


# ---------------------------------------------------------------- writer


def test_writer_round_trip(tmp_path):
    data = np.random.default_rng(2).normal(size=(5, 5, 5)).astype(np.float32)
    out = tmp_path / "saved.mrc"
    assert write_volume(str(out), data, {"scale": (3.0, 3.0, 3.0), "metadata": {}}) == [str(out)]
    back, apix = read_mrc(out)
    np.testing.assert_allclose(back, data)
    assert apix == pytest.approx(3.0)
    assert read_header(out)["is_stack"] is False


def test_writer_reader_round_trip_keeps_scale(tmp_path):
    _volume(tmp_path / "vol.mrc", n=4, apix=1.7)
    [(arr, kwargs, _)] = _read(tmp_path / "vol.mrc")
    [written] = write_volume(str(tmp_path / "copy.map"), arr, kwargs)
    [(arr2, kwargs2, _)] = _read(written)
    np.testing.assert_allclose(arr2, arr)
    assert tuple(kwargs2["scale"]) == pytest.approx(tuple(kwargs["scale"]))


def test_writer_appends_suffix_and_keeps_stack_flag(tmp_path):
    data = np.zeros((3, 4, 4), np.float32)
    [written] = write_volume(str(tmp_path / "stack"), data, {"scale": (1.0, 2.0, 2.0), "metadata": {"is_stack": True}})
    assert written.endswith("stack.mrc")
    header = read_header(written)
    assert header["is_stack"] is True
    assert header["apix"] == pytest.approx(2.0)


def test_writer_rejects_non_3d(tmp_path):
    with pytest.raises(InputError, match="3-D"):
        write_volume(str(tmp_path / "img.mrc"), np.zeros((4, 4), np.float32), {"scale": (1.0, 1.0)})


# ---------------------------------------------------------------- sample data


def test_sample_consensus(sample_dir):
    [(arr, kwargs, layer_type)] = _sample_data.consensus_map()
    assert layer_type == "image"
    assert arr.shape == (8, 8, 8)
    assert tuple(kwargs["scale"]) == pytest.approx((3.0, 3.0, 3.0))


def test_sample_particles_first_32(sample_dir):
    [(arr, kwargs, layer_type)] = _sample_data.particles()
    assert layer_type == "image"
    assert arr.shape == (32, 8, 8)
    assert tuple(kwargs["scale"]) == pytest.approx((1.0, 3.0, 3.0))
    assert "32" in kwargs["name"]


def test_sample_file_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(_sample_data, "sample_data_dir", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match="consensus.mrc"):
        _sample_data.consensus_map()


def test_sample_data_dir_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(cryo_napari, "__file__", str(tmp_path / "pkg" / "cryo_napari" / "__init__.py"))
    with pytest.raises(FileNotFoundError, match="sample data not found"):
        _sample_data.sample_data_dir()


def test_sample_data_dir_prefers_package_dir(tmp_path, monkeypatch):
    pkg = tmp_path / "cryo_napari"
    (pkg / "sample_data").mkdir(parents=True)
    (tmp_path / "sample_data").mkdir()
    monkeypatch.setattr(cryo_napari, "__file__", str(pkg / "__init__.py"))
    assert _sample_data.sample_data_dir() == (pkg / "sample_data").resolve()


# ---------------------------------------------------------------- manifest


def test_manifest_validates():
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    assert manifest.name == PLUGIN
    assert manifest.display_name == "cryo_napari"
    contrib = manifest.contributions
    assert set(contrib.readers[0].filename_patterns) == {"*.mrc", "*.mrcs", "*.map"}
    assert contrib.writers[0].layer_types == ["image"]
    assert {s.key for s in contrib.sample_data} == {"consensus", "particles"}
    for command in contrib.commands:  # every python_name resolves to a callable
        module, _, attr = command.python_name.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), command.python_name


def test_package_manifest_matches_top_level():
    """``cryo_napari/napari.yaml`` (the entry point's target) is the top-level manifest."""
    packaged = Path(cryo_napari.__file__).parent / "napari.yaml"
    assert packaged.read_text() == MANIFEST.read_text()


# ---------------------------------------------------------------- napari (no Qt)


def test_napari_viewer_model_opens_files(tmp_path, plugin_manager):
    pytest.importorskip("napari")
    from napari.components import ViewerModel

    _volume(tmp_path / "vol.mrc", n=4, apix=2.5)
    _stack(tmp_path / "parts.mrcs", n=3, box=4, apix=1.5)
    viewer = ViewerModel()
    [vol] = viewer.open(str(tmp_path / "vol.mrc"), plugin=PLUGIN)
    [stack] = viewer.open(str(tmp_path / "parts.mrcs"), plugin=PLUGIN)
    assert vol.scale == pytest.approx([2.5, 2.5, 2.5])
    assert vol.rendering == "iso"
    assert stack.scale == pytest.approx([1.0, 1.5, 1.5])
    assert stack.axis_labels[0] == "particle"
    [written] = vol.save(str(tmp_path / "saved.mrc"), plugin=PLUGIN)
    assert read_mrc(written)[1] == pytest.approx(2.5)


def test_napari_viewer_model_opens_samples(sample_dir, plugin_manager):
    pytest.importorskip("napari")
    from napari.components import ViewerModel

    viewer = ViewerModel()
    [consensus] = viewer.open_sample(PLUGIN, "consensus")
    [particles] = viewer.open_sample(PLUGIN, "particles")
    assert consensus.data.shape == (8, 8, 8)
    assert particles.data.shape == (32, 8, 8)


# ---------------------------------------------------------------- napari Qt viewer (offscreen)


def _qt_viewer():
    pytest.importorskip("qtpy")
    napari = pytest.importorskip("napari")
    return napari.Viewer(show=False)


def _has_opengl() -> bool:
    """Whether vispy can get an OpenGL context (not with the bare offscreen Qt platform)."""
    try:
        from napari._vispy.utils.gl import get_gl_extensions

        return bool(get_gl_extensions())
    except Exception:
        return False


@pytest.mark.gui
def test_qt_viewer_lists_plugin(plugin_manager):
    viewer = _qt_viewer()
    try:
        manifest = plugin_manager.get_manifest(PLUGIN)
        assert {s.key for s in manifest.contributions.sample_data} == {"consensus", "particles"}
        readers = [r.plugin_name for r in plugin_manager.iter_compatible_readers(["x.mrcs"])]
        assert PLUGIN in readers
    finally:
        viewer.close()


@pytest.mark.gui
def test_qt_viewer_opens_volume(tmp_path, plugin_manager):
    _volume(tmp_path / "vol.mrc", n=4, apix=2.5)
    viewer = _qt_viewer()
    try:
        if not _has_opengl():
            pytest.skip("no OpenGL context under QT_QPA_PLATFORM=offscreen; image layers need one")
        [layer] = viewer.open(str(tmp_path / "vol.mrc"), plugin=PLUGIN)
        assert layer in viewer.layers
        assert layer.scale == pytest.approx([2.5, 2.5, 2.5])
    finally:
        viewer.close()
