import os
from pathlib import Path

import numpy as np
import pytest
import torch

# Widgets and thread workers run offscreen; rendering tests (marker `render`) need a display,
# e.g. `xvfb-run -a python -m pytest -m render` with the default xcb platform.
if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


@pytest.fixture
def fixtures_dir():
    """../shared/fixtures beside the checkout; tests using it skip when it is absent."""
    if not FIXTURES.exists():
        pytest.skip("../shared/fixtures not present")
    return FIXTURES


@pytest.fixture
def small_map():
    """A 32³ synthetic chiral map (no external data)."""
    from cryo_napari.simulate.heterogeneity import synthetic_map

    return synthetic_map(32, seed=3)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
