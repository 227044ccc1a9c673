"""Latent explorer dock: scatter of a run's latents, lasso/rectangle/ellipse selections, volumes on click.

* **Load** a VAE run directory (ours via :func:`cryo_napari.analysis.runs.load_latent_run` or
  :func:`cryo_napari.methods.vae.eval.load_vae_run`) at an epoch, or a plain ``(N, zdim)`` ``.npy``.
* **View** PCA scores, raw latent dims or UMAP (computed on demand in a worker) on chosen axes;
  coloured by k-means cluster or any per-particle array (:meth:`LatentExplorer.add_values`;
  a loaded run offers defocus, scale and, for simulated data, the true state automatically);
  above :data:`HIST_ABOVE` points a 2-D histogram replaces the scatter.
* **Select** with lasso / rectangle / ellipse (``matplotlib.widgets``): each adds a named
  selection; the list combines (union / intersection), inverts, deletes, exports (indices
  ``.npy``, polygon JSON for ``cryo-napari filter --polygon``, filtered ``.star``/``.cs``) and
  re-imports (``.npy`` or polygon JSON).
* **Pick** (click) a point: the volume at its latent is generated in a background worker and
  shown as an iso-rendered image layer (scale = voxel size, Å).
* **Path** (tool *path*): clicked particles form a path; **generate path** decodes the volume
  series along it in a worker and opens it in the series viewer (:mod:`._latent_path`).
* **Follow latest epoch**: a timer reloads when a newer complete ``z.<epoch>.npy`` appears.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (QAbstractItemView, QCheckBox, QComboBox, QFileDialog, QGridLayout, QHBoxLayout,
                            QLabel, QLineEdit, QListWidget, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from cryo_napari.errors import InputError
from cryo_napari.napari._widgets import button_row
from cryo_napari.napari import _selection as S
from cryo_napari.napari._latent_path import PathMixin
from cryo_napari.napari._selection_list import SelectionListMixin

#: Above this many points the view is a 2-D histogram instead of a scatter.
HIST_ABOVE = 100_000
#: Seconds between checks for a newer epoch when following a run.
FOLLOW_INTERVAL_MS = 2000
VOLUME_LAYER = "latent volume"


def _notify(kind: str, text: str) -> None:
    from napari.utils import notifications

    {"error": notifications.show_error, "warning": notifications.show_warning,
     "info": notifications.show_info}[kind](text)


def load_run(path, epoch: int | None = None, refined: bool = False):
    """A run object with ``.z`` (N, zdim) and ideally ``generate_volumes`` / ``apix``, or ``None`` + z.
    ``refined``: the run's ``refine-z`` latents instead of the encoder's.

    Returns
    -------
    (run, z, epoch)
        ``run`` is ``None`` for a plain ``.npy`` (no volumes can be generated).
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".npy":
        z = np.load(path)
        if z.ndim != 2:
            raise InputError(path, f"latents must be (N, zdim), got shape {z.shape}")
        return None, z.astype(np.float32), None
    if not (path / "config.yaml").exists():
        raise InputError(path, "neither a run directory (config.yaml) nor a z .npy file")
    from cryo_napari.analysis.runs import load_latent_run

    run = load_latent_run(path, epoch, refined=refined)
    return run, np.asarray(run.z, np.float32), getattr(run, "epoch", epoch)


def latest_epoch(path) -> int | None:
    """The newest complete ``z.<epoch>.npy`` of a run directory (``None`` if none)."""
    from cryo_napari.jobs.rundir import RunDir

    return RunDir(path).latest_step("z", "npy")


class LatentExplorer(SelectionListMixin, PathMixin, QWidget):
    """The explorer dock (see the module docstring)."""

    def __init__(self, napari_viewer=None):
        super().__init__()
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.viewer = napari_viewer
        self.run = None
        self.run_path: Path | None = None
        self.epoch: int | None = None
        self.z = np.zeros((0, 2), np.float32)
        self.coords: dict[str, np.ndarray] = {}
        self.values: dict[str, np.ndarray] = {}
        self.selections: list[S.Selection] = []
        self.xy = np.zeros((0, 2), np.float32)
        self.grid: S.PointGrid | None = None
        self.worker = None
        self.last_volume = None
        self.picked: int | None = None
        self._selector = None
        self._init_path()

        lay = QVBoxLayout(self)
        row = QHBoxLayout()
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("run directory or z.npy")
        browse = QPushButton("…")
        browse.clicked.connect(self._browse)
        self.epoch_box = QSpinBox()
        self.epoch_box.setRange(-1, 100000)
        self.epoch_box.setValue(-1)
        self.epoch_box.setToolTip("epoch (-1: latest complete)")
        self.refined_box = QCheckBox("refined")
        self.refined_box.setToolTip("the latents `cryo-napari refine-z` wrote (z.N.refined.npy) instead of the encoder's")
        load = QPushButton("Load")
        load.clicked.connect(lambda: self._guard(self.load, self.path_edit.text(), self._epoch_arg()))
        for w in (self.path_edit, browse, QLabel("epoch"), self.epoch_box, self.refined_box, load):
            row.addWidget(w)
        lay.addLayout(row)

        g = QGridLayout()
        self.space_box = QComboBox()
        self.space_box.addItems(["pca", "z", "umap"])
        self.x_box, self.y_box = QSpinBox(), QSpinBox()
        self.y_box.setValue(1)
        self.umap_button = QPushButton("Compute UMAP")
        self.umap_button.clicked.connect(self.compute_umap)
        self.colour_box = QComboBox()
        self.colour_box.addItems(["none", "k-means"])
        self.k_box = QSpinBox()
        self.k_box.setRange(2, 50)
        self.k_box.setValue(5)
        self.tool_box = QComboBox()
        self.tool_box.addItems(["lasso", "rectangle", "ellipse", "pick", "path"])
        self.follow = QCheckBox("follow latest epoch")
        self.D_box = QSpinBox()
        self.D_box.setRange(0, 1024)
        self.D_box.setSingleStep(2)
        self.D_box.setToolTip("box of generated volumes (0: training box)")
        widgets = [(QLabel("space"), self.space_box), (QLabel("x axis"), self.x_box), (QLabel("y axis"), self.y_box),
                   (QLabel("colour"), self.colour_box), (QLabel("k"), self.k_box), (QLabel("tool"), self.tool_box),
                   (QLabel("volume box"), self.D_box), (self.umap_button, self.follow)]
        for r, (a, b) in enumerate(widgets):
            g.addWidget(a, r // 2, 2 * (r % 2))
            g.addWidget(b, r // 2, 2 * (r % 2) + 1)
        lay.addLayout(g)
        for box in (self.space_box, self.colour_box):
            box.currentTextChanged.connect(lambda _: self._guard(self.refresh))
        for box in (self.x_box, self.y_box, self.k_box):
            box.valueChanged.connect(lambda _: self._guard(self.refresh))
        self.tool_box.currentTextChanged.connect(lambda _: self._make_selector())
        self.follow.toggled.connect(self._toggle_follow)

        self.figure = Figure(figsize=(4, 4), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.ax = self.figure.add_subplot(111)
        self.canvas.mpl_connect("button_press_event", self._on_click)
        lay.addWidget(self.canvas, stretch=1)
        lay.addLayout(self._path_row())

        self.sel_list = QListWidget()
        self.sel_list.setSelectionMode(QAbstractItemView.ExtendedSelection)
        lay.addWidget(self.sel_list)
        lay.addLayout(button_row((("union", lambda: self.combine("union")),
                                  ("intersect", lambda: self.combine("intersection")),
                                  ("invert", self._invert_chosen), ("delete", self._delete_chosen),
                                  ("export…", self._export_dialog), ("import…", self._import_dialog)), self._guard))
        self.status = QLabel("load a run or a z.npy")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        self.timer = QTimer(self)
        self.timer.setInterval(FOLLOW_INTERVAL_MS)
        self.timer.timeout.connect(self._on_timer)  # bound method (see Class3DDashboard)

    def _on_timer(self) -> None:
        self._guard(self.check_newer_epoch)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        """A closed dock stops following its run and abandons a running decode."""
        self.timer.stop()
        self.follow.setChecked(False)
        if self.worker is not None:
            self.worker.quit()
        self.stop_path()
        super().closeEvent(event)

    # ------------------------------------------------------------------ helpers
    def _guard(self, fn, *args):
        from cryo_napari.napari._jobs import run_guarded

        return run_guarded(_notify, fn, *args)

    def _epoch_arg(self):
        return None if self.epoch_box.value() < 0 else self.epoch_box.value()

    def _browse(self):
        path = QFileDialog.getExistingDirectory(self, "run directory")
        if path:
            self.path_edit.setText(path)

    # ------------------------------------------------------------------ data
    def load(self, path, epoch: int | None = None) -> None:
        """Load a run directory (at ``epoch``; ``None`` = latest complete) or a ``z.npy``."""
        run, z, ep = load_run(path, epoch, self.refined_box.isChecked())
        self.run_path = Path(path)
        self.path_edit.setText(str(path))
        self.set_latents(z, run=run, epoch=ep)
        if run is not None:
            self.add_particle_values()

    def add_particle_values(self) -> list[str]:
        """Offer the run's per-particle defocus, scale and true state (if simulated) as colourings."""
        from cryo_napari.napari._particle_values import particle_values

        try:
            vals = particle_values(self.run, len(self.z))
        except Exception as exc:  # unreadable metadata must not block exploring the latents
            _notify("warning", f"per-particle values unavailable: {exc}")
            return []
        for name, v in vals.items():
            self.add_values(name, v)
        return list(vals)

    def set_latents(self, z, run=None, epoch: int | None = None) -> None:
        """Show latents ``z`` (N, zdim); ``run`` (optional) generates volumes."""
        z = np.asarray(z, np.float32)
        if z.ndim != 2 or len(z) == 0:
            raise InputError(self.run_path, f"latents must be a non-empty (N, zdim) array, got {z.shape}")
        same_n = len(z) == len(self.z)
        self.z, self.run, self.epoch = z, run, epoch
        self.coords = {"z": z}
        if not same_n:
            self.values = {k: v for k, v in self.values.items() if len(v) == len(z)}
            self.path_points = []
        for box in (self.x_box, self.y_box):
            box.setMaximum(max(z.shape[1] - 1, 0))
        if run is not None and getattr(run, "D", None):
            self.D_box.setValue(0)
        self.refresh()
        self.status.setText(f"{len(z)} particles, zdim {z.shape[1]}" + (f", epoch {epoch}" if epoch else ""))

    def add_values(self, name: str, values) -> None:
        """Offer a per-particle array (N,) as a colouring (defocus, scale, class, ground truth …)."""
        values = np.asarray(values).reshape(-1)
        if len(values) != len(self.z):
            raise InputError(None, f"{name}: {len(values)} values for {len(self.z)} particles")
        self.values[name] = values
        if self.colour_box.findText(name) < 0:
            self.colour_box.addItem(name)

    def space_coords(self, space: str) -> np.ndarray:
        """Coordinates (N, k) of every particle in ``space`` (pca / z / umap)."""
        if space not in self.coords:
            if space == "pca":
                from cryo_napari.analysis.embedding import run_pca

                self.coords["pca"] = run_pca(self.z).scores
            elif space == "umap":
                raise InputError(self.run_path, "UMAP not computed yet: press 'Compute UMAP'")
        return self.coords[space]

    def set_view(self, space: str, axes=(0, 1)) -> None:
        """Show ``space`` on ``axes`` (tests and scripts; the combo boxes do the same)."""
        self.space_box.setCurrentText(space)
        self.x_box.setValue(int(axes[0]))
        self.y_box.setValue(int(axes[1]))
        self.refresh()

    @property
    def space(self) -> str:
        return self.space_box.currentText()

    @property
    def axes(self) -> tuple:
        return (self.x_box.value(), self.y_box.value())

    def colour_values(self) -> np.ndarray | None:
        name = self.colour_box.currentText()
        if name == "k-means":
            from sklearn.cluster import KMeans

            k = min(self.k_box.value(), len(self.z))
            key = f"_kmeans{k}"
            if key not in self.values:
                self.values[key] = KMeans(k, n_init=3, random_state=0).fit_predict(self.z)
            return self.values[key]
        return self.values.get(name)

    # ------------------------------------------------------------------ plotting
    def refresh(self) -> None:
        """Recompute the 2-D view and redraw."""
        if len(self.z) == 0:
            return
        space = self.space
        if space == "umap" and "umap" not in self.coords:
            self.status.setText("UMAP not computed yet: press 'Compute UMAP'")
            return
        c = self.space_coords(space)
        i, j = (min(a, c.shape[1] - 1) for a in self.axes)
        xy = np.ascontiguousarray(c[:, [i, j]], dtype=np.float32)
        if not np.array_equal(xy, self.xy):
            self.xy = xy
            self.grid = S.PointGrid(xy)
        self.redraw()

    def redraw(self) -> None:
        ax = self.ax
        ax.clear()
        xy = self.xy
        if len(xy) > HIST_ABOVE:
            from matplotlib.colors import LogNorm

            ax.hist2d(xy[:, 0], xy[:, 1], bins=256, norm=LogNorm(), cmap="viridis")
        else:
            cv = self.colour_values()
            if cv is None:
                ax.scatter(xy[:, 0], xy[:, 1], s=3, color="tab:blue", linewidths=0, rasterized=True)
            else:
                cmap = "tab10" if np.issubdtype(np.asarray(cv).dtype, np.integer) else "viridis"
                ax.scatter(xy[:, 0], xy[:, 1], s=3, c=cv, cmap=cmap, linewidths=0, rasterized=True)
        names = {"pca": "PC", "z": "z", "umap": "UMAP"}
        ax.set_xlabel(f"{names[self.space]}{self.axes[0] + (self.space == 'pca')}")
        ax.set_ylabel(f"{names[self.space]}{self.axes[1] + (self.space == 'pca')}")
        for sel in self.selections:
            if sel.vertices is not None and sel.space == self.space and tuple(sel.axes) == self.axes:
                v = np.vstack([sel.vertices, sel.vertices[:1]])
                ax.plot(v[:, 0], v[:, 1], "-", lw=1, color="tab:red")
        if self.picked is not None:
            ax.plot(*xy[self.picked], "x", color="k", ms=10)
        self.draw_path(ax, xy)
        self.canvas.draw_idle()
        self._make_selector()

    def _make_selector(self) -> None:
        from matplotlib import widgets as mw

        if self._selector is not None:
            self._selector.set_active(False)
        tool = self.tool_box.currentText()
        if tool == "lasso":
            self._selector = mw.LassoSelector(self.ax, onselect=lambda v: self._guard(self.select_polygon, v))
        elif tool in ("rectangle", "ellipse"):
            cls = mw.RectangleSelector if tool == "rectangle" else mw.EllipseSelector
            verts = S.rectangle_vertices if tool == "rectangle" else S.ellipse_vertices

            def done(e0, e1, verts=verts):
                self._guard(self.select_polygon, verts(e0.xdata, e0.ydata, e1.xdata, e1.ydata))

            self._selector = cls(self.ax, done, useblit=False, interactive=False)
        else:
            self._selector = None

    # ------------------------------------------------------------------ UMAP / follow
    def compute_umap(self) -> None:
        """Compute the UMAP embedding in a worker (first use JITs for minutes)."""
        from napari.qt.threading import create_worker

        from cryo_napari.analysis.embedding import run_umap

        self.status.setText("computing UMAP …")
        w = create_worker(run_umap, self.z, _start_thread=False, _ignore_errors=True)
        w.returned.connect(self._umap_done)
        w.errored.connect(lambda e: _notify("error", f"UMAP failed: {e}"))
        w.start()
        self._umap_worker = w

    def _umap_done(self, emb) -> None:
        self.coords["umap"] = np.asarray(emb, np.float32)
        self.space_box.setCurrentText("umap")
        self.refresh()

    def _toggle_follow(self, on: bool) -> None:
        (self.timer.start if on else self.timer.stop)()

    def check_newer_epoch(self) -> bool:
        """Reload when the followed run has a newer complete epoch; True if it reloaded."""
        if self.run_path is None or not self.run_path.is_dir():
            return False
        newest = latest_epoch(self.run_path)
        if newest is None or (self.epoch is not None and newest <= self.epoch):
            return False
        self.load(self.run_path, newest)
        return True

    # ------------------------------------------------------------------ volumes
    def _on_click(self, event) -> None:
        tool = self.tool_box.currentText()
        if tool not in ("pick", "path") or event.inaxes is not self.ax or len(self.xy) == 0:
            return
        d = self.ax.transData.transform(self.xy) - np.array([event.x, event.y])
        nearest = int(np.argmin((d ** 2).sum(1)))
        self._guard(self.generate_at if tool == "pick" else self.add_path_point, nearest)

    def generate_at(self, index: int):
        """Generate the volume at particle ``index``'s latent in a worker; returns the worker."""
        if self.run is None or not hasattr(self.run, "generate_volumes"):
            raise InputError(self.run_path, "these latents have no decoder (load a run directory to generate volumes)")
        if self.worker is not None:
            _notify("info", "a volume is being generated; try again when it is shown")
            return None
        from napari.qt.threading import create_worker

        self.picked = int(index)
        self.redraw()
        D = self.D_box.value() or None
        z = self.z[index][None]
        self.status.setText(f"generating the volume at particle {index} …")
        w = create_worker(self.run.generate_volumes, z, D, _start_thread=False, _ignore_errors=True)
        self._pending_D = D
        w.returned.connect(self._volume_ready)  # bound method: the worker must not keep the dock alive
        w.errored.connect(lambda e: _notify("error", f"volume generation failed: {e}"))
        w.finished.connect(self._worker_done)
        self.worker = w
        w.start()
        return w

    def _worker_done(self):
        self.worker = None

    def _volume_ready(self, vols) -> None:
        self._show_volume(vols[0], self._pending_D)

    def _show_volume(self, vol, D) -> None:
        run = self.run
        apix = run.apix_at(D) if hasattr(run, "apix_at") else float(getattr(run, "apix", 1.0))
        self.last_volume = (np.asarray(vol), apix)
        self.status.setText(f"volume at particle {self.picked}: {vol.shape[0]}³, {apix:.2f} Å/px")
        if self.viewer is None:
            return
        if VOLUME_LAYER in self.viewer.layers:
            layer = self.viewer.layers[VOLUME_LAYER]
            layer.data = vol
            layer.scale = (apix,) * 3
        else:
            thr = float(np.percentile(vol, 99))
            self.viewer.add_image(vol, name=VOLUME_LAYER, rendering="iso", iso_threshold=thr, scale=(apix,) * 3,
                                  colormap="gray")
            self.viewer.dims.ndisplay = 3


def latent_explorer(napari_viewer=None) -> LatentExplorer:
    """npe2 widget: the latent explorer."""
    return LatentExplorer(napari_viewer)
