"""The core never imports Qt, napari or vispy; only ``cryo_napari.napari`` may.

Each check runs in a fresh interpreter so modules imported by other tests do not count.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

GUI_MODULES = ("PyQt5", "PyQt6", "PySide2", "PySide6", "qtpy", "napari", "vispy")

# Optional extras (pyproject [analysis] / [mesh]): a core module may fail to import only
# because one of these is not installed.
OPTIONAL_DEPS = ("umap", "pynndescent", "numba", "tetgen", "pyvista", "vtk")

_IMPORT_CORE = r"""
import importlib, json, os, pkgutil, sys, traceback
import cryo_napari

GUI, OPTIONAL = {gui!r}, {optional!r}

def core_modules(path, prefix):
    # pkgutil.iter_modules does not import, so cryo_napari.napari is never touched.
    for info in pkgutil.iter_modules(path, prefix):
        if info.name == "cryo_napari.napari" or info.name.startswith("cryo_napari.napari."):
            continue
        yield info.name
        if info.ispkg:
            sub = os.path.join(info.module_finder.path, info.name.rpartition(".")[2])
            yield from core_modules([sub], info.name + ".")

imported, skipped, errors = [], {{}}, {{}}
for name in core_modules(cryo_napari.__path__, "cryo_napari."):
    try:
        importlib.import_module(name)
        imported.append(name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in OPTIONAL:
            skipped[name] = exc.name
        else:
            errors[name] = traceback.format_exc()
    except Exception:
        errors[name] = traceback.format_exc()
print(json.dumps({{"imported": imported, "skipped": skipped, "errors": errors,
                  "gui": sorted(m for m in GUI if m in sys.modules)}}))
"""

_IMPORT_PLUGIN = r"""
import json, sys
import cryo_napari.napari._reader, cryo_napari.napari._writer, cryo_napari.napari._sample_data
print(json.dumps({{"gui": sorted(m for m in {gui!r} if m in sys.modules)}}))
"""


def _run(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_core_imports_without_qt():
    result = _run(_IMPORT_CORE.format(gui=GUI_MODULES, optional=OPTIONAL_DEPS))
    assert not result["errors"], "core modules failed to import:\n" + "\n".join(result["errors"].values())
    assert "cryo_napari.io.mrc" in result["imported"]
    assert not any(m.startswith("cryo_napari.napari") for m in result["imported"])
    assert result["gui"] == [], f"core imported GUI modules {result['gui']}"


def test_plugin_io_modules_import_without_qt():
    """The reader/writer/sample-data hooks return LayerData tuples; they need no GUI."""
    result = _run(_IMPORT_PLUGIN.format(gui=GUI_MODULES))
    assert result["gui"] == [], f"plugin I/O modules imported GUI modules {result['gui']}"


_IMPORT_LAZY = r"""
import json, sys
import cryo_napari.cli.main, cryo_napari.napari._reader, cryo_napari.napari._writer
import cryo_napari.napari._sample_data, cryo_napari.napari._jobs, cryo_napari.napari._latent_explorer
print(json.dumps({"heavy": sorted(m for m in ("torch", "umap", "numba", "sklearn") if m in sys.modules)}))
"""


def test_napari_start_up_does_not_import_torch_or_umap():
    """napari loads our manifest and docks at start-up: torch and umap must load only when a job runs."""
    result = _run(_IMPORT_LAZY)
    assert result["heavy"] == [], f"imported at start-up: {result['heavy']}"
