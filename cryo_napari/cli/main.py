"""``cryo-napari``: heterogeneity analysis for single-particle cryo-EM.

Each subcommand lives in its own module ``cryo_napari.cli.<name>`` with ``add_args(parser)`` and
``main(args)``; the module docstring is its help. Bad input prints one line
(``error: <file>: <problem>``) and exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from cryo_napari import __version__
from cryo_napari.errors import InputError

#: subcommand name → module (kept in the order shown by --help)
COMMANDS = {
    "info": "cryo_napari.cli.info",
    "simulate": "cryo_napari.cli.simulate",
    "downsample": "cryo_napari.cli.downsample",
    "backproject": "cryo_napari.cli.backproject",
    "demo": "cryo_napari.cli.demo",
    "train-vae": "cryo_napari.cli.train_vae",
    "eval-vol": "cryo_napari.cli.eval_vol",
    "convergence": "cryo_napari.cli.convergence",
    "refine-z": "cryo_napari.cli.refine_z",
    "analyze": "cryo_napari.cli.analyze",
    "traverse": "cryo_napari.cli.traverse",
    "filter": "cryo_napari.cli.filter",
    "occupancy": "cryo_napari.cli.occupancy",
    "class3d": "cryo_napari.cli.class3d",
    "flex": "cryo_napari.cli.flex",
    "gui": "cryo_napari.cli.gui",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only`` set, import just that subcommand's module (fast start-up)."""
    parser = argparse.ArgumentParser(prog="cryo-napari", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"cryo-napari {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in COMMANDS.items():
        if only is not None and name != only:
            continue
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name != modname or only is not None:
                raise
            continue  # a subcommand not built yet: leave it out of the listing
        doc = (mod.__doc__ or name).strip()
        p = sub.add_parser(name, help=doc.splitlines()[0], description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_args(p)
        p.set_defaults(_main=mod.main)
    return parser


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    argv = sys.argv[1:] if argv is None else list(argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(first if first in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "_main", None):
        parser.print_help()
        return 1
    try:
        rc = args._main(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last complete step is on disk", file=sys.stderr)
        return 130
    except OSError as err:  # disk full, permissions: one line, no traceback
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        print(f"error: {where}{err.strerror or err} (previous complete outputs are untouched)", file=sys.stderr)
        return 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
