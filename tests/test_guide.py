"""Every command block of docs/guide.md marked ``<!-- guide: run -->`` runs, in order, as written,
and the guide's pictures (``docs/make_guide_figures.py``) come from files those commands write.

The blocks are executed with bash in one scratch directory (later steps use earlier outputs), by
``docs/guide_run.py``; each command goes through the installed ``cryo-napari`` entry point when it
is on PATH, else ``python -m cryo_napari.cli.main``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
sys.path.insert(0, str(DOCS))

from guide_run import GUIDE, guide_blocks, run_guide  # noqa: E402
from make_guide_figures import FIGURES, make_figures  # noqa: E402


def test_guide_has_runnable_blocks():
    blocks = guide_blocks(GUIDE.read_text())
    assert len(blocks) >= 6
    assert all("cryo-napari" in b for b in blocks)


def test_every_guide_picture_is_made_by_the_figure_script_and_committed():
    shown = re.findall(r"!\[[^\]]*\]\((img/[^)]+)\)", GUIDE.read_text())
    guide_figs = {Path(p).name for p in shown if p.startswith("img/guide/")}
    assert guide_figs == set(FIGURES), "docs/guide.md and make_guide_figures.FIGURES disagree"
    for p in shown:
        assert (DOCS / p).is_file(), f"docs/guide.md shows {p}, which is not in docs/"


@pytest.mark.slow
def test_guide_commands_run_and_write_the_pictures_sources(tmp_path):
    (tmp_path / "work").mkdir()
    for block, line, r in run_guide(tmp_path / "work"):
        assert r.returncode == 0, f"guide block {block}: {line}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    made = make_figures(tmp_path / "work", tmp_path / "figs")
    assert {p.name for p in made} == set(FIGURES) and all(p.stat().st_size > 1000 for p in made)
