"""Job docks: one dock per job family, its form generated from the subcommand's argparse parser.

A dock runs the subcommand's ``make_job(args)`` generator in a napari thread worker
(:func:`napari.qt.threading.create_worker`), so the viewer never freezes:

* ``Progress`` events drive the dock's progress bar and a napari activity-dock progress bar;
* ``Metric`` events are plotted live (one line per metric name, matplotlib canvas in the dock);
* ``Artifact`` events of kind ``"map"`` are opened as image layers when "load maps" is ticked;
* ``Log`` events show in the status line (warnings also as notifications);
* **Stop** calls ``worker.quit()``: the job stops at its next ``yield`` and the generator is
  closed, so the outputs of the last complete step stay on disk;
* an exception becomes ``napari.utils.notifications.show_error`` with its one-line message;
* starting a second job while one runs is **refused** with a warning notification;
* closing the dock, or the napari window, with a job running stops it cleanly
  (:meth:`JobDock.stop_and_wait`: abort at the next ``yield``, wait for the thread, close the
  generator); an interactive window close first asks (stop the job and close / cancel), see
  :mod:`cryo_napari.napari._close_guard`.

Docks whose CLI module is not in this build show "not available in this build".
"""

from __future__ import annotations

import threading
import time
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QCheckBox, QHBoxLayout, QLabel, QProgressBar, QPushButton, QScrollArea, QVBoxLayout,
                            QWidget)

from cryo_napari.errors import InputError
from cryo_napari.jobs.protocol import Artifact, Log, Metric, Progress
from cryo_napari.napari._close_guard import install_close_guard
from cryo_napari.napari._forms import FormError, build_form, parse_form, parser_for
from cryo_napari.napari._metric_plot import MetricPlot

#: Seconds a close waits for a stopped job to reach its next ``yield``.
STOP_WAIT_S = 60.0


class JobFailed(Exception):
    """A job raised ``RuntimeError`` (re-raised under this name: superqt would swallow it)."""


def _drive(job):
    """Run ``job`` inside the worker, re-raising ``RuntimeError`` so that it reaches ``errored``."""
    try:
        return (yield from job)
    except RuntimeError as exc:
        raise JobFailed(f"{type(exc).__name__}: {exc}") from exc


def error_message(exc: BaseException) -> str:
    """One line for the user: ``InputError`` as is, anything else prefixed by its type."""
    if isinstance(exc, (InputError, FormError, JobFailed)):
        return " ".join(str(exc).split())
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def run_guarded(notify, fn, *args):
    """``fn(*args)``; an exception becomes one error line through ``notify(kind, text)`` → None.

    Dock buttons go through this so a user action never raises into Qt's event loop.
    """
    try:
        return fn(*args)
    except Exception as exc:  # user actions report errors, never crash the viewer
        notify("error", error_message(exc))
        return None


def _notify(kind: str, text: str) -> None:
    from napari.utils import notifications

    {"error": notifications.show_error, "warning": notifications.show_warning,
     "info": notifications.show_info}[kind](text)


class JobDock(QWidget):
    """A dock that runs one subcommand's job (``cryo_napari.cli.<module>``) in a thread worker.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer, optional
        Map artifacts open in this viewer.
    module : str
        CLI module name (``backproject``, ``train_vae``, ``class3d``, ``flex``, ``analyze``).
    title : str
        Shown in the activity dock and notifications.
    subcommand : str, optional
        For modules with sub-commands (``flex``): fix the step (``prep``, ``mesh``, …) and hide
        the step chooser, so each step gets its own dock.
    """

    def __init__(self, napari_viewer=None, module: str = "backproject", title: str | None = None,
                 subcommand: str | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.module_name = module
        self.subcommand = subcommand
        self.title = title or module.replace("_", "-")
        self.worker = None
        self.job = None
        self.result: Any = None
        self.error: BaseException | None = None
        self.events: list = []
        self.aborted = False
        self._pbar = None
        self._done = threading.Event()
        lay = QVBoxLayout(self)
        try:
            self.parser = parser_for(module)
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith("cryo_napari"):
                raise
            self.parser = self.form = None
            self.available = False
            lay.addWidget(QLabel(f"{self.title}: not available in this build ({exc.name} missing)"))
            lay.addStretch(1)
            return
        self.available = True
        self.form = build_form(self.parser)
        if subcommand is not None:
            self.form.select(subcommand)
            self.form.sub_combo.visible = False
        scroll = QScrollArea()  # long forms scroll; Run/Stop, progress and the live plot stay visible
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.form.container.native)
        lay.addWidget(scroll, stretch=1)
        row = QHBoxLayout()
        self.run_button = QPushButton("Run")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.load_maps = QCheckBox("load maps")
        self.load_maps.setChecked(True)
        self.load_maps.setToolTip("open each map the job writes as an image layer")
        for w in (self.run_button, self.stop_button, self.load_maps):
            row.addWidget(w)
        lay.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        self.plot = MetricPlot()
        self.plot.setMinimumHeight(160)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        lay.addWidget(self.plot)
        self.run_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        install_close_guard(napari_viewer, self)

    # ------------------------------------------------------------------ state
    @property
    def running(self) -> bool:
        return self.worker is not None

    # ------------------------------------------------------------------ actions
    def start(self) -> bool:
        """Parse the form, build the job with ``make_job(args)`` and start it.

        Returns ``False`` (with a notification) when a job is running or the form/job is invalid.
        """
        if self.running:
            _notify("warning", f"{self.title}: a job is already running; stop it or wait for it to finish")
            return False
        try:
            import importlib

            args = parse_form(self.form, self.parser)
            mod = importlib.import_module(f"cryo_napari.cli.{self.module_name}")
            job = mod.make_job(args)
        except Exception as exc:  # bad form or make_job refused the input
            self._fail(exc)
            return False
        return self.start_job(job)

    def start_job(self, job, total: int = 0) -> bool:
        """Run an already built job generator in a thread worker (the dock's engine).

        Returns ``False`` with a notification when another job is running.
        """
        if self.running:
            _notify("warning", f"{self.title}: a job is already running; stop it or wait for it to finish")
            job.close()
            return False
        from napari.qt.threading import create_worker
        from napari.utils import progress

        self.job, self.result, self.error, self.events, self.aborted = job, None, None, [], False
        self.plot.clear()
        self.progress.setRange(0, 0)
        self.status.setText("running")
        self._pbar = progress(total=total or 0, desc=self.title)
        worker = create_worker(_drive, job, _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(self._on_event)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._fail)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self._done = threading.Event()  # set in the worker's thread when it has left the job
        worker.finished.connect(self._done.set, Qt.DirectConnection)
        self.worker = worker
        self.run_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        worker.start()
        return True

    def stop(self) -> None:
        """Ask the job to stop at its next ``yield`` (its last complete step stays on disk)."""
        if self.worker is not None:
            self.status.setText("stopping at the next step…")
            self.worker.quit()

    def stop_and_wait(self, timeout_s: float | None = None, process_events: bool = True) -> bool:
        """Stop the running job and wait until its thread has left the generator.

        With ``process_events`` the Qt event loop keeps running while waiting (the worker's
        signals arrive as usual); without it (a window that is being torn down) the wait blocks
        on the worker's ``finished`` and the dock's finishing steps run directly.
        Returns ``True`` when no job is left running (``False`` after ``timeout_s`` seconds,
        default :data:`STOP_WAIT_S`).
        """
        from qtpy.QtWidgets import QApplication

        worker, done = self.worker, self._done
        if worker is None:
            return True
        self.stop()
        timeout = STOP_WAIT_S if timeout_s is None else timeout_s
        if not process_events:
            if not done.wait(timeout):
                return False
            self.aborted = self.aborted or worker.abort_requested
            self._on_finished()
            return True
        deadline = time.monotonic() + timeout
        while self.worker is worker and time.monotonic() < deadline:
            QApplication.processEvents()
            done.wait(0.01)
        return self.worker is not worker

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        """A closed dock stops its job cleanly (abort at the next step, wait for the thread)."""
        if self.available:
            self.stop_and_wait()
        super().closeEvent(event)

    # ------------------------------------------------------------------ worker signals
    def _on_event(self, ev) -> None:
        self.events.append(ev)
        if isinstance(ev, Progress):
            total = max(int(ev.total), 0)
            self.progress.setRange(0, total)
            if total:
                self.progress.setValue(min(int(ev.step), total))
            pbar = self._pbar  # a local: updating the activity dock can run _on_finished (which drops it)
            if pbar is not None:
                pbar.total = total
                pbar.n = int(ev.step)
                if ev.message:
                    pbar.set_description(f"{self.title}: {ev.message}")
                if self._pbar is pbar:  # not closed meanwhile
                    pbar.refresh()
            if ev.message:
                self.status.setText(ev.message)
        elif isinstance(ev, Metric):
            self.plot.add(ev.name, ev.step, float(ev.value))
        elif isinstance(ev, Log):
            self.status.setText(ev.text)
            if ev.level == "warning":
                _notify("warning", f"{self.title}: {ev.text}")
        elif isinstance(ev, Artifact) and ev.kind == "map":
            if self.viewer is not None and self.load_maps.isChecked():
                self._open_map(ev.path)

    def _open_map(self, path) -> None:
        from cryo_napari.napari._reader import read_layer

        try:
            data, kwargs, _ = read_layer(path)
        except Exception as exc:  # a map we cannot read must not stop the job
            _notify("warning", error_message(exc))
            return
        name = kwargs["name"]
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            layer.data = data
        else:
            self.viewer.add_image(data, **kwargs)

    def _on_returned(self, result) -> None:
        self.result = result
        self.status.setText("done")

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        msg = error_message(exc)
        if hasattr(self, "status"):
            self.status.setText(f"error: {msg}")
        _notify("error", msg)

    def _on_aborted(self) -> None:
        self.aborted = True
        self.status.setText("stopped: the last complete step is on disk")

    def _on_finished(self) -> None:
        if self.worker is None:  # already finished by stop_and_wait(process_events=False)
            return
        if self.aborted and self.job is not None:
            self.job.close()  # run the job's finally blocks; the worker has left the generator
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self.plot.redraw()
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if self.error is None and not self.aborted else 0)
        self.worker = None
        self.run_button.setEnabled(True)
        self.stop_button.setEnabled(False)


def backproject_dock(napari_viewer=None) -> JobDock:
    """Dock: reconstruct a map from particles with poses and CTF."""
    return JobDock(napari_viewer, "backproject", "backproject")


def train_vae_dock(napari_viewer=None) -> JobDock:
    """Dock: train a VAE (cryoDRGN-style heterogeneous reconstruction)."""
    return JobDock(napari_viewer, "train_vae", "train-vae")


def class3d_dock(napari_viewer=None) -> JobDock:
    """Dock: 3-D classification."""
    return JobDock(napari_viewer, "class3d", "class3d")


def flex_dock(napari_viewer=None) -> JobDock:
    """Dock: flex prep / mesh / train / generate / reconstruct (choose the sub-command)."""
    return JobDock(napari_viewer, "flex", "flex")


def analyze_dock(napari_viewer=None) -> JobDock:
    """Dock: analyse a VAE run (PCA/UMAP, k-means volumes)."""
    return JobDock(napari_viewer, "analyze", "analyze")


def convergence_dock(napari_viewer=None) -> JobDock:
    """Dock: convergence diagnostics of a VAE run (loss, latent shifts, UMAP markers' maps)."""
    return JobDock(napari_viewer, "convergence", "convergence")


def refine_z_dock(napari_viewer=None) -> JobDock:
    """Dock: refine a basis-decoder VAE run's latents by the decoder's likelihood."""
    return JobDock(napari_viewer, "refine_z", "refine-z")


def flex_prep_dock(napari_viewer=None) -> JobDock:
    """Dock: flex prep (Fourier-crop particles to the training box)."""
    return JobDock(napari_viewer, "flex", "flex prep", subcommand="prep")


def flex_mesh_dock(napari_viewer=None) -> JobDock:
    """Dock: flex mesh (tetrahedral mesh over a consensus map)."""
    return JobDock(napari_viewer, "flex", "flex mesh", subcommand="mesh")


def flex_train_dock(napari_viewer=None) -> JobDock:
    """Dock: flex train (the 3DFlex-style model)."""
    return JobDock(napari_viewer, "flex", "flex train", subcommand="train")


def flex_generate_dock(napari_viewer=None) -> JobDock:
    """Dock: flex generate (volume series along latent axes or a path)."""
    return JobDock(napari_viewer, "flex", "flex generate", subcommand="generate")


def flex_reconstruct_dock(napari_viewer=None) -> JobDock:
    """Dock: flex reconstruct (flex and rigid half-map reconstructions)."""
    return JobDock(napari_viewer, "flex", "flex reconstruct", subcommand="reconstruct")


#: dock name → factory, for the npe2 manifest and ``cryo-napari gui --dock``.
JOB_DOCKS = {"backproject": backproject_dock, "train-vae": train_vae_dock, "analyze": analyze_dock,
             "convergence": convergence_dock, "refine-z": refine_z_dock,
             "class3d": class3d_dock, "flex": flex_dock, "flex-prep": flex_prep_dock, "flex-mesh": flex_mesh_dock,
             "flex-train": flex_train_dock, "flex-generate": flex_generate_dock,
             "flex-reconstruct": flex_reconstruct_dock}

__all__ = ["JobDock", "MetricPlot", "JOB_DOCKS", "backproject_dock", "train_vae_dock", "class3d_dock", "flex_dock",
           "analyze_dock", "convergence_dock", "refine_z_dock", "flex_prep_dock", "flex_mesh_dock", "flex_train_dock", "flex_generate_dock",
           "flex_reconstruct_dock", "error_message"]
