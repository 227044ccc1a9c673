"""Run the command blocks of docs/guide.md, in order, in one working directory.

Used by ``tests/test_guide.py`` (every block runs as written) and ``docs/make_guide_figures.py``
(the guide's pictures come from those same runs). A block is a ```` ```bash ```` fence right after
a ``<!-- guide: run -->`` marker; each non-empty, non-comment line is one command, and
``cryo-napari`` is replaced by ``python -m cryo_napari.cli.main`` when the entry point is not on
PATH.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

GUIDE = Path(__file__).resolve().parent / "guide.md"


def guide_blocks(text: str) -> list[str]:
    """The bash blocks that follow a ``<!-- guide: run -->`` marker, in document order."""
    return re.findall(r"<!-- guide: run -->\s*```bash\n(.*?)```", text, flags=re.S)


def guide_commands(text: str) -> list[tuple[int, str]]:
    """(block number from 1, command line) for every command of the runnable blocks."""
    return [(i + 1, line.strip()) for i, block in enumerate(guide_blocks(text))
            for line in block.strip().splitlines() if line.strip() and not line.strip().startswith("#")]


def run_guide(workdir: Path, threads: str | None = None, timeout: float = 600):
    """Run every guide command in ``workdir``; yields (block, line, CompletedProcess) per command and
    stops after the first failure (the caller reports it)."""
    env = dict(os.environ, OMP_NUM_THREADS=threads or os.environ.get("OMP_NUM_THREADS", "2"), MPLBACKEND="Agg")
    prefix = "cryo-napari" if shutil.which("cryo-napari") else f"{sys.executable} -m cryo_napari.cli.main"
    for block, line in guide_commands(GUIDE.read_text()):
        cmd = prefix + line[len("cryo-napari"):] if line.startswith("cryo-napari") else line
        r = subprocess.run(["bash", "-c", cmd], cwd=workdir, env=env, capture_output=True, text=True,
                           timeout=timeout)
        yield block, line, r
        if r.returncode != 0:
            return
