"""Closing napari's window with job docks running: ask (interactive close), then stop them cleanly.

An event filter on napari's main window (installed once per window by :func:`install_close_guard`,
which every :class:`~cryo_napari.napari._jobs.JobDock` with a viewer calls) sees the ``Close``
event before napari's own ``closeEvent``:

* no job running → the close goes on untouched;
* a user's close (a spontaneous event on a real screen, :data:`ASK_ON_CLOSE`) → a
  ``QMessageBox``: *Stop job and close* or *Cancel* (the window stays and the jobs keep running);
* otherwise (``viewer.close()``, offscreen, or after *Stop*) each running dock's
  :meth:`~cryo_napari.napari._jobs.JobDock.stop_and_wait` aborts its job at the next ``yield``
  and waits for its thread, so the last complete outputs stay loadable and no worker outlives
  the window.
"""

from __future__ import annotations

import weakref

from qtpy.QtCore import QEvent, QObject

#: Ask before an interactive window close stops running jobs (never asked offscreen or for
#: programmatic closes such as ``viewer.close()``).
ASK_ON_CLOSE = True


def _ask_user(parent, titles: list[str]) -> bool:
    """QMessageBox: stop the running jobs and close (True) or cancel the close (False)."""
    from qtpy.QtWidgets import QMessageBox

    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Warning)
    box.setWindowTitle("cryo_napari: jobs running")
    box.setText(f"Running: {', '.join(titles)}.\nStop at the next step (the last complete step stays on disk) "
                "and close?")
    stop = box.addButton("Stop job and close", QMessageBox.AcceptRole)
    box.addButton(QMessageBox.Cancel)
    box.exec_()
    return box.clickedButton() is stop


def _interactive_close(event) -> bool:
    """Whether to ask: a user's close (spontaneous event) on a real screen, with :data:`ASK_ON_CLOSE`."""
    from qtpy.QtGui import QGuiApplication

    return bool(ASK_ON_CLOSE and event.spontaneous() and QGuiApplication.platformName() != "offscreen")


class _CloseGuard(QObject):
    """Event filter on napari's main window: a close stops the running job docks first."""

    def __init__(self, window):
        super().__init__(window)
        self.window = window
        self.docks = weakref.WeakSet()

    def running_docks(self) -> list:
        out = []
        for d in list(self.docks):
            try:
                if d.running:
                    out.append(d)
            except RuntimeError:  # the C++ widget is gone
                continue
        return out

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt override
        if obj is not self.window or event.type() != QEvent.Close:
            return False
        running = self.running_docks()
        if not running:
            return False
        if _interactive_close(event) and not _ask_user(self.window, [d.title for d in running]):
            event.ignore()
            return True  # the window stays open, the jobs keep running
        from cryo_napari.napari._jobs import STOP_WAIT_S, _notify

        for d in running:  # a programmatic close (viewer.close()) has already torn widgets down
            if not d.stop_and_wait(process_events=event.spontaneous()):
                _notify("warning", f"{d.title}: the job did not stop within {STOP_WAIT_S:.0f} s")
        return False


def install_close_guard(viewer, dock) -> None:
    """Make closing ``viewer``'s window stop ``dock``'s job (once per window; no-op without a Qt window)."""
    window = getattr(getattr(viewer, "window", None), "_qt_window", None)
    if window is None or not hasattr(window, "installEventFilter"):
        return
    guard = getattr(window, "_cryo_close_guard", None)
    if guard is None:
        guard = _CloseGuard(window)
        window.installEventFilter(guard)
        window._cryo_close_guard = guard
    guard.docks.add(dock)
