"""The job docks' live metric plot: a small matplotlib canvas, one line per metric name.

Redraws are throttled to one per :data:`PLOT_INTERVAL_S` so a job that emits a metric every step
does not starve the GUI thread; the dock calls :meth:`MetricPlot.redraw` once more at the end.
"""

from __future__ import annotations

import time

from qtpy.QtWidgets import QVBoxLayout, QWidget

#: Minimum seconds between two redraws of the live plot.
PLOT_INTERVAL_S = 0.25


class MetricPlot(QWidget):
    """A small matplotlib canvas of metric values against step (one line per metric name)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 2.4), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.ax = self.figure.add_subplot(111)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)
        self.series: dict[str, tuple[list, list]] = {}
        self._dirty = False
        self._last = 0.0
        self.n_draws = 0

    def clear(self) -> None:
        self.series.clear()
        self.ax.clear()
        self.canvas.draw_idle()

    def add(self, name: str, step: int, value: float) -> None:
        """Record one value; throughput metrics (``*per_s``) are left out (another scale than losses)."""
        if name.endswith("per_s"):
            return
        xs, ys = self.series.setdefault(name, ([], []))
        xs.append(step)
        ys.append(value)
        self._dirty = True
        if time.monotonic() - self._last > PLOT_INTERVAL_S:
            self.redraw()

    def redraw(self) -> None:
        if not self._dirty:
            return
        self.ax.clear()
        for name, (xs, ys) in self.series.items():
            self.ax.plot(xs, ys, marker=".", label=name)
        if self.series:
            self.ax.legend(fontsize=7)
        self.ax.set_xlabel("step")
        self.canvas.draw_idle()
        self._dirty = False
        self._last = time.monotonic()
        self.n_draws += 1
