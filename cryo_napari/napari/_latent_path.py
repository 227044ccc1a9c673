"""Latent explorer paths: a sequence of clicked particles (or a drawn polyline) → a volume series.

With the explorer's tool *path*, each click adds the nearest particle as an anchor (drawn as a
line in the scatter); **Generate path** builds the latent points between consecutive anchors with
:func:`cryo_napari.analysis.traversal.direct_traversal` (straight interpolation between the
anchors' latents, or, with *on data*, each point snapped to its nearest particle), decodes them in a
background worker (one frame per ``yield``, so Stop/close aborts between frames) and opens the
series (F, D, D, D) in the volume-series viewer with a ``latent`` slider.

A drawn polyline (vertices in the current 2-D view, e.g. from a napari Shapes *path*) is turned
into anchors by the nearest particle to each vertex (:func:`path_anchors`).
"""

from __future__ import annotations

import numpy as np

from cryo_napari.errors import InputError

SERIES_LAYER = "latent path"


def path_anchors(xy, vertices) -> np.ndarray:
    """Particle index (V,) nearest each vertex (V, 2) of a polyline drawn in the 2-D view ``xy`` (N, 2)."""
    from cryo_napari.analysis.clustering import nearest_points

    v = np.asarray(vertices, float)
    if v.ndim != 2 or v.shape[1] != 2 or len(v) < 2:
        raise InputError(None, f"a path needs at least 2 vertices (V, 2), got shape {v.shape}")
    return nearest_points(xy, v)


def path_traversal(z, anchors, n_per_segment: int = 5, on_data: bool = False):
    """Latent points through ``anchors`` (particle indices, ≥ 2) in order.

    Each segment is :func:`~cryo_napari.analysis.traversal.direct_traversal` with
    ``n_per_segment`` points (end points included); joints are not repeated, so the path has
    ``(len(anchors) - 1) * (n_per_segment - 1) + 1`` points.

    Returns
    -------
    Traversal
        ``z`` (F, zdim), ``ind`` (F,) particle indices with ``on_data`` (else None), kind ``"path"``.
    """
    from cryo_napari.analysis.traversal import Traversal, direct_traversal

    anchors = [int(a) for a in anchors]
    if len(anchors) < 2:
        raise InputError(None, "a path needs at least 2 points (click 2 or more particles)")
    if int(n_per_segment) < 2:
        raise InputError(None, f"points per segment must be ≥ 2, got {n_per_segment}")
    zs, inds = [], []
    for k, (a, b) in enumerate(zip(anchors[:-1], anchors[1:])):
        seg = direct_traversal(z, a, b, int(n_per_segment), on_data=on_data)
        start = 0 if k == 0 else 1
        zs.append(seg.z[start:])
        if seg.ind is not None:
            inds.append(seg.ind[start:])
    ind = np.concatenate(inds) if on_data else None
    return Traversal(np.concatenate(zs).astype(np.float32), ind, "path",
                     {"anchors": anchors, "n_per_segment": int(n_per_segment), "on_data": bool(on_data)})


def decode_series(run, z, D=None):
    """Generator (worker): decode each latent (F, zdim) with ``run.generate_volumes``; yields the
    frame index after each map and returns the stack (F, D, D, D) float32."""
    frames = []
    for i, zi in enumerate(np.asarray(z, np.float32)):
        frames.append(np.asarray(run.generate_volumes(zi[None], D)[0], np.float32))
        yield i
    return np.stack(frames)


class PathMixin:
    """Path tool of :class:`~cryo_napari.napari._latent_explorer.LatentExplorer` (state + actions)."""

    def _init_path(self) -> None:
        self.path_points: list[int] = []
        self.path_worker = None
        self.path_traversal = None
        self.path_series = None
        self.series_dock = None

    def _path_row(self):
        """The dock's path controls: frames per segment, on data, generate / stop / clear."""
        from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QPushButton, QSpinBox

        row = QHBoxLayout()
        self.path_n = QSpinBox()
        self.path_n.setRange(2, 200)
        self.path_n.setValue(5)
        self.path_n.setToolTip("volumes per path segment (ends included)")
        self.path_on_data = QCheckBox("on data")
        self.path_on_data.setToolTip("snap each path point to its nearest particle")
        row.addWidget(QLabel("path frames/segment"))
        for w in (self.path_n, self.path_on_data):
            row.addWidget(w)
        for label, fn in (("generate path", self.generate_path), ("stop", self.stop_path),
                          ("clear path", self.clear_path)):
            b = QPushButton(label)
            b.clicked.connect(lambda _=False, f=fn: self._guard(f))
            row.addWidget(b)
        return row

    def add_path_point(self, index: int) -> None:
        """Append particle ``index`` to the path being drawn."""
        self.path_points.append(int(index))
        self.status.setText(f"path: {len(self.path_points)} point(s); 'generate path' decodes the series")
        self.redraw()

    def clear_path(self) -> None:
        self.path_points = []
        self.redraw()

    def draw_path(self, ax, xy) -> None:
        if self.path_points:
            p = xy[self.path_points]
            ax.plot(p[:, 0], p[:, 1], "o-", lw=1.5, ms=4, color="tab:orange")

    def generate_path(self, anchors=None, vertices=None, n_per_segment: int | None = None,
                      on_data: bool | None = None):
        """Decode the volume series along a path in a worker; returns the worker.

        Parameters
        ----------
        anchors : sequence of int, optional
            Particle indices (default: the clicked path points).
        vertices : array (V, 2), optional
            A polyline in the current view instead of anchors (nearest particle per vertex).
        n_per_segment : int, optional
            Points per segment, ends included (default: the dock's spin box).
        on_data : bool, optional
            Snap each point to its nearest particle (default: the dock's check box).
        """
        if self.run is None or not hasattr(self.run, "generate_volumes"):
            raise InputError(self.run_path, "these latents have no decoder (load a run directory to generate volumes)")
        if self.path_worker is not None:
            raise InputError(None, "a path series is being generated; wait for it or stop it")
        if vertices is not None:
            anchors = path_anchors(self.xy, vertices)
        anchors = list(self.path_points if anchors is None else anchors)
        n = int(self.path_n.value() if n_per_segment is None else n_per_segment)
        snap = bool(self.path_on_data.isChecked() if on_data is None else on_data)
        tr = path_traversal(self.z, anchors, n, on_data=snap)
        from napari.qt.threading import create_worker

        D = self.D_box.value() or None
        self.path_traversal, self._path_D = tr, D
        self.status.setText(f"generating {len(tr.z)} volumes along the path …")
        w = create_worker(decode_series, self.run, tr.z, D, _start_thread=False, _ignore_errors=True)
        w.yielded.connect(self._path_progress)
        w.returned.connect(self._path_ready)
        w.errored.connect(self._path_failed)
        w.finished.connect(self._path_done)
        self.path_worker = w
        w.start()
        return w

    def stop_path(self) -> None:
        if self.path_worker is not None:
            self.path_worker.quit()

    def _path_progress(self, i) -> None:
        self.status.setText(f"path: volume {int(i) + 1} of {len(self.path_traversal.z)}")

    def _path_failed(self, exc) -> None:
        from cryo_napari.napari._jobs import error_message
        from cryo_napari.napari._latent_explorer import _notify

        _notify("error", f"path series failed: {error_message(exc)}")

    def _path_done(self) -> None:
        self.path_worker = None

    def _path_ready(self, series) -> None:
        run, D = self.run, self._path_D
        apix = run.apix_at(D) if hasattr(run, "apix_at") else float(getattr(run, "apix", 1.0))
        self.path_series = (np.asarray(series), apix)
        self.status.setText(f"path series: {len(series)} volumes of {series.shape[1]}³")
        if self.viewer is None:
            return
        from cryo_napari.napari._series_viewer import SeriesViewer

        if self.series_dock is None:
            self.series_dock = SeriesViewer(self.viewer)
            window = getattr(self.viewer, "window", None)
            if window is not None and hasattr(window, "add_dock_widget"):
                window.add_dock_widget(self.series_dock, name="series (path)", area="right")
        tr = self.path_traversal
        meta = {"z": tr.z, "ind": tr.ind, "anchors": tr.info["anchors"], "run": str(self.run_path)}
        self.series_dock.show_series(series, apix, axis="latent", name=SERIES_LAYER, meta=meta)
