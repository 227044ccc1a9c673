"""Maps along a path in latent space: a kNN-graph path, a straight line, or a principal component.

--graph A B [C ...]: shortest path through particles A, B, C on the k-nearest-neighbour graph of
the latents (edges longer than --max-dist dropped; by default the cut-off keeps --avg-neighbors
edges per particle on average); every map is at a visited particle (on-data).
--direct A B: straight interpolation between the latents of particles A and B (--n points).
--pc K: along PC K from its 1st to 99th percentile (on-data unless --off-data).
Writes OUT/vol_XXX.mrc, OUT/series.npy (F, D, D, D) for the napari viewer, OUT/series.json
(voxel size, kind, latent path, particle indices) and OUT/z_values.txt.
"""

from __future__ import annotations

from cryo_napari.jobs.protocol import run_in_terminal


def add_args(p):
    p.add_argument("run", help="run directory (train-vae, flex train or cryoDRGN)")
    p.add_argument("--epoch", type=int, help="epoch (default: the latest complete one)")
    p.add_argument("--refined", action="store_true",
                   help="use the latents `cryo-napari refine-z` wrote (z.N.refined.npy) instead of the encoder's")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--graph", type=int, nargs="+", metavar="I", help="anchor particles (≥ 2) for a graph path")
    g.add_argument("--direct", type=int, nargs=2, metavar=("A", "B"), help="straight line between two particles")
    g.add_argument("--pc", type=int, metavar="K", help="traverse principal component K (1-based)")
    p.add_argument("-n", "--n", dest="n", type=int, default=10, help="points for --direct / --pc (default 10)")
    p.add_argument("--max-neighbors", type=int, default=10, help="graph: neighbours per particle (default 10)")
    p.add_argument("--avg-neighbors", type=float, default=5.0, help="graph: average kept edges, sets the cut-off (default 5)")
    p.add_argument("--max-dist", type=float, help="graph: longest edge (latent units; overrides --avg-neighbors)")
    p.add_argument("--off-data", action="store_true", help="--pc: keep the exact PC points (not the nearest particles)")
    p.add_argument("--on-data", action="store_true", help="--direct: snap points to the nearest particles")
    p.add_argument("-o", "--outdir", required=True, help="output directory")
    p.add_argument("-D", dest="D", type=int, help="box of the maps (even, ≤ training box)")
    p.add_argument("--flip", action="store_true", help="flip handedness of the maps")
    p.add_argument("--apix", type=float, help="pixel size (Å) of the training box (cryoDRGN runs do not record it)")


def make_job(args):
    """The job (generator): compute the path, write the maps and the series."""
    import json
    from pathlib import Path

    import numpy as np

    from cryo_napari.analysis.analyze import write_volumes
    from cryo_napari.analysis.runs import load_latent_run
    from cryo_napari.analysis.traversal import direct_traversal, graph_traversal, pc_traversal
    from cryo_napari.jobs.atomic import save_npy_atomic, write_text_atomic
    from cryo_napari.jobs.protocol import Artifact, Log, Progress

    run = load_latent_run(args.run, args.epoch, args.apix, refined=args.refined)
    yield Progress(0, 2, "path")
    if args.graph:
        tr = graph_traversal(run.z, args.graph, args.max_neighbors, args.avg_neighbors, args.max_dist)
    elif args.direct:
        tr = direct_traversal(run.z, args.direct[0], args.direct[1], args.n, args.on_data)
    else:
        tr = pc_traversal(run.z, args.pc, args.n, on_data=not args.off_data)
    yield Log("info", f"{tr.kind} path with {len(tr.z)} points")
    out = Path(args.outdir)
    yield Progress(1, 2, f"{len(tr.z)} maps")
    paths = yield from write_volumes(run, tr.z, out, args.D, args.flip)
    from cryo_napari.io.mrc import read_mrc

    series = np.stack([read_mrc(p)[0] for p in paths]).astype(np.float32)
    yield Artifact("series", save_npy_atomic(out / "series.npy", series))
    meta = {"kind": tr.kind, "voxel_size_A": run.apix_at(args.D), "shape": list(series.shape),
            "run": str(Path(run.path).resolve()), "epoch": run.epoch, "flip": bool(args.flip),
            "z": np.asarray(tr.z).tolist(), "ind": None if tr.ind is None else [int(i) for i in tr.ind], **tr.info}
    write_text_atomic(out / "series.json", json.dumps(meta, indent=1) + "\n")
    yield Progress(2, 2, "done")
    return {"outdir": out, "n": len(paths), "kind": tr.kind, "ind": tr.ind}


def main(args):
    res = run_in_terminal(make_job(args), desc="traverse")
    print(f"{res['n']} maps along the {res['kind']} path → {res['outdir']}/series.npy")
    return 0
