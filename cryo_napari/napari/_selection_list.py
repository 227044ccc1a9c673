"""Latent explorer selections: the named list of particle selections and what it does with them.

A mixin for :class:`cryo_napari.napari._latent_explorer.LatentExplorer`, which owns the state it
uses (``z``, ``xy``, ``grid``, ``space``, ``axes``, ``run``, ``run_path``, ``epoch``, ``selections``,
``sel_list``, ``status``) and ``redraw``/``set_view``. Each lasso / rectangle / ellipse adds a
:class:`cryo_napari.napari._selection.Selection`; the list combines (union / intersection),
inverts, deletes, exports (indices ``.npy``, polygon ``.json`` for ``cryo-napari filter
--polygon``, a filtered ``.star``/``.cs``) and re-imports (``.npy`` or polygon ``.json``).
The selection arithmetic and file formats themselves are Qt-free, in :mod:`._selection`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QFileDialog

from cryo_napari.errors import InputError
from cryo_napari.napari import _selection as S


class SelectionListMixin:
    """Selection list methods of the latent explorer (see the module docstring)."""

    def select_polygon(self, vertices, name: str | None = None) -> S.Selection:
        """Add the selection of points inside ``vertices`` (V, 2) in the current view's coordinates."""
        v = np.asarray(vertices, float)
        ind = S.select_in_polygon(self.xy, v, self.grid)
        sel = S.Selection(name or self._new_name(), ind, v, self.space, self.axes)
        return self.add_selection(sel)

    def add_selection(self, sel: S.Selection) -> S.Selection:
        if any(s.name == sel.name for s in self.selections):
            sel.name = self._new_name(sel.name)
        self.selections.append(sel)
        self.sel_list.addItem(f"{sel.name} ({len(sel)})")
        self.status.setText(f"{sel.name}: {len(sel)} of {len(self.z)} particles")
        self.redraw()
        return sel

    def selection(self, name: str) -> S.Selection:
        for s in self.selections:
            if s.name == name:
                return s
        raise KeyError(name)

    def _new_name(self, base: str = "selection") -> str:
        names = {s.name for s in self.selections}
        k = 1
        while f"{base} {k}" in names:
            k += 1
        return f"{base} {k}"

    def _chosen(self) -> list[S.Selection]:
        rows = sorted(i.row() for i in self.sel_list.selectedIndexes())
        return [self.selections[r] for r in rows]

    def combine(self, how: str, names=None) -> S.Selection | None:
        """Union or intersection of the named (default: highlighted) selections as a new selection."""
        sels = [self.selection(n) for n in names] if names else self._chosen()
        if len(sels) < 2:
            raise InputError(None, f"choose two or more selections to {how}")
        fn = S.union if how == "union" else S.intersection
        return self.add_selection(fn(self._new_name(how), sels))

    def invert(self, name: str) -> S.Selection:
        return self.add_selection(S.invert(self._new_name(f"not {name}"), self.selection(name), len(self.z)))

    def delete(self, name: str) -> None:
        k = [s.name for s in self.selections].index(name)
        self.selections.pop(k)
        self.sel_list.takeItem(k)
        self.redraw()

    def _invert_chosen(self):
        for s in self._chosen():
            self.invert(s.name)

    def _delete_chosen(self):
        for s in self._chosen():
            self.delete(s.name)

    def export(self, name: str, path) -> Path:
        """Export a selection by suffix: ``.npy`` indices, ``.json`` polygon, ``.star``/``.cs`` subset."""
        sel, path = self.selection(name), Path(path)
        suffix = path.suffix.lower()
        if suffix == ".npy":
            return S.save_indices(path, sel)
        if suffix == ".json":
            return S.save_polygon(path, sel, self.run_path, self.epoch)
        if suffix in (".star", ".cs"):
            particles = (getattr(self.run, "config", None) or {}).get("particles")
            if not particles:
                raise InputError(path, "the loaded latents have no particle file to filter (save indices)")
            return S.export_particles(particles, path, self._particle_rows(sel))
        raise InputError(path, "export as .npy (indices), .json (polygon), .star or .cs")

    def _particle_rows(self, sel: S.Selection) -> S.Selection:
        """Rows of the particle file for a selection of latent rows (through the run's --ind)."""
        ind = getattr(self.run, "ind", None)
        if not ind:
            return sel
        from cryo_napari.io.particles import load_indices

        return S.Selection(sel.name, np.asarray(load_indices(ind))[sel.indices])

    def import_selection(self, path) -> S.Selection:
        """Re-import an exported ``.npy`` (indices) or polygon ``.json`` (re-selected in its space)."""
        path = Path(path)
        if path.suffix.lower() == ".json":
            doc = S.load_polygon(path)
            self.set_view(doc["space"], doc["axes"])
            return self.select_polygon(doc["vertices"], name=path.stem)
        sel = S.load_indices(path)
        if len(sel) and sel.indices.max() >= len(self.z):
            raise InputError(path, f"index {sel.indices.max()} ≥ {len(self.z)} particles")
        return self.add_selection(sel)

    def _export_dialog(self):
        chosen = self._chosen()
        if not chosen:
            raise InputError(None, "highlight a selection to export")
        path, _ = QFileDialog.getSaveFileName(self, f"export {chosen[0].name}", "",
                                              "indices (*.npy);;polygon (*.json);;RELION (*.star);;cryoSPARC (*.cs)")
        if path:
            self.export(chosen[0].name, path)

    def _import_dialog(self):
        path, _ = QFileDialog.getOpenFileName(self, "import selection", "", "selection (*.npy *.json)")
        if path:
            self.import_selection(path)

