"""Writing and reading one F-EM iteration directory ``RUN/iter_NNN/``.

Every file is written atomically; ``posterior.npy`` is written last and then marked complete
(``posterior.npy.ok``, :meth:`RunDir.mark_complete`), so an iteration counts only when that
marker matches. Classes are ranked by size (class_01 = largest); ``posterior.npy`` columns,
``class.npy`` and the class columns of ``particles.star`` / ``particles.cs`` use the same ranking.

Files: ``class_KK.mrc`` (FSC-weighted class maps at the working box), ``class_KK_hard.mrc``
(``--hard-recon``), ``posterior.npy`` (N, K) float32, ``class.npy`` (N,) int (0-based),
``ess.npy`` (N,), ``scales.npy`` (N,), ``particles.star`` (rlnClassNumber 1-based,
rlnMaxValueProbDistribution) or ``particles.cs`` (alignments3D/class 0-based,
alignments3D/class_posterior), one ``particles_class_KK.star``/``.cs`` per class (the particles
whose arg-max class is KK, for a downstream refinement) and ``metrics.json`` (this iteration's
``metrics.jsonl`` record, written before the marker so outputs and metrics always agree).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cryo_napari.errors import InputError
from cryo_napari.io.cryosparc import read_cs, write_cs
from cryo_napari.io.mrc import read_mrc, write_mrc
from cryo_napari.io.star import read_star_tables, write_star
from cryo_napari.jobs.atomic import save_npy_atomic, write_text_atomic
from cryo_napari.jobs.rundir import RunDir, _plain


def iter_dir(run: Path, step: int) -> Path:
    return Path(run) / f"iter_{step:03d}"


class TableWriter:
    """Copies the input particle table (rows ``source_index``) and adds/replaces class columns."""

    def __init__(self, path, kind: str, source_index: np.ndarray):
        self.kind = kind
        self.rows = np.asarray(source_index)
        if kind == "star":
            parts, self.optics = read_star_tables(path)
            self.table = parts.iloc[self.rows].reset_index(drop=True)
        elif kind == "cs":
            self.table = read_cs(path)[self.rows]
        else:
            self.table = None

    def write(self, outdir: Path, labels: np.ndarray, post_max: np.ndarray) -> Path | None:
        if self.kind == "star":
            t = self.table.copy()
            t["rlnClassNumber"] = labels.astype(int) + 1
            t["rlnMaxValueProbDistribution"] = post_max.astype(float)
            return write_star(outdir / "particles.star", t, self.optics)
        if self.kind == "cs":
            return write_cs(outdir / "particles.cs", add_cs_fields(self.table, {
                "alignments3D/class": labels.astype("<u4"), "alignments3D/class_posterior": post_max.astype("<f4")}))
        return None

    def write_per_class(self, outdir: Path, labels: np.ndarray, post_max: np.ndarray, K: int) -> list[Path]:
        """``particles_class_KK.<ext>``: the rows whose arg-max class is KK (1-based, ranked)."""
        out = []
        for k in range(K):
            sel = np.nonzero(labels == k)[0]
            name = f"particles_class_{k + 1:02d}"
            if self.kind == "star":
                t = self.table.iloc[sel].reset_index(drop=True).copy()
                t["rlnClassNumber"] = k + 1
                t["rlnMaxValueProbDistribution"] = post_max[sel].astype(float)
                out.append(write_star(outdir / f"{name}.star", t, self.optics))
            elif self.kind == "cs":
                out.append(write_cs(outdir / f"{name}.cs", add_cs_fields(self.table[sel], {
                    "alignments3D/class": np.full(len(sel), k, "<u4"),
                    "alignments3D/class_posterior": post_max[sel].astype("<f4")})))
        return out


def add_cs_fields(data: np.ndarray, fields: dict) -> np.ndarray:
    """A copy of a structured array with ``fields`` (name → (N,) array) added or replaced."""
    from numpy.lib import recfunctions as rfn

    names = data.dtype.names
    keep = [f for f in fields if f in names]
    new = {k: v for k, v in fields.items() if k not in names}
    out = rfn.append_fields(data, list(new), [new[k] for k in new], usemask=False) if new else data.copy()
    for f in keep:
        out[f] = fields[f]
    return out


def write_iteration(run: RunDir, step: int, maps: np.ndarray, post: np.ndarray, labels: np.ndarray,
                    ess: np.ndarray, scales: np.ndarray, apix: float, table: TableWriter | None,
                    hard_maps: np.ndarray | None = None, record: dict | None = None) -> Path:
    """Write ``iter_NNN/`` (maps/posteriors already ranked by size), ``record`` as
    ``metrics.json``, and last the completeness marker."""
    out = iter_dir(run.path, step)
    out.mkdir(parents=True, exist_ok=True)
    for k, m in enumerate(maps):
        write_mrc(out / f"class_{k + 1:02d}.mrc", m, apix)
    if hard_maps is not None:
        for k, m in enumerate(hard_maps):
            write_mrc(out / f"class_{k + 1:02d}_hard.mrc", m, apix)
    save_npy_atomic(out / "class.npy", labels.astype(np.int64))
    save_npy_atomic(out / "ess.npy", ess.astype(np.float32))
    save_npy_atomic(out / "scales.npy", scales.astype(np.float32))
    if table is not None:
        table.write(out, labels, post.max(axis=1))
        table.write_per_class(out, labels, post.max(axis=1), len(maps))
    if record is not None:
        write_text_atomic(out / "metrics.json", json.dumps(_plain(record)))
    save_npy_atomic(out / "posterior.npy", post.astype(np.float32))
    run.mark_complete(out / "posterior.npy", step)
    return out


def complete_iterations(run) -> list[int]:
    """Iterations of a run with a matching ``posterior.npy.ok`` marker, ascending."""
    rd = RunDir(run)
    steps = []
    for p in sorted(Path(run).glob("iter_[0-9][0-9][0-9]")):
        if rd.is_complete(p / "posterior.npy"):
            steps.append(int(p.name[5:]))
    return steps


def load_iteration(run, step: int | None = None) -> dict:
    """Outputs of iteration ``step`` (default: the last complete one) with its metrics line.

    Returns a dict with ``step``, ``posterior``, ``labels``, ``ess``, ``scales``, ``maps``
    (K, d, d, d), ``metrics`` (the record of that iteration: ``iter_NNN/metrics.json``, else its
    ``metrics.jsonl`` line, else None).
    """
    run = Path(run)
    steps = complete_iterations(run)
    if not steps:
        raise InputError(run, "no complete class3d iteration (no iter_NNN/posterior.npy.ok)")
    if step is None:
        final = run / "final.json"
        step = json.loads(final.read_text())["step"] if final.exists() else steps[-1]
        step = max(step, steps[-1]) if step in steps else steps[-1]
    if step not in steps:
        raise InputError(run, f"iteration {step} is not complete (complete: {steps})")
    d = iter_dir(run, step)
    post = np.load(d / "posterior.npy")
    maps = np.stack([read_mrc(p)[0] for p in sorted(d.glob("class_[0-9][0-9].mrc"))])
    if (d / "metrics.json").exists():
        metrics = json.loads((d / "metrics.json").read_text())
    else:
        metrics = next((m for m in RunDir(run).read_metrics()
                        if m.get("phase") == "fem" and m.get("iteration") == step), None)
    return {"step": step, "posterior": post, "labels": np.load(d / "class.npy"), "ess": np.load(d / "ess.npy"),
            "scales": np.load(d / "scales.npy"), "maps": maps, "metrics": metrics, "dir": d}
