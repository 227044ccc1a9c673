"""Particle selection from latent space: rules, their combination, and the filtered outputs.

Every rule gives a boolean mask (N,) of particles to KEEP:

* clusters: particles whose k-means / GMM cluster is one of the listed ones;
* z-score: particles whose latent magnitude ``|z|`` has a z-score at most the threshold
  (large-norm outliers, often junk, are removed). The mean and standard deviation are those of
  the bulk: particles beyond 4 robust σ (1.4826·MAD) of the median magnitude are set aside first,
  so a junk population does not inflate the spread it is judged by (with 10% junk at 2-4× the
  typical norm the all-particle σ is 2-4.6× that of the good particles and a threshold of 2 keeps
  8-22% of the junk; tests/test_analysis_filtering.py). Without gross outliers this is cryoDRGN's
  plain z-score;
* polygon: particles strictly inside a polygon in UMAP, PCA or latent coordinates;
* index file: particles listed in an index file (.npy, cryoDRGN .pkl, or text).

Rules combine by intersection (default: each rule removes its rejects) or union, and the result
can be inverted. Indices are positions in the run's latents (``z`` rows); when the run was
trained on a subset (``ind``), the written ``indices.npy``/``ind.pkl`` map back to the rows of the
particle file, so they work as ``train-vae --ind`` and for RELION/cryoSPARC subsets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryo_napari.errors import InputError


@dataclass
class RuleResult:
    """A rule's name and keep-mask (N,)."""

    name: str
    keep: np.ndarray

    @property
    def kept(self) -> int:
        return int(self.keep.sum())

    @property
    def removed(self) -> int:
        return int((~self.keep).sum())


def keep_clusters(labels, clusters) -> np.ndarray:
    """Mask (N,) of particles whose label (N,) is in ``clusters``."""
    labels = np.asarray(labels)
    clusters = [int(c) for c in clusters]
    n_lab = int(labels.max()) + 1 if labels.size else 0
    bad = [c for c in clusters if not 0 <= c < n_lab]
    if bad:
        raise InputError(None, f"cluster {bad[0]} does not exist (clusters are 0..{n_lab - 1})")
    return np.isin(labels, clusters)


#: particles farther than this many robust σ from the median magnitude are left out of the
#: mean / standard deviation used by the z-score (they are still scored).
GROSS_OUTLIER_ROBUST_SIGMA = 4.0


def latent_norm_zscore(z, gross: float = GROSS_OUTLIER_ROBUST_SIGMA) -> np.ndarray:
    """Z-score (N,) of the latent magnitudes ``r_i = |z_i|`` relative to the bulk.

    ``(r - mean(r[bulk])) / std(r[bulk])`` where ``bulk`` = ``|r - median(r)| ≤ gross · 1.4826 ·
    MAD(r)`` (all particles when the MAD is 0 or ``gross`` is None). On Gaussian-like magnitudes
    with no gross outliers, ``bulk`` is (nearly) everything and this is the plain z-score.
    """
    r = np.linalg.norm(np.asarray(z, dtype=np.float64), axis=1)
    bulk = np.ones(len(r), dtype=bool)
    if gross is not None and len(r) > 2:
        med = np.median(r)
        s = 1.4826 * np.median(np.abs(r - med))
        if s > 0:
            bulk = np.abs(r - med) <= gross * s
    mu, sd = r[bulk].mean(), r[bulk].std()
    return (r - mu) / (sd if sd > 0 else 1.0)


def keep_zscore(z, threshold: float) -> np.ndarray:
    """Mask (N,): latent-magnitude z-score ≤ ``threshold``."""
    return latent_norm_zscore(z) <= float(threshold)


def keep_indices(ind, n: int) -> np.ndarray:
    """Mask (N,) of the positions listed in ``ind`` (array or .npy/.pkl/.txt path)."""
    from cryo_napari.io.particles import load_indices

    m = np.zeros(n, dtype=bool)
    m[load_indices(ind, n)] = True
    return m


def combine(results: list[RuleResult], mode: str = "intersect", invert: bool = False, n: int | None = None) -> np.ndarray:
    """Combine rule masks by ``mode`` ('intersect' or 'union'); optionally invert. No rules keep all."""
    if not results:
        if n is None:
            raise ValueError("no rules and no particle count")
        keep = np.ones(n, dtype=bool)
    else:
        masks = np.stack([r.keep for r in results])
        keep = masks.all(0) if mode == "intersect" else masks.any(0)
    return ~keep if invert else keep


def summary_lines(results: list[RuleResult], keep: np.ndarray, mode: str, invert: bool) -> list[str]:
    """Human-readable kept/removed counts, one line per rule plus the total."""
    n = len(keep)
    lines = [f"{r.name}: keeps {r.kept} / {n}, removes {r.removed}" for r in results]
    how = ("union" if mode == "union" else "intersection") + (", inverted" if invert else "")
    lines.append(f"combined ({how}): kept {int(keep.sum())}, removed {int(n - keep.sum())} of {n}")
    return lines


def resolve_particle_file(particles, run_path) -> Path | None:
    """The run's particle file as an existing path (absolute, relative to cwd, or to the run)."""
    if not particles:
        return None
    p = Path(particles)
    for cand in (p, Path(run_path) / p, Path(run_path).parent / p):
        if cand.exists():
            return cand
    return None


def run_indices(run, n: int) -> np.ndarray | None:
    """Rows of the particle file behind the run's latents (the run's ``ind``), or None (identity)."""
    if not getattr(run, "ind", None):
        return None
    from cryo_napari.io.particles import load_indices

    p = resolve_particle_file(run.ind, run.path)
    if p is None:
        raise InputError(Path(str(run.ind)), "the run's index file is not found (needed to map back to the particle file)")
    ind = load_indices(p)
    if len(ind) != n:
        raise InputError(p, f"{len(ind)} indices but the run has {n} latents")
    return ind


def write_selection(keep: np.ndarray, outdir, run=None, particles=None):
    """Write ``indices.npy``, ``ind.pkl``, ``indices_in_run.npy`` and, when the particle file is a
    .star or .cs, ``particles.star`` / ``particles.cs`` subsets. Yields (kind, path) pairs and
    log lines as ('log', text)."""
    from cryo_napari.io.cryodrgn import write_index_pkl
    from cryo_napari.jobs.atomic import save_npy_atomic

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    pos = np.nonzero(keep)[0].astype(np.int64)
    base = run_indices(run, len(keep)) if run is not None else None
    rows = pos if base is None else base[pos]
    yield "table", save_npy_atomic(out / "indices_in_run.npy", pos)
    yield "table", save_npy_atomic(out / "indices.npy", rows)
    yield "table", write_index_pkl(out / "ind.pkl", rows)
    pfile = Path(particles) if particles else resolve_particle_file(getattr(run, "particles", None), getattr(run, "path", "."))
    if pfile is None:
        yield "log", "particle file not found: wrote indices only (give --particles for .star/.cs subsets)"
        return
    suffix = pfile.suffix.lower()
    datadir = (getattr(run, "config", None) or {}).get("datadir") if run is not None else None
    if suffix == ".star":
        yield "particles", write_star_selection(pfile, out / "particles.star", rows, len(keep), base, datadir)
    elif suffix == ".cs":
        yield "particles", write_cs_selection(pfile, out / "particles.cs", rows, len(keep), base, datadir)
    else:
        yield "log", f"{pfile.name} is not a .star or .cs file: wrote indices only"


def write_particle_subset(src, dst, rows, datadir=None) -> Path:
    """Rows ``rows`` (particle-file rows) of a ``.star`` / ``.cs`` file ``src`` written to ``dst``
    with image paths that resolve from ``dst`` (used by the napari latent explorer's export)."""
    suffix = Path(src).suffix.lower()
    if suffix == ".star":
        return write_star_selection(src, dst, rows, datadir=datadir)
    if suffix == ".cs":
        return write_cs_selection(src, dst, rows, datadir=datadir)
    raise InputError(Path(src), "filtered export needs a .star or .cs particle file (save indices for stacks)")


def _check_rows(pfile, n_file, n_run, base):
    """Rows of a ``n_file``-particle file for ``n_run`` latents (``base``: the run's ind); with
    ``n_run`` None only that ``base`` (the rows written) is in range."""
    if n_run is None:
        bad = np.asarray(base)[(np.asarray(base) < 0) | (np.asarray(base) >= n_file)] if base is not None else []
        if len(bad):
            raise InputError(pfile, f"row {int(bad[0])} out of range for {n_file} particles")
        return
    if base is None and n_file != n_run:
        raise InputError(pfile, f"{n_file} particles in the file but {n_run} latents in the run (was the run trained with --ind?)")
    if base is not None and base.max() >= n_file:
        raise InputError(pfile, f"the run's indices go up to {int(base.max())} but the file has {n_file} particles")


def relocated_stack_name(name: str, src: Path, dst: Path, datadir=None) -> str:
    """``name`` (a stack named in metadata file ``src``) as written in ``dst``: unchanged when it
    resolves to the same file from ``dst``'s directory (absolute names, or both files in one
    directory), otherwise the absolute path of the stack ``src`` uses. cryoSPARC's ``>`` prefix
    is kept."""
    import os

    from cryo_napari.io.stacks import resolve_stack_path

    prefix = ">" if name.startswith(">") else ""
    target = resolve_stack_path(name, Path(src).parent, datadir, Path(src)).resolve()
    here = Path(dst).parent / name.lstrip(">")
    if here.exists() and here.resolve() == target:
        return name
    return prefix + os.fspath(target)


def write_star_selection(src, dst, rows, n_run=None, base=None, datadir=None) -> Path:
    """Rows ``rows`` of STAR file ``src`` written to ``dst`` with every column and the optics table
    (groups still used); ``rlnImageName`` rewritten with :func:`relocated_stack_name` so the
    stacks resolve from ``dst`` (other path columns, e.g. micrographs, are left as they are)."""
    from cryo_napari.io.star import read_star_tables, write_star

    src, dst = Path(src), Path(dst)
    particles, optics = read_star_tables(src)
    _check_rows(src, len(particles), n_run, base if n_run is not None else np.asarray(rows))
    sub = particles.iloc[np.asarray(rows)].reset_index(drop=True)
    if optics is not None and "rlnOpticsGroup" in sub.columns:
        used = set(sub["rlnOpticsGroup"].astype(int))
        optics = optics[optics["rlnOpticsGroup"].astype(int).isin(used)].reset_index(drop=True)
    if "rlnImageName" in sub.columns and len(sub):
        refs = sub["rlnImageName"].astype(str).str.partition("@")
        new = {n: relocated_stack_name(n, src, dst, datadir) for n in refs[2].unique()}
        sub["rlnImageName"] = refs[0] + "@" + refs[2].map(new)
    return write_star(dst, sub, optics)


def write_cs_selection(src, dst, rows, n_run=None, base=None, datadir=None) -> Path:
    """Rows ``rows`` of cryoSPARC file ``src`` written to ``dst`` (all fields), ``blob/path``
    rewritten with :func:`relocated_stack_name` (the field is widened when needed)."""
    from cryo_napari.io.cryosparc import read_cs, write_cs

    src, dst = Path(src), Path(dst)
    data = read_cs(src)
    _check_rows(src, len(data), n_run, base if n_run is not None else np.asarray(rows))
    sub = data[np.asarray(rows)]
    if "blob/path" not in (sub.dtype.names or ()) or not len(sub):
        return write_cs(dst, sub)
    raw = sub["blob/path"]
    names = np.char.decode(raw.astype(bytes)) if raw.dtype.kind == "S" else raw.astype(str)
    uniq, inv = np.unique(names, return_inverse=True)
    new = np.array([relocated_stack_name(u, src, dst, datadir) for u in uniq])[inv]
    text = raw.dtype.kind == "U"  # keep the field's kind: bytes (cryoSPARC) or str
    width = max(raw.dtype.itemsize // (4 if text else 1), max(len(x if text else x.encode()) for x in new))
    descr = [(f, (f"{'U' if text else 'S'}{width}" if f == "blob/path" else sub.dtype.fields[f][0]))
             for f in sub.dtype.names]
    out = np.empty(len(sub), dtype=np.dtype(descr))
    for f in sub.dtype.names:
        out[f] = (new if text else np.char.encode(new)) if f == "blob/path" else sub[f]
    return write_cs(dst, out)
