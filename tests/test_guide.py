"""Every command block of docs/guide.md marked ``<!-- guide: run -->`` runs, in order, as written.

The blocks are executed with bash in one scratch directory (later steps use earlier outputs).
Each command goes through the installed ``cryo-napari`` entry point when it is on PATH, else
``python -m cryo_napari.cli.main``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide.md"


def guide_blocks(text: str) -> list[str]:
    """The bash blocks that follow a ``<!-- guide: run -->`` marker, in document order."""
    return re.findall(r"<!-- guide: run -->\s*```bash\n(.*?)```", text, flags=re.S)


def test_guide_has_runnable_blocks():
    blocks = guide_blocks(GUIDE.read_text())
    assert len(blocks) >= 6
    assert all("cryo-napari" in b for b in blocks)


@pytest.mark.slow
def test_guide_commands_run(tmp_path):
    blocks = guide_blocks(GUIDE.read_text())
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), MPLBACKEND="Agg")
    prefix = "cryo-napari" if shutil.which("cryo-napari") else f"{sys.executable} -m cryo_napari.cli.main"
    for i, block in enumerate(blocks):
        for line in block.strip().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            cmd = prefix + line[len("cryo-napari"):] if line.startswith("cryo-napari") else line
            r = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=600)
            assert r.returncode == 0, f"guide block {i + 1}: {line}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
