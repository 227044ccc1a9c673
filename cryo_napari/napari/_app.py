"""``cryo-napari gui``: a napari window with our docks, loaded with a run, series or map.

:func:`open_gui` is what the command runs (minus ``napari.run()``), so tests can drive it with
``show=False``. Which docks open for which input is decided Qt-free in
:func:`cryo_napari.cli.gui.plan`.
"""

from __future__ import annotations

import importlib
from pathlib import Path


def make_dock(name: str, viewer):
    """Build dock ``name`` (a key of :data:`cryo_napari.cli.gui.DOCKS`) for ``viewer``."""
    from cryo_napari.cli.gui import DOCKS

    module, _, attr = DOCKS[name].partition(":")
    return getattr(importlib.import_module(module), attr)(viewer)


def open_gui(path=None, docks=None, epoch: int | None = None, show: bool = True, viewer=None):
    """Open (or fill) a napari viewer with ``docks`` and load ``path`` into them.

    Parameters
    ----------
    path : str or Path, optional
        Run directory, volume series or ``.mrc``/``.mrcs`` file.
    docks : list of str, optional
        Dock names; default :func:`cryo_napari.cli.gui.plan` for ``path``.
    epoch : int, optional
        Epoch of a latent run (default: the latest complete one).
    show : bool
        Show the window (False in tests).

    Returns
    -------
    (viewer, dict)
        The viewer and ``{dock name: widget}``.
    """
    import napari

    from cryo_napari.cli.gui import classify, plan

    names = plan(path, docks)
    viewer = viewer or napari.Viewer(title="cryo_napari", show=show)
    widgets = {}
    first = None
    for name in names:
        w = make_dock(name, viewer)
        dw = viewer.window.add_dock_widget(w, name=name, area="right")
        if first is None:
            first = dw
        else:  # one tab per dock keeps the window usable
            viewer.window._qt_window.tabifyDockWidget(first, dw)
        widgets[name] = w
    if first is not None:
        first.raise_()
    if path is not None:
        _load(path, classify(path), widgets, viewer, epoch)
    return viewer, widgets


def _load(path, kind: str, widgets: dict, viewer, epoch) -> None:
    p = Path(path)
    run = p.parent if p.is_file() and p.name in ("config.yaml", "series.npy", "series.json") else p
    if kind == "latent-run" and "explorer" in widgets:
        widgets["explorer"].load(run, epoch)
    elif kind == "class3d-run":
        if "dashboard" in widgets:
            widgets["dashboard"].open(run)
        if "series" in widgets:
            widgets["series"].open(run)
    elif kind == "series" and "series" in widgets:
        widgets["series"].open(p)
    elif kind == "map" and "mesh" in widgets:
        widgets["mesh"].open(p)
    else:
        viewer.open(str(p), plugin="cryo-napari")
