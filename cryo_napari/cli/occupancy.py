"""Occupancy of structural elements of an aligned atomic model in a set of maps.

For each map and each element (every chain, or the residue ranges of a text file with lines
'name chain start end'), the fraction of the element's atoms at which the map (trilinear sample)
is above a threshold (--threshold; default mean + 3 s.d. of each map), or with --mode density the
mean density at the element's atoms normalised by its largest value over the maps. The model must
be aligned to the maps: voxel D//2 sits at the model's centre unless --origin gives the Å position
of voxel (0, 0, 0). Writes OUT/occupancy.csv and OUT/occupancy.png (heatmap, both axes ordered by
hierarchical clustering).
"""

from __future__ import annotations

from cryo_napari.jobs.protocol import run_in_terminal


def add_args(p):
    p.add_argument("volumes", nargs="+", help="maps (.mrc), or one series.npy (F, D, D, D) from traverse")
    p.add_argument("--model", required=True, help="atomic model (.pdb or .cif) aligned to the maps")
    p.add_argument("--elements", default="chains", help="'chains' or a residue-range file (name chain start end)")
    p.add_argument("--mode", choices=["fraction", "density"], default="fraction",
                   help="fraction of atoms above threshold (default) or normalised density")
    p.add_argument("--threshold", type=float, help="density threshold for all maps (default: mean + 3 s.d. per map)")
    p.add_argument("--apix", type=float, help="pixel size (Å) (default: from the map headers / series.json)")
    p.add_argument("--origin", type=float, nargs=3, metavar=("X", "Y", "Z"), help="Å position of voxel (0,0,0)")
    p.add_argument("-o", "--outdir", required=True, help="output directory")


def load_maps(paths, apix=None):
    """(list of (D, D, D) arrays, names, pixel size Å) from .mrc files or one series.npy."""
    import json
    from pathlib import Path

    import numpy as np

    from cryo_napari.errors import InputError
    from cryo_napari.io.mrc import read_mrc

    paths = [Path(p) for p in paths]
    if len(paths) == 1 and paths[0].suffix == ".npy":
        p = paths[0]
        if not p.exists():
            raise InputError(p, "file not found")
        arr = np.load(p, mmap_mode="r")
        if arr.ndim != 4:
            raise InputError(p, f"a map series must be (F, D, D, D), got {arr.shape}")
        meta = p.with_suffix(".json")
        if apix is None and meta.exists():
            apix = json.loads(meta.read_text()).get("voxel_size_A")
        return [np.asarray(a) for a in arr], [f"{p.stem}[{i}]" for i in range(len(arr))], float(apix or 1.0)
    maps, sizes = [], []
    for p in paths:
        vol, a = read_mrc(p)
        if vol.ndim != 3:
            raise InputError(p, f"not a 3-D map (shape {vol.shape})")
        maps.append(vol)
        sizes.append(a)
    if len({m.shape for m in maps}) > 1:
        raise InputError(paths[0], "maps have different boxes")
    return maps, [p.stem if paths.count(p) == 1 else str(p) for p in paths], float(apix or sizes[0])


def make_job(args):
    """The job (generator): sample the maps at the atoms, write the matrix and heatmap."""
    from pathlib import Path

    from cryo_napari.analysis import occupancy as occ
    from cryo_napari.jobs.protocol import Artifact, Log, Progress
    from cryo_napari.simulate.atoms import read_model_atoms

    yield Progress(0, 3, "reading")
    atoms = read_model_atoms(args.model)
    elements = occ.chain_elements(atoms) if args.elements == "chains" else occ.read_residue_ranges(args.elements, atoms)
    maps, names, apix = load_maps(args.volumes, args.apix)
    yield Log("info", f"{len(maps)} maps ({apix:.3g} Å/px), {len(elements)} elements, {len(atoms['xyz'])} atoms")
    yield Progress(1, 3, "sampling")
    mat, ths = occ.occupancy_matrix(maps, apix, atoms, elements, args.mode, args.threshold, args.origin)
    yield Progress(2, 3, "writing")
    res = occ.write_occupancy(mat, names, [e.name for e in elements], args.outdir,
                              f"{args.mode} occupancy, {Path(args.model).name}")
    yield Artifact("table", res["csv"])
    yield Artifact("plot", res["png"])
    yield Progress(3, 3, "done")
    return {**res, "matrix": mat, "thresholds": ths, "maps": names, "elements": [e.name for e in elements]}


def main(args):
    res = run_in_terminal(make_job(args), desc="occupancy")
    print(f"{len(res['maps'])} maps × {len(res['elements'])} elements → {res['csv']}, {res['png']}")
    return 0
