"""Class3D dashboard dock: a class3d run's convergence at a glance, refreshed while it runs.

Reads ``RUN/metrics.jsonl`` (F-EM records: ``class_sizes``, ``switch_pct``, ``rms_change``,
``mean_kl``, ``ess_hist``) and the last complete ``RUN/iter_NNN/`` (``ess.npy``, ``scales.npy``,
``class_KK.mrc``) and draws six panels: class sizes per iteration, switch %, RMS density change
(log axis, scientific notation), mean KL, the ESS histogram and the per-particle scale histogram
(red warning when every scale is 1, i.e. scales were not applied). **Show class maps** adds the
last iteration's maps as image layers side by side (napari grid mode). With **live** ticked a
timer redraws whenever ``metrics.jsonl`` changes.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QLineEdit, QPushButton, QVBoxLayout, QWidget

from cryo_napari.errors import InputError
from cryo_napari.jobs.rundir import RunDir

REFRESH_MS = 3000
ITER_RE = re.compile(r"^iter_(\d+)$")


def _notify(kind: str, text: str) -> None:
    from napari.utils import notifications

    {"error": notifications.show_error, "warning": notifications.show_warning}[kind](text)


def complete_iterations(run) -> list[int]:
    """Iterations with a complete ``iter_NNN/posterior.npy`` (its ``.ok`` marker), ascending."""
    rd = RunDir(run)
    steps = []
    for d in Path(run).glob("iter_*"):
        m = ITER_RE.match(d.name)
        if m and rd.is_complete(d / "posterior.npy"):
            steps.append(int(m.group(1)))
    return sorted(steps)


def dashboard_data(run) -> dict:
    """Everything the dashboard draws, as arrays.

    Returns
    -------
    dict
        ``iterations`` (T,), ``sizes`` (T, K) particles per class, ``switch_pct`` (T,),
        ``rms_change`` (T,), ``mean_kl`` (T,) (NaN where undefined), ``ess`` (N,) and
        ``scales`` (N,) of the last complete iteration (or None), ``scales_all_one`` (bool),
        ``last`` (last complete iteration or None), ``maps`` (paths of its class maps).
    """
    run = Path(run)
    if not run.is_dir():
        raise InputError(run, "not a directory")
    recs = [r for r in RunDir(run).read_metrics() if r.get("phase", "fem") == "fem" and "class_sizes" in r]
    K = max((len(r["class_sizes"]) for r in recs), default=0)
    sizes = np.array([r["class_sizes"] + [0] * (K - len(r["class_sizes"])) for r in recs], float).reshape(len(recs), K)
    get = lambda key: np.array([np.nan if r.get(key) is None else float(r[key]) for r in recs])  # noqa: E731
    steps = complete_iterations(run)
    last = steps[-1] if steps else None
    ess = scales = None
    maps: list[Path] = []
    if last is not None:
        d = run / f"iter_{last:03d}"
        ess = np.load(d / "ess.npy") if (d / "ess.npy").exists() else None
        scales = np.load(d / "scales.npy") if (d / "scales.npy").exists() else None
        maps = sorted(d.glob("class_[0-9][0-9].mrc"))
    all_one = bool(scales is not None and np.all(np.abs(scales - 1.0) <= 1e-6))
    return {"iterations": np.array([r.get("iteration", i + 1) for i, r in enumerate(recs)]), "sizes": sizes,
            "switch_pct": get("switch_pct"), "rms_change": get("rms_change"), "mean_kl": get("mean_kl"),
            "ess": ess, "scales": scales, "scales_all_one": all_one, "last": last, "maps": maps,
            "ess_hist": recs[-1].get("ess_hist") if recs else None}


def draw_dashboard(fig, data: dict) -> None:
    """Draw the six panels of ``data`` (from :func:`dashboard_data`) on a matplotlib figure."""
    fig.clear()
    ax = fig.subplots(2, 3)
    it = data["iterations"]
    for k in range(data["sizes"].shape[1]):
        ax[0, 0].plot(it, data["sizes"][:, k], marker=".", label=f"class {k + 1}")
    ax[0, 0].set_title("class sizes")
    if data["sizes"].shape[1] <= 8 and data["sizes"].size:
        ax[0, 0].legend(fontsize=6)
    ax[0, 1].plot(it, data["switch_pct"], marker=".")
    ax[0, 1].set_title("class switches (%)")
    rms = data["rms_change"]
    ax[0, 2].plot(it, rms, marker=".")
    if np.any(rms > 0):
        ax[0, 2].set_yscale("log")
    ax[0, 2].set_title(f"RMS change (last {rms[-1]:.3e})" if len(rms) else "RMS change")
    ax[1, 0].plot(it, data["mean_kl"], marker=".")
    kl = data["mean_kl"]
    last_kl = kl[np.isfinite(kl)][-1] if np.isfinite(kl).any() else None
    ax[1, 0].set_title("mean KL" + (f" (last {last_kl:.3e})" if last_kl is not None else ""))
    if data["ess"] is not None:
        ax[1, 1].hist(data["ess"], bins=20)
    ax[1, 1].set_title("ESS (effective classes / particle)")
    if data["scales"] is not None:
        ax[1, 2].hist(data["scales"], bins=40)
        if data["scales_all_one"]:
            ax[1, 2].set_title("WARNING: all scales are 1\n(scales not applied)", color="red", fontsize=8)
        else:
            s = data["scales"]
            ax[1, 2].set_title(f"scales (mean {s.mean():.3f}, sd {s.std():.3f})", fontsize=8)
    for a in ax.ravel():
        a.tick_params(labelsize=7)
        a.title.set_fontsize(8)
    fig.tight_layout()


class Class3DDashboard(QWidget):
    """The dashboard dock (see the module docstring)."""

    def __init__(self, napari_viewer=None):
        super().__init__()
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.viewer = napari_viewer
        self.run: Path | None = None
        self.data: dict | None = None
        self._stamp = None
        lay = QVBoxLayout(self)
        row = QHBoxLayout()
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("class3d run directory")
        open_b = QPushButton("Open")
        open_b.clicked.connect(lambda: self._guard(self.open, self.path_edit.text()))
        self.live = QCheckBox("live")
        self.live.setChecked(True)
        maps_b = QPushButton("Show class maps")
        maps_b.clicked.connect(lambda: self._guard(self.show_maps))
        for w in (self.path_edit, open_b, self.live, maps_b):
            row.addWidget(w)
        lay.addLayout(row)
        self.figure = Figure(figsize=(6, 4))
        self.canvas = FigureCanvasQTAgg(self.figure)
        lay.addWidget(self.canvas, stretch=1)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        self.timer = QTimer(self)
        self.timer.setInterval(REFRESH_MS)
        # A bound method, not a lambda: PyQt keeps bound-method slots weakly, so a closed dock
        # is not kept alive (and later garbage-collected mid-cycle) by its own running timer.
        self.timer.timeout.connect(self._on_timer)

    def _on_timer(self) -> None:
        self._guard(self.refresh)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        """A closed dock stops polling its run."""
        self.timer.stop()
        super().closeEvent(event)

    def _guard(self, fn, *args):
        from cryo_napari.napari._jobs import run_guarded

        return run_guarded(_notify, fn, *args)

    def open(self, run) -> None:
        self.run = Path(run)
        self.path_edit.setText(str(run))
        self._stamp = None
        self.refresh()
        self.timer.start()

    def _metrics_stamp(self):
        p = self.run / "metrics.jsonl"
        return (p.stat().st_mtime_ns, p.stat().st_size) if p.exists() else None

    def refresh(self, force: bool = False) -> bool:
        """Redraw when metrics.jsonl changed (or ``force``); True when it redrew."""
        if self.run is None or (not self.live.isChecked() and not force and self.data is not None):
            return False
        stamp = self._metrics_stamp()
        if stamp == self._stamp and not force and self.data is not None:
            return False
        self._stamp = stamp
        self.data = dashboard_data(self.run)
        draw_dashboard(self.figure, self.data)
        self.canvas.draw_idle()
        d = self.data
        msg = f"{len(d['iterations'])} iterations"
        if len(d["rms_change"]):
            msg += f"; last: switches {d['switch_pct'][-1]:.2f} %, RMS change {d['rms_change'][-1]:.3e}"
        if d["scales_all_one"]:
            msg += "; WARNING: all per-particle scales are 1 (scales not applied)"
        self.status.setText(msg)
        return True

    def show_maps(self) -> list:
        """Add the last complete iteration's class maps side by side (grid mode)."""
        from cryo_napari.napari._reader import read_layer

        if not self.data or not self.data["maps"]:
            raise InputError(self.run, "no complete iteration with class maps yet")
        layers = []
        for p in self.data["maps"]:
            data, kw, _ = read_layer(p)
            name = f"{p.stem} (iter {self.data['last']})"
            if name in self.viewer.layers:
                self.viewer.layers[name].data = data
                layers.append(self.viewer.layers[name])
            else:
                layers.append(self.viewer.add_image(data, **{**kw, "name": name}))
        self.viewer.grid.enabled = True
        self.viewer.dims.ndisplay = 3
        return layers


def class3d_dashboard(napari_viewer=None) -> Class3DDashboard:
    """npe2 widget: the class3d dashboard."""
    return Class3DDashboard(napari_viewer)
