"""Follow a 3D Flex training run in the series viewer: regenerate a series per new checkpoint.

A :class:`~qtpy.QtCore.QTimer` (connected to a bound method, never a lambda) polls the run
directory every :data:`FOLLOW_INTERVAL_MS`; when a newer complete ``weights.<epoch>.pt`` (with
its ``.ok`` marker, :class:`cryo_napari.jobs.rundir.RunDir`) appears, the series along latent
axis 1 is decoded by :func:`flex_live_series` in a background thread worker and replaces the
``flex live`` layer. Nothing is written to the run directory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QLineEdit, QSpinBox

from cryo_napari.errors import InputError

#: Milliseconds between checks for a newer checkpoint.
FOLLOW_INTERVAL_MS = 2000
LIVE_LAYER = "flex live"


def flex_live_series(run, frames: int = 5, axis: int = 0, epoch: int | None = None):
    """Decode a flex run's series along latent ``axis`` from a complete checkpoint.

    Parameters
    ----------
    run : flex training run directory.
    frames : odd number of frames (−a … 0 … +a, ``a`` the 98th percentile of ``|z_axis|``).
    axis : latent axis (0-based).
    epoch : checkpoint epoch; ``None`` = newest complete one.

    Returns
    -------
    (vols (F, D, D, D) float32, apix (Å), epoch, latents (F, K))
    """
    from cryo_napari.methods.flex.generate import axis_paths, generate_series
    from cryo_napari.methods.flex.mesh import TetraMesh
    from cryo_napari.methods.flex.train import load_trained

    model, cfg, step = load_trained(run, epoch)
    mesh = TetraMesh.from_pickle(cfg["mesh"])
    zfile = Path(run) / f"z.{step}.npy"
    if not zfile.exists():
        raise InputError(zfile, "latents of the checkpoint are missing")
    paths = axis_paths(np.load(zfile), frames)
    if not 0 <= axis < len(paths):
        raise InputError(run, f"latent axis {axis + 1} out of range (the model has {len(paths)})")
    lat = paths[axis]
    apix = float(mesh.psize_A) * mesh.N / model.D
    return generate_series(model, mesh, lat), apix, step, lat


class FlexFollowMixin:
    """Adds "follow a flex run" to :class:`~cryo_napari.napari._series_viewer.SeriesViewer`."""

    def _init_follow(self) -> None:
        self.follow_run: Path | None = None
        self.follow_epoch: int | None = None
        self.shown_epoch: int | None = None
        self.follow_worker = None
        self.follow_timer = QTimer(self)
        self.follow_timer.setInterval(FOLLOW_INTERVAL_MS)
        self.follow_timer.timeout.connect(self._on_follow_timer)  # bound method, not a lambda

    def _follow_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.follow_edit = QLineEdit()
        self.follow_edit.setPlaceholderText("flex train run directory")
        self.follow_frames = QSpinBox()
        self.follow_frames.setRange(1, 99)
        self.follow_frames.setSingleStep(2)
        self.follow_frames.setValue(5)
        self.follow_box = QCheckBox("follow flex run")
        self.follow_box.toggled.connect(self._toggle_follow)
        for w in (self.follow_edit, QLabel("frames"), self.follow_frames, self.follow_box):
            row.addWidget(w)
        return row

    def _toggle_follow(self, on: bool) -> None:
        if on:
            self._guard(self.follow, self.follow_edit.text())
        else:
            self.unfollow()

    def follow(self, run) -> None:
        """Start following ``run``: generate from its newest checkpoint now and on every new one."""
        run = Path(run)
        if not (run / "config.yaml").is_file():
            raise InputError(run, "not a run directory (no config.yaml)")
        if self.follow_frames.value() % 2 == 0:
            raise InputError(None, "frames must be odd (the zero latent is the middle frame)")
        self.follow_run, self.follow_epoch = run, None
        if self.follow_edit.text() != str(run):
            self.follow_edit.setText(str(run))
        if not self.follow_box.isChecked():
            self.follow_box.blockSignals(True)
            self.follow_box.setChecked(True)
            self.follow_box.blockSignals(False)
        self.follow_timer.start()
        self.check_new_checkpoint()

    def unfollow(self) -> None:
        """Stop polling (a running decode finishes but is no longer shown)."""
        self.follow_timer.stop()
        self.follow_run = None
        if self.follow_box.isChecked():
            self.follow_box.blockSignals(True)
            self.follow_box.setChecked(False)
            self.follow_box.blockSignals(False)

    def _on_follow_timer(self) -> None:
        self._guard(self.check_new_checkpoint)

    def check_new_checkpoint(self) -> bool:
        """Start decoding when a newer complete checkpoint exists; True if a worker started."""
        from cryo_napari.jobs.rundir import RunDir

        if self.follow_run is None or self.follow_worker is not None:
            return False
        newest = RunDir(self.follow_run).latest_step("weights", "pt")
        if newest is None or (self.follow_epoch is not None and newest <= self.follow_epoch):
            return False
        from napari.qt.threading import create_worker

        self.status.setText(f"generating the series from epoch {newest} …")
        w = create_worker(flex_live_series, self.follow_run, self.follow_frames.value(), 0, newest,
                          _start_thread=False, _ignore_errors=True)
        w.returned.connect(self._follow_ready)
        w.errored.connect(self._follow_failed)
        w.finished.connect(self._follow_done)
        self.follow_worker = w
        self.follow_epoch = newest  # attempted: a failing checkpoint is not retried every tick
        w.start()
        return True

    def _follow_ready(self, result) -> None:
        vols, apix, step, lat = result
        if self.follow_run is None:
            return
        self.shown_epoch = int(step)
        if self.viewer is None:
            self.live_series = (vols, apix, step)
            self.status.setText(f"flex live: {len(vols)} latent steps from epoch {step}")
            return
        self.show_series(vols, apix, axis="latent", name=LIVE_LAYER,
                         meta={"epoch": int(step), "latents": np.asarray(lat).tolist()})
        self.status.setText(f"flex live: {len(vols)} latent steps of {vols.shape[1]}³ from epoch {step}")

    def _follow_failed(self, exc) -> None:
        from cryo_napari.napari._jobs import error_message
        from cryo_napari.napari._series_viewer import _notify

        _notify("error", f"flex live series failed: {error_message(exc)}")

    def _follow_done(self) -> None:
        self.follow_worker = None

    def _close_follow(self) -> None:
        self.unfollow()
        if self.follow_worker is not None:
            self.follow_worker.quit()
