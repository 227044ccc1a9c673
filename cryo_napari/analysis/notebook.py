"""The Jupyter notebook ``analyze`` writes next to its outputs (nbformat).

It reloads the run through :func:`cryo_napari.analysis.runs.load_latent_run`, shows the plots,
generates a map at a chosen particle's latent, and exports a selection of k-means clusters as
``indices.npy`` / ``ind.pkl`` (and .star/.cs subsets when the particle file is found).
"""

from __future__ import annotations

from pathlib import Path


def notebook_cells(run_path: str, epoch, ksample: int, refined: bool = False) -> list[tuple[str, str]]:
    """(cell type, source) pairs of the notebook."""
    return [
        ("markdown", f"# cryo_napari latent-space analysis\n\nRun: `{run_path}`, epoch {epoch}. "
                     "Re-run all cells after changing the parameters in the first code cell."),
        ("code", f"RUN = {run_path!r}\nEPOCH = {epoch!r}\nREFINED = {bool(refined)!r}\nK = {int(ksample)}\n"
                 "from pathlib import Path\nimport numpy as np\n"
                 "from cryo_napari.analysis.runs import load_latent_run\n"
                 "OUT = Path('.').resolve()\n"
                 "run = load_latent_run(RUN, EPOCH, refined=REFINED)\n"
                 "z = run.z\nlabels = np.load(OUT / 'labels.npy')\npca = np.load(OUT / 'pca.npy')\n"
                 "centers_ind = np.loadtxt(OUT / 'centers_ind.txt', dtype=int, ndmin=1)\n"
                 "umap = np.load(OUT / 'umap.npy') if (OUT / 'umap.npy').exists() else None\n"
                 "print(z.shape, 'clusters:', np.bincount(labels))"),
        ("markdown", "## Plots\nPCA and (when computed) UMAP, coloured by k-means cluster; centres are marked."),
        ("code", "from IPython.display import Image, display\n"
                 "for name in ['pca_variance', 'pca_scatter', 'pca_density', 'umap_scatter', 'umap_density']:\n"
                 "    if (OUT / f'{name}.png').exists():\n"
                 "        display(Image(filename=str(OUT / f'{name}.png')))"),
        ("markdown", "## A map at a chosen point\nPick a particle (here the first k-means centre) or any latent "
                     "vector; a smaller box `D` gives a fast preview."),
        ("code", "from cryo_napari.io.mrc import write_mrc\n"
                 "point = z[centers_ind[0]]\n"
                 "if getattr(run, 'kind', '') != 'latents':\n"
                 "    D = min(run.D, 64)\n"
                 "    vol = run.generate_volumes(point[None], D)[0]\n"
                 "    write_mrc(OUT / 'notebook_vol.mrc', vol, run.apix_at(D))\n"
                 "    print('map', vol.shape, 'min/max', float(vol.min()), float(vol.max()))"),
        ("markdown", "## Export a selection\nKeep particles of chosen k-means clusters (edit `keep_ids`)."),
        ("code", "from cryo_napari.analysis.filtering import keep_clusters, write_selection\n"
                 "keep_ids = [0]\n"
                 "keep = keep_clusters(labels, keep_ids)\n"
                 "written = [p for kind, p in write_selection(keep, OUT / 'selection', run) if kind != 'log']\n"
                 "print(int(keep.sum()), 'particles kept;', [str(p.name) for p in written])"),
    ]


def write_notebook(outdir, run, ksample: int) -> Path:
    """Write ``OUT/analysis.ipynb`` (atomic) and return its path."""
    import nbformat

    from cryo_napari.jobs.atomic import write_text_atomic

    nb = nbformat.v4.new_notebook()
    make = {"markdown": nbformat.v4.new_markdown_cell, "code": nbformat.v4.new_code_cell}
    nb.cells = [make[t](src) for t, src in notebook_cells(str(Path(run.path).resolve()), run.epoch, ksample,
                                                           getattr(run, "latents", "encoder") == "refined")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return write_text_atomic(Path(outdir) / "analysis.ipynb", nbformat.writes(nb))
