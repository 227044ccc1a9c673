"""Volume-series viewer dock: open a series as a 4-D image, play it, export a movie.

Opens everything :func:`cryo_napari.napari._series_io.read_series` reads (``series.npy`` +
``series.json``, a directory of ``.mrc`` frames, a class3d run's ``iter_NNN/class_KK.mrc``) as
4-D image layers with a named slider (``frame`` / ``latent`` / ``iteration``), 3-D iso rendering
and contrast fixed across frames. **Play** uses napari's own dims animation; **Export movie**
renders each frame with ``viewer.screenshot`` and writes a GIF (imageio) or an MP4 (when
``imageio-ffmpeg`` is installed). **Follow flex run** regenerates the series along latent axis 1
from the newest complete checkpoint of a (running) flex training run (:mod:`._series_follow`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QPushButton, QSpinBox, QVBoxLayout, QWidget

from cryo_napari.errors import InputError
from cryo_napari.napari._widgets import path_row
from cryo_napari.napari._series_follow import FlexFollowMixin
from cryo_napari.napari._series_io import read_series, series_kwargs


def _notify(kind: str, text: str) -> None:
    from napari.utils import notifications

    {"error": notifications.show_error, "info": notifications.show_info}[kind](text)


def add_series(viewer, path) -> list:
    """Add the series at ``path`` to ``viewer`` as 4-D layers (3-D display, slider named); returns them."""
    layers = []
    for data, kwargs, _ in read_series(path):
        layers.append(viewer.add_image(data, **kwargs))
    viewer.dims.ndisplay = 3
    viewer.dims.set_current_step(0, 0)
    return layers


def movie_frames(viewer, axis: int = 0, size=None) -> list[np.ndarray]:
    """Screenshots (H, W, 4) uint8 of every step along dims ``axis`` (the current view otherwise)."""
    n = int(viewer.dims.nsteps[axis])
    current = viewer.dims.current_step[axis]
    viewer.screenshot(canvas_only=True, size=size)  # the first grab after showing can be black
    frames = []
    for i in range(n):
        viewer.dims.set_current_step(axis, i)
        frames.append(np.asarray(viewer.screenshot(canvas_only=True, size=size)))
    viewer.dims.set_current_step(axis, current)
    return frames


def write_movie(frames, path, fps: float = 5.0) -> Path:
    """Write frames (H, W, 3|4) uint8 as ``.gif`` or ``.mp4`` (the latter needs imageio-ffmpeg)."""
    import imageio.v2 as iio

    path = Path(path)
    suffix = path.suffix.lower()
    rgb = [np.ascontiguousarray(f[..., :3]) for f in frames]
    if suffix == ".gif":
        iio.mimsave(path, rgb, duration=1.0 / fps, loop=0)
    elif suffix == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise InputError(path, "MP4 export needs imageio-ffmpeg (pip install imageio-ffmpeg); save as .gif") from None
        even = [f[: f.shape[0] // 2 * 2, : f.shape[1] // 2 * 2] for f in rgb]
        iio.mimsave(path, even, fps=fps)
    else:
        raise InputError(path, "movies are written as .gif or .mp4")
    return path


class SeriesViewer(FlexFollowMixin, QWidget):
    """The series viewer dock (with "follow flex run", :mod:`._series_follow`)."""

    def __init__(self, napari_viewer=None):
        super().__init__()
        self.viewer = napari_viewer
        self.layers: list = []
        self._init_follow()
        lay = QVBoxLayout(self)
        row, self.path_edit = path_row("series.npy, directory of .mrc, or class3d run", self._browse,
                                       lambda t: self._guard(self.open, t))
        lay.addLayout(row)
        row = QHBoxLayout()
        self.fps = QSpinBox()
        self.fps.setRange(1, 60)
        self.fps.setValue(5)
        play = QPushButton("Play")
        play.clicked.connect(lambda: self._guard(self.play))
        export = QPushButton("Export movie…")
        export.clicked.connect(lambda: self._guard(self._export_dialog))
        for w in (QLabel("fps"), self.fps, play, export):
            row.addWidget(w)
        lay.addLayout(row)
        lay.addLayout(self._follow_row())
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        lay.addStretch(1)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        """A closed dock stops following its flex run."""
        self._close_follow()
        super().closeEvent(event)

    def _guard(self, fn, *args):
        from cryo_napari.napari._jobs import run_guarded

        return run_guarded(_notify, fn, *args)

    def _browse(self):
        path = QFileDialog.getExistingDirectory(self, "series directory")
        if path:
            self.path_edit.setText(path)

    def open(self, path) -> list:
        """Open a series in the viewer (needs a viewer)."""
        if self.viewer is None:
            raise InputError(path, "no viewer to show the series in")
        self.layers = add_series(self.viewer, path)
        d = self.layers[0].data.shape
        self.status.setText(f"{len(self.layers)} layer(s), {d[0]} {self.layers[0].axis_labels[0]} steps of {d[1]}³")
        return self.layers

    def show_series(self, data, apix: float, axis: str = "frame", name: str = "series", meta=None):
        """Show an in-memory series (F, D, D, D) (e.g. a latent path) as a 4-D layer (replaced in place)."""
        if self.viewer is None:
            raise InputError(None, "no viewer to show the series in")
        data = np.asarray(data, np.float32)
        if data.ndim != 4:
            raise InputError(None, f"a series must be (frames, D, D, D), got shape {data.shape}")
        kwargs = series_kwargs(data, float(apix), axis, name, meta)
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        layer = self.viewer.add_image(data, **kwargs)
        self.layers = [layer]
        self.viewer.dims.ndisplay = 3
        self.viewer.dims.set_current_step(0, 0)
        self.status.setText(f"{name}: {data.shape[0]} {axis} steps of {data.shape[1]}³")
        return layer

    def play(self) -> None:
        """Animate the series slider with napari's dims play."""
        qt_dims = self.viewer.window._qt_viewer.dims
        qt_dims.play(axis=0, fps=float(self.fps.value()))

    def export_movie(self, path) -> Path:
        """Render every frame and write the movie (``.gif`` / ``.mp4``)."""
        frames = movie_frames(self.viewer, axis=0)
        out = write_movie(frames, path, fps=float(self.fps.value()))
        self.status.setText(f"wrote {out} ({len(frames)} frames)")
        return out

    def _export_dialog(self):
        path, _ = QFileDialog.getSaveFileName(self, "export movie", "series.gif", "GIF (*.gif);;MP4 (*.mp4)")
        if path:
            self.export_movie(path)


def series_viewer(napari_viewer=None) -> SeriesViewer:
    """npe2 widget: the volume-series viewer."""
    return SeriesViewer(napari_viewer)
