"""The ``analyze`` job: PCA, UMAP, k-means, plots, volumes at centres and along PCs, a notebook.

Outputs in OUT (every file written atomically before it is announced)::

    pca.npy (N, zdim) scores, pca_explained_variance.txt, pca_variance.png
    pca_scatter.png, pca_density.png          PC1 vs PC2 coloured by k-means cluster / density
    umap.npy (N, 2), umap_scatter.png, umap_density.png   (unless skip_umap)
    labels.npy (N,), centers.txt (K, zdim), centers_ind.txt (K,)   k-means, on-data centres
    kmeans<K>/vol_XXX.mrc                    maps at the centres (unless skip_vol)
    pc<j>/vol_XXX.mrc, pc<j>/z_values.txt    maps along PC j (1st-99th percentile, on-data)
    analysis.ipynb                           notebook that reloads all of this
    analysis.json                            parameters and a summary
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from cryo_napari.jobs.protocol import Artifact, Log, Progress


def default_outdir(run) -> Path:
    """``RUN/analyze.<epoch>`` (``analyze.<epoch>.refined`` on refined latents) for run directories,
    ``<file>.analyze`` beside a latent file."""
    p = Path(run.path)
    if p.is_file():
        return p.with_suffix(".analyze")
    refined = ".refined" if getattr(run, "latents", "encoder") == "refined" else ""
    return p / ((f"analyze.{run.epoch}" if run.epoch is not None else "analyze") + refined)


def write_volumes(run, z, outdir, D=None, flip=False):
    """Job step: maps at latents ``z`` (M, zdim) → OUT/vol_XXX.mrc and z_values.txt."""
    from cryo_napari.io.mrc import write_mrc
    from cryo_napari.jobs.atomic import write_text_atomic

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "z_values.txt", "\n".join(" ".join(f"{v:.6g}" for v in zi) for zi in np.atleast_2d(z)) + "\n")
    paths = []
    for i, zi in enumerate(np.atleast_2d(z)):
        vol = run.generate_volumes(zi[None], D, flip=flip)[0]
        p = write_mrc(out / f"vol_{i:03d}.mrc", vol, run.apix_at(D))
        paths.append(p)
        yield Artifact("map", p)
    return paths


def analyze_job(run, outdir=None, ksample: int = 20, n_pcs: int = 2, skip_umap: bool = False, skip_vol: bool = False,
                n_pc_points: int = 10, D: int | None = None, flip: bool = False, seed: int = 0,
                umap_max_fit: int = 100_000, notebook: bool = True):
    """Job: analyse the latents of ``run`` (from :func:`cryo_napari.analysis.runs.load_latent_run`)."""
    from cryo_napari.analysis import plots
    from cryo_napari.analysis.clustering import kmeans
    from cryo_napari.analysis.embedding import run_pca, run_umap
    from cryo_napari.analysis.traversal import pc_traversal
    from cryo_napari.jobs.atomic import save_npy_atomic, write_text_atomic

    out = Path(outdir) if outdir else default_outdir(run)
    out.mkdir(parents=True, exist_ok=True)
    z = np.asarray(run.z, dtype=np.float32)
    n, zdim = z.shape
    has_decoder = not skip_vol and getattr(run, "kind", "") != "latents"
    n_pcs = int(min(n_pcs, zdim))
    steps = 4 + (0 if skip_umap else 1) + (1 + n_pcs if has_decoder else 0)
    step = 0
    timings = {}
    yield Log("info", f"{n} particles, zdim {zdim}, epoch {run.epoch}: output in {out}")

    yield Progress(step, steps, "PCA")
    t0 = time.time()
    pca = run_pca(z)
    timings["pca_s"] = time.time() - t0
    evr = pca.explained_variance_ratio
    yield Artifact("table", save_npy_atomic(out / "pca.npy", pca.scores))
    write_text_atomic(out / "pca_explained_variance.txt",
                      "".join(f"PC{i + 1} {100 * r:.2f}%\n" for i, r in enumerate(evr)))
    yield Artifact("plot", plots.explained_variance(evr, out / "pca_variance.png"))
    step += 1

    yield Progress(step, steps, f"k-means (k={ksample})")
    t0 = time.time()
    km = kmeans(z, ksample, seed=seed)
    timings["kmeans_s"] = time.time() - t0
    yield Artifact("table", save_npy_atomic(out / "labels.npy", km.labels))
    np_txt = "\n".join(" ".join(f"{v:.6g}" for v in c) for c in km.centers) + "\n"
    write_text_atomic(out / "centers.txt", np_txt)
    write_text_atomic(out / "centers_ind.txt", "\n".join(str(int(i)) for i in km.center_ind) + "\n")
    yield Log("info", "k-means cluster sizes: " + " ".join(str(int(c)) for c in km.counts))
    step += 1

    yield Progress(step, steps, "plots")
    xl = f"PC1 ({100 * evr[0]:.1f}%)"
    yl = f"PC2 ({100 * evr[1]:.1f}%)" if len(evr) > 1 else "PC1"
    pxy = pca.scores[:, :2] if zdim > 1 else np.c_[pca.scores[:, 0], pca.scores[:, 0]]
    yield Artifact("plot", plots.scatter_by_cluster(pxy, km.labels, out / "pca_scatter.png", xl, yl,
                                                    f"PCA, k-means k={len(km.counts)}", km.center_ind))
    yield Artifact("plot", plots.density(pxy, out / "pca_density.png", xl, yl, "PCA density"))
    step += 1

    notes = []
    if not skip_umap:
        yield Progress(step, steps, "UMAP")
        t0 = time.time()
        emb = run_umap(z, max_fit=umap_max_fit, seed=seed, messages=notes)
        timings["umap_s"] = time.time() - t0
        for note in notes:
            yield Log("info", note)
        yield Artifact("table", save_npy_atomic(out / "umap.npy", emb))
        yield Artifact("plot", plots.scatter_by_cluster(emb, km.labels, out / "umap_scatter.png", "UMAP1", "UMAP2",
                                                        f"UMAP, k-means k={len(km.counts)}", km.center_ind))
        yield Artifact("plot", plots.density(emb, out / "umap_density.png", "UMAP1", "UMAP2", "UMAP density"))
        step += 1

    if has_decoder:
        yield Progress(step, steps, f"maps at {len(km.center_ind)} k-means centres")
        yield from write_volumes(run, km.centers, out / f"kmeans{ksample}", D, flip)
        step += 1
        for j in range(1, n_pcs + 1):
            yield Progress(step, steps, f"maps along PC{j}")
            tr = pc_traversal(z, j, n_pc_points, pca=pca)
            yield from write_volumes(run, tr.z, out / f"pc{j}", D, flip)
            write_text_atomic(out / f"pc{j}" / "ind.txt", "\n".join(str(int(i)) for i in tr.ind) + "\n")
            step += 1
    elif not skip_vol:
        yield Log("warning", "no decoder (a bare latent file): maps skipped")

    summary = {"run": str(Path(run.path).resolve()), "epoch": run.epoch, "n": int(n), "zdim": int(zdim),
               "ksample": int(ksample), "pcs": n_pcs, "explained_variance_ratio": [float(r) for r in evr],
               "cluster_sizes": [int(c) for c in km.counts], "umap": not skip_umap, "notes": notes,
               "timings_s": {k: round(v, 2) for k, v in timings.items()}}
    write_text_atomic(out / "analysis.json", json.dumps(summary, indent=1) + "\n")
    if notebook:
        from cryo_napari.analysis.notebook import write_notebook

        yield Artifact("notebook", write_notebook(out, run, ksample))
    yield Progress(steps, steps, "done")
    return {"outdir": out, **summary}
