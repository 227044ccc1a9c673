"""Mesh segmenter dock: segment a consensus map, define fuse tree and rigid parts, preview the tetramesh.

1. **Open** a consensus map (image layer, scale = voxel size Å).
2. **Seed** segments into a ``segments`` Labels layer (0 = solvent):
   *watershed* — voxels above ``threshold × max`` form the mask; seeds are the ``n`` highest
   maxima of its distance transform; ``skimage.segmentation.watershed`` of the negated distance;
   *k-means* — k-means (``n`` clusters) on the coordinates of the mask voxels.
3. The user paints / erases the labels (napari's label tools; ``n_edit_dimensions = 3`` paints
   balls, set it to 2 for slice painting).
4. **Fuse** ("0>3,0>4": parent>child pairs forming one tree; **Suggest fuse tree** fills a
   breadth-first spanning tree of the touching segments) and **rigid** segments ("2,5").
5. **Preview mesh** runs :func:`cryo_napari.methods.flex.mesh.make_tetramesh` in a worker and
   shows its boundary as a Surface layer coloured by segment or rigidity weight.
6. **Save** ``seg.mrc`` (the labels, float32, same voxel size) and ``mesh.pkl`` for flex training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QLabel, QLineEdit,
                            QSpinBox, QVBoxLayout, QWidget)

from cryo_napari.errors import InputError
from cryo_napari.napari._widgets import button_row, path_row
from cryo_napari.io.mrc import read_mrc, write_mrc

SEG_LAYER, MAP_LAYER, MESH_LAYER = "segments", "consensus", "mesh preview"


def _notify(kind: str, text: str) -> None:
    from napari.utils import notifications

    {"error": notifications.show_error, "info": notifications.show_info}[kind](text)


def density_mask(vol: np.ndarray, threshold_frac: float) -> np.ndarray:
    """Boolean (D, D, D): voxels above ``threshold_frac`` × the map's maximum."""
    return np.asarray(vol) > float(threshold_frac) * float(np.max(vol))


def seed_watershed(vol: np.ndarray, n: int, threshold_frac: float = 0.15) -> np.ndarray:
    """Labels (D, D, D) int32, 0 = solvent: watershed of the mask's distance transform from ≤ n seeds."""
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    mask = density_mask(vol, threshold_frac)
    if not mask.any():
        raise InputError(None, f"no voxel above {threshold_frac} × max: lower the threshold")
    dist = ndimage.distance_transform_edt(mask)
    peaks = peak_local_max(dist, min_distance=2, num_peaks=int(n), labels=mask.astype(np.int32), exclude_border=False)
    markers = np.zeros(vol.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-dist, markers, mask=mask).astype(np.int32)


def seed_kmeans(vol: np.ndarray, n: int, threshold_frac: float = 0.15, seed: int = 0) -> np.ndarray:
    """Labels (D, D, D) int32, 0 = solvent: k-means (``n``) on the mask voxels' coordinates."""
    from sklearn.cluster import KMeans

    mask = density_mask(vol, threshold_frac)
    idx = np.argwhere(mask)
    if len(idx) < n:
        raise InputError(None, f"only {len(idx)} voxels above {threshold_frac} × max for {n} segments")
    lab = KMeans(int(n), n_init=3, random_state=seed).fit_predict(idx.astype(np.float32))
    out = np.zeros(vol.shape, np.int32)
    out[tuple(idx.T)] = lab + 1
    return out


def seed_segments(vol, method: str = "watershed", n: int = 4, threshold_frac: float = 0.15) -> np.ndarray:
    """Seed labels with ``method`` "watershed" or "k-means" (see the module docstring)."""
    if method == "watershed":
        return seed_watershed(vol, n, threshold_frac)
    if method == "k-means":
        return seed_kmeans(vol, n, threshold_frac)
    raise ValueError(f"unknown seeding method {method!r}")


def parse_rigid(text: str) -> tuple[int, ...]:
    """``"2, 5"`` → ``(2, 5)`` (segment labels)."""
    try:
        return tuple(int(t) for t in text.replace(",", " ").split())
    except ValueError:
        raise InputError(None, f"rigid segments must be integers separated by commas, got {text!r}") from None


def touching_pairs(labels) -> set[tuple[int, int]]:
    """Pairs ``(a, b)``, ``0 < a < b``, of segments with face-adjacent voxels in ``labels`` (D, D, D)."""
    lab = np.asarray(labels)
    pairs: set[tuple[int, int]] = set()
    for ax in range(lab.ndim):
        a = np.moveaxis(lab, ax, 0)[:-1].ravel()
        b = np.moveaxis(lab, ax, 0)[1:].ravel()
        m = (a != b) & (a > 0) & (b > 0)
        if m.any():
            lo, hi = np.minimum(a[m], b[m]), np.maximum(a[m], b[m])
            pairs.update(map(tuple, np.unique(np.stack([lo, hi], 1), axis=0).tolist()))
    return pairs


def suggest_fuse_tree(labels) -> str:
    """A fuse tree over touching segments: breadth-first from the largest segment, ``"P>C,..."``.

    Segments that touch none of the tree stay separate (their own component gets its own root).
    """
    lab = np.asarray(labels)
    ids, counts = np.unique(lab[lab > 0], return_counts=True)
    nbrs: dict[int, set[int]] = {int(i): set() for i in ids}
    for a, b in touching_pairs(lab):
        nbrs[a].add(b)
        nbrs[b].add(a)
    seen, edges = set(), []
    for root in [int(i) for i in ids[np.argsort(-counts, kind="stable")]]:
        if root in seen:
            continue
        seen.add(root)
        queue = [root]
        while queue:
            p = queue.pop(0)
            for c in sorted(nbrs[p]):
                if c not in seen:
                    seen.add(c)
                    edges.append(f"{p}>{c}")
                    queue.append(c)
    return ",".join(edges)


def build_mesh(vol, apix: float, labels, fuse: str = "", rigid=(), cells: int = 20):
    """``make_tetramesh`` over ``vol`` with the painted ``labels`` (lazy import of flex)."""
    from cryo_napari.methods.flex.mesh import make_tetramesh

    segs = np.asarray(labels, np.int32)
    return make_tetramesh(vol, apix, mask=(segs > 0).astype(np.float32) if segs.any() else None, cells=int(cells),
                          segments=segs if segs.any() else None, fuse=fuse or None, rigid=tuple(rigid))


class MeshSegmenter(QWidget):
    """The mesh segmenter dock (see the module docstring)."""

    def __init__(self, napari_viewer=None):
        super().__init__()
        self.viewer = napari_viewer
        self.vol: np.ndarray | None = None
        self.apix = 1.0
        self.labels: np.ndarray | None = None
        self.mesh = None
        self.surface = None
        self.worker = None
        lay = QVBoxLayout(self)
        row, self.path_edit = path_row("consensus map (.mrc)", self._browse, lambda t: self._guard(self.open, t))
        lay.addLayout(row)
        form = QFormLayout()
        self.method = QComboBox()
        self.method.addItems(["watershed", "k-means"])
        self.n_seg = QSpinBox()
        self.n_seg.setRange(1, 64)
        self.n_seg.setValue(4)
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.0, 1.0)
        self.threshold.setSingleStep(0.05)
        self.threshold.setValue(0.15)
        self.fuse = QLineEdit()
        self.fuse.setPlaceholderText("e.g. 1>2,1>3 (parent>child)")
        self.rigid = QLineEdit()
        self.rigid.setPlaceholderText("e.g. 2,4")
        self.cells = QSpinBox()
        self.cells.setRange(2, 200)
        self.cells.setValue(20)
        self.color_by = QComboBox()
        self.color_by.addItems(["segment", "rigidity"])
        for label, w in (("seeding", self.method), ("segments", self.n_seg), ("threshold × max", self.threshold),
                         ("fuse tree", self.fuse), ("rigid", self.rigid), ("mesh cells", self.cells),
                         ("colour by", self.color_by)):
            form.addRow(label, w)
        lay.addLayout(form)
        lay.addLayout(button_row((("Seed", self.seed), ("Suggest fuse tree", self.suggest_fuse),
                                  ("Preview mesh", self.preview), ("Save…", self._save_dialog)), self._guard))
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        lay.addStretch(1)

    def _guard(self, fn, *args):
        from cryo_napari.napari._jobs import run_guarded

        return run_guarded(_notify, fn, *args)

    def _browse(self):
        path, _ = QFileDialog.getOpenFileName(self, "consensus map", "", "MRC (*.mrc *.map)")
        if path:
            self.path_edit.setText(path)

    # ------------------------------------------------------------------ steps
    def open(self, path) -> None:
        vol, apix = read_mrc(path)
        self.set_map(vol, apix)
        self.path_edit.setText(str(path))

    def set_map(self, vol, apix: float) -> None:
        self.vol, self.apix = np.asarray(vol, np.float32), float(apix)
        self.labels = None
        if self.viewer is not None:
            kw = {"name": MAP_LAYER, "scale": (self.apix,) * 3, "rendering": "iso",
                  "iso_threshold": float(self.threshold.value() * self.vol.max()), "opacity": 0.5}
            if MAP_LAYER in self.viewer.layers:
                self.viewer.layers[MAP_LAYER].data = self.vol
            else:
                self.viewer.add_image(self.vol, **kw)
        self.status.setText(f"map {self.vol.shape[0]}³ at {self.apix:.2f} Å/px")

    def current_labels(self) -> np.ndarray:
        """The labels as painted (the Labels layer when there is a viewer)."""
        if self.viewer is not None and SEG_LAYER in self.viewer.layers:
            return np.asarray(self.viewer.layers[SEG_LAYER].data, np.int32)
        if self.labels is None:
            raise InputError(None, "seed or paint segments first")
        return self.labels

    def seed(self) -> np.ndarray:
        """Seed segments into the Labels layer; returns the labels."""
        if self.vol is None:
            raise InputError(None, "open a consensus map first")
        self.labels = seed_segments(self.vol, self.method.currentText(), self.n_seg.value(), self.threshold.value())
        if self.viewer is not None:
            if SEG_LAYER in self.viewer.layers:
                self.viewer.layers[SEG_LAYER].data = self.labels
            else:
                layer = self.viewer.add_labels(self.labels, name=SEG_LAYER, scale=(self.apix,) * 3)
                layer.n_edit_dimensions = 3
        n = len(np.unique(self.labels)) - 1
        self.status.setText(f"{n} segments seeded; paint to adjust, then set fuse tree / rigid and preview")
        return self.labels

    def suggest_fuse(self) -> str:
        """Fill the fuse tree with a spanning tree of the touching painted segments."""
        tree = suggest_fuse_tree(self.current_labels())
        self.fuse.setText(tree)
        self.status.setText(f"fuse tree: {tree or '(no touching segments)'}")
        return tree

    def preview(self):
        """Build the mesh in a worker; the surface appears when it is done. Returns the worker."""
        from napari.qt.threading import create_worker

        if self.vol is None:
            raise InputError(None, "open a consensus map first")
        if self.worker is not None:
            _notify("info", "a mesh is being built")
            return None
        labels = self.current_labels()
        rigid = parse_rigid(self.rigid.text())
        self.status.setText("building the mesh …")
        w = create_worker(build_mesh, self.vol, self.apix, labels, self.fuse.text().strip(), rigid,
                          self.cells.value(), _start_thread=False, _ignore_errors=True)
        w.returned.connect(self._show_mesh)
        w.errored.connect(self._mesh_failed)
        w.finished.connect(self._worker_done)
        self.worker = w
        w.start()
        return w

    def _worker_done(self):
        self.worker = None

    def _mesh_failed(self, exc):
        from cryo_napari.napari._jobs import error_message

        self.status.setText(f"mesh failed: {error_message(exc)}")
        _notify("error", error_message(exc))

    def _show_mesh(self, mesh) -> None:
        self.mesh = mesh
        self.surface = mesh.surface_for_napari(self.color_by.currentText())
        v, f, _ = self.surface
        self.status.setText(f"mesh: {len(mesh.cells)} tetrahedra, {len(v)} vertices, {len(f)} boundary faces")
        if self.viewer is None:
            return
        cmap = "turbo" if self.color_by.currentText() == "segment" else "viridis"
        if MESH_LAYER in self.viewer.layers:
            self.viewer.layers.remove(MESH_LAYER)
        self.viewer.add_surface(self.surface, name=MESH_LAYER, scale=(self.apix,) * 3, colormap=cmap, opacity=0.8)
        self.viewer.dims.ndisplay = 3

    def save(self, outdir) -> tuple[Path, Path | None]:
        """Write ``outdir/seg.mrc`` and (after a preview) ``outdir/mesh.pkl``."""
        out = Path(outdir)
        out.mkdir(parents=True, exist_ok=True)
        seg = write_mrc(out / "seg.mrc", self.current_labels().astype(np.float32), apix=self.apix)
        pkl = self.mesh.to_pickle(out / "mesh.pkl") if self.mesh is not None else None
        self.status.setText(f"saved {seg}" + (f" and {pkl}" if pkl else " (preview the mesh to save mesh.pkl)"))
        return Path(seg), (Path(pkl) if pkl else None)

    def _save_dialog(self):
        d = QFileDialog.getExistingDirectory(self, "save seg.mrc and mesh.pkl into")
        if d:
            self.save(d)


def mesh_segmenter(napari_viewer=None) -> MeshSegmenter:
    """npe2 widget: the mesh segmenter."""
    return MeshSegmenter(napari_viewer)
