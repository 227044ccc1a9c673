"""Open napari with cryo_napari's docks, and optionally a run, a volume series or a map.

  cryo-napari gui                  the job docks (backproject, train-vae, analyze, class3d, flex …)
  cryo-napari gui VAE_RUN          a train-vae or cryoDRGN run: latent explorer loaded with it
  cryo-napari gui CLASS3D_RUN      a class3d run: convergence dashboard + class maps per iteration
  cryo-napari gui SERIES           series.npy / a directory of maps: the volume series viewer
  cryo-napari gui map.mrc          a consensus map: opened with the mesh segmenter
  cryo-napari gui --dock explorer --dock flex-train

The same docks are in napari's Plugins menu (cryo_napari), and a run directory dropped on the
window opens the same way.
"""

from __future__ import annotations

from pathlib import Path

from cryo_napari.errors import InputError

#: dock name → ``module:factory`` (factories take the viewer; imported only when opened).
DOCKS = {
    "backproject": "cryo_napari.napari._jobs:backproject_dock",
    "train-vae": "cryo_napari.napari._jobs:train_vae_dock",
    "analyze": "cryo_napari.napari._jobs:analyze_dock",
    "convergence": "cryo_napari.napari._jobs:convergence_dock",
    "refine-z": "cryo_napari.napari._jobs:refine_z_dock",
    "class3d": "cryo_napari.napari._jobs:class3d_dock",
    "flex-prep": "cryo_napari.napari._jobs:flex_prep_dock",
    "flex-mesh": "cryo_napari.napari._jobs:flex_mesh_dock",
    "flex-train": "cryo_napari.napari._jobs:flex_train_dock",
    "flex-generate": "cryo_napari.napari._jobs:flex_generate_dock",
    "flex-reconstruct": "cryo_napari.napari._jobs:flex_reconstruct_dock",
    "explorer": "cryo_napari.napari._latent_explorer:latent_explorer",
    "mesh": "cryo_napari.napari._mesh_segmenter:mesh_segmenter",
    "series": "cryo_napari.napari._series_viewer:series_viewer",
    "dashboard": "cryo_napari.napari._class3d_dashboard:class3d_dashboard",
}
DEFAULT_DOCKS = ("backproject", "train-vae", "analyze", "class3d", "flex-train")


def classify(path) -> str:
    """What ``path`` is: ``latent-run``, ``class3d-run``, ``series``, ``map`` or ``stack``.

    Raises
    ------
    InputError
        ``path`` is missing or none of these.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(p, "not found")
    if p.is_file() and p.suffix.lower() in (".mrc", ".map"):
        from cryo_napari.io.mrc import read_header

        return "stack" if read_header(p)["is_stack"] else "map"
    if p.is_file() and p.suffix.lower() == ".mrcs":
        return "stack"
    d = p.parent if p.is_file() and p.name in ("config.yaml", "series.npy", "series.json") else p
    if d.is_dir():
        from cryo_napari.napari._reader import _latent_kind
        from cryo_napari.napari._series_io import class_maps, is_series

        if _latent_kind(d) is not None:
            return "latent-run"
        if class_maps(d) or (d / "metrics.jsonl").exists() and any(d.glob("iter_*")):
            return "class3d-run"
        if is_series(d):
            return "series"
    raise InputError(p, "not a run directory, volume series or .mrc/.mrcs file")


def plan(path=None, docks=None) -> list[str]:
    """The docks to open for ``path`` (and those asked for with ``--dock``), in order."""
    chosen = list(docks or [])
    unknown = [d for d in chosen if d not in DOCKS]
    if unknown:
        raise InputError(None, f"unknown dock {unknown[0]!r} (known: {', '.join(DOCKS)})")
    if path is not None:
        extra = {"latent-run": ["explorer"], "class3d-run": ["dashboard", "series"], "series": ["series"],
                 "map": ["mesh"], "stack": []}[classify(path)]
        chosen = extra + [d for d in chosen if d not in extra]
    if not chosen:
        chosen = list(DEFAULT_DOCKS)
    return chosen


def add_args(p):
    p.add_argument("path", nargs="?", metavar="RUN_OR_FILE",
                   help="run directory (ours or cryoDRGN), volume series, or .mrc/.mrcs file to open")
    p.add_argument("--dock", action="append", choices=list(DOCKS), help="open this dock too (repeatable)")
    p.add_argument("--epoch", type=int, help="epoch of a latent run to load (default: the latest complete)")


def main(args):
    docks = plan(args.path, args.dock)  # bad input fails here, before any window opens
    import napari

    from cryo_napari.napari._app import open_gui

    open_gui(args.path, docks, epoch=args.epoch, show=True)
    napari.run()
    return 0
