"""Select particles in latent space and write the subset (indices, cryoDRGN ind.pkl, .star, .cs).

Rules (each keeps particles): --clusters I J ... (k-means with --k clusters, or a Gaussian mixture
with --gmm, same seed as analyze), --zscore T (latent magnitude z-score at most T: removes
large-norm outliers), --polygon poly.json (inside a polygon drawn in UMAP/PCA/latent coordinates,
the napari lasso's format; UMAP coordinates come from --embedding or are computed), --ind FILE
(listed particles). Several rules combine by intersection (default) or --union; --invert keeps
the complement. Writes OUT/indices.npy and OUT/ind.pkl (rows of the particle file: usable as
train-vae --ind), OUT/indices_in_run.npy, OUT/particles.star / particles.cs when the run's
particle file (or --particles) is one, and OUT/filter.json with kept/removed counts per rule.
"""

from __future__ import annotations

from cryo_napari.jobs.protocol import run_in_terminal


def add_args(p):
    p.add_argument("run", help="run directory (train-vae, flex train or cryoDRGN) or a z.npy / z.pkl file")
    p.add_argument("--epoch", type=int, help="epoch (default: the latest complete one)")
    p.add_argument("--refined", action="store_true",
                   help="use the latents `cryo-napari refine-z` wrote (z.N.refined.npy) instead of the encoder's")
    p.add_argument("--clusters", type=int, nargs="+", metavar="I", help="keep these clusters (0-based)")
    p.add_argument("--k", type=int, default=20, help="clusters for --clusters (default 20, as analyze)")
    p.add_argument("--gmm", action="store_true", help="--clusters refers to a Gaussian mixture, not k-means")
    p.add_argument("--labels", help="cluster labels (N,) .npy to use instead of clustering (e.g. analyze's labels.npy)")
    p.add_argument("--zscore", type=float, metavar="T", help="keep particles whose latent-norm z-score ≤ T")
    p.add_argument("--polygon", help="polygon JSON (space umap|pca|z, axes, vertices): keep particles inside")
    p.add_argument("--embedding", help="(N, ≥2) .npy coordinates for the polygon (default: computed; analyze writes umap.npy)")
    p.add_argument("--ind", dest="ind_file", help="keep particles listed in this index file (.npy, .pkl, text)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--union", action="store_true", help="keep particles kept by any rule")
    mode.add_argument("--intersect", action="store_true", help="keep particles kept by every rule (default)")
    p.add_argument("--invert", action="store_true", help="keep the complement of the selection")
    p.add_argument("--particles", help="particle file (.star/.cs) to subset (default: the run's)")
    p.add_argument("-o", "--outdir", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0, help="random seed for k-means / GMM / UMAP")


def polygon_coordinates(args, run, poly):
    """(N, ≥2) coordinates in the polygon's space."""
    import numpy as np

    from cryo_napari.errors import InputError

    if args.embedding:
        from pathlib import Path

        emb = np.load(args.embedding) if Path(args.embedding).exists() else None
        if emb is None or emb.ndim != 2 or len(emb) != len(run.z):
            raise InputError(args.embedding, f"needs an (N={len(run.z)}, ≥2) array")
        return emb
    if poly.space == "z":
        return run.z
    if poly.space == "pca":
        from cryo_napari.analysis.embedding import run_pca

        return run_pca(run.z).scores
    from cryo_napari.analysis.embedding import run_umap

    return run_umap(run.z, seed=args.seed)


def make_job(args):
    """The job (generator): evaluate the rules, combine, write the subset; returns counts."""
    import json
    from pathlib import Path

    import numpy as np

    from cryo_napari.analysis import filtering as flt
    from cryo_napari.analysis.runs import load_latent_run
    from cryo_napari.errors import InputError
    from cryo_napari.jobs.atomic import write_text_atomic
    from cryo_napari.jobs.protocol import Artifact, Log, Progress

    run = load_latent_run(args.run, args.epoch, refined=args.refined)
    n = len(run.z)
    rules = []
    yield Progress(0, 2, "rules")
    if args.clusters is not None:
        if args.labels:
            labels = np.load(args.labels)
            if labels.shape != (n,):
                raise InputError(args.labels, f"labels must be ({n},), got {labels.shape}")
            name = f"clusters {args.clusters} of {Path(args.labels).name}"
        else:
            from cryo_napari.analysis.clustering import gmm, kmeans

            labels = (gmm if args.gmm else kmeans)(run.z, args.k, seed=args.seed).labels
            name = f"{'GMM' if args.gmm else 'k-means'} (k={args.k}) clusters {args.clusters}"
        rules.append(flt.RuleResult(name, flt.keep_clusters(labels, args.clusters)))
    if args.zscore is not None:
        rules.append(flt.RuleResult(f"latent-norm z-score ≤ {args.zscore}", flt.keep_zscore(run.z, args.zscore)))
    if args.polygon:
        from cryo_napari.analysis.polygon import read_polygon

        poly = read_polygon(args.polygon)
        rules.append(flt.RuleResult(f"inside polygon ({poly.space} axes {list(poly.axes)})",
                                    poly.select(polygon_coordinates(args, run, poly))))
    if args.ind_file:
        rules.append(flt.RuleResult(f"listed in {Path(args.ind_file).name}", flt.keep_indices(args.ind_file, n)))
    if not rules and not args.invert:
        raise InputError(Path(args.run), "no selection rule given (--clusters, --zscore, --polygon or --ind)")
    mode = "union" if args.union else "intersect"
    keep = flt.combine(rules, mode, args.invert, n)
    lines = flt.summary_lines(rules, keep, mode, args.invert)
    for line in lines:
        yield Log("info", line)
    if not keep.any():
        raise InputError(Path(args.run), "the selection is empty: nothing to write")
    yield Progress(1, 2, "writing")
    out = Path(args.outdir)
    written = {}
    for kind, item in flt.write_selection(keep, out, run, args.particles):
        if kind == "log":
            yield Log("warning", item)
        else:
            written[Path(item).name] = str(item)
            yield Artifact(kind, item)
    report = {"run": str(Path(run.path).resolve()), "epoch": run.epoch, "n": n, "kept": int(keep.sum()),
              "removed": int(n - keep.sum()), "mode": mode, "invert": bool(args.invert),
              "rules": [{"rule": r.name, "kept": r.kept, "removed": r.removed} for r in rules], "files": written}
    write_text_atomic(out / "filter.json", json.dumps(report, indent=1) + "\n")
    yield Progress(2, 2, "done")
    return {**report, "lines": lines, "outdir": out}


def main(args):
    res = run_in_terminal(make_job(args), desc="filter")
    print("\n".join(res["lines"]))
    print(f"wrote {', '.join(res['files'])} to {res['outdir']}")
    return 0
