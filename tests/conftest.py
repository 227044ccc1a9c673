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


def _can_render() -> bool:
    """A real display (e.g. ``xvfb-run -a``) and not the offscreen Qt platform."""
    return bool(os.environ.get("DISPLAY")) and os.environ.get("QT_QPA_PLATFORM", "xcb") != "offscreen"


def pytest_collection_modifyitems(config, items):
    """Rendering tests skip cleanly without a display (the normal offscreen run)."""
    if _can_render():
        return
    skip = pytest.mark.skip(reason="needs OpenGL through a display: run under `xvfb-run -a` without QT_QPA_PLATFORM")
    for item in items:
        if "render" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def vae_run(tmp_path_factory):
    """A real one-epoch train-vae run (zdim 2) on 120 simulated 16² particles (a few seconds)."""
    from cryo_napari.cli.main import main as cli
    from cryo_napari.simulate.heterogeneity import synthetic_map
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    out = tmp_path_factory.mktemp("tiny_vae")
    paths = simulate_dataset(synthetic_map(16, seed=3), out / "data",
                             SimulationParams(n_particles=120, snr=1.0, apix=6.0, seed=5))
    run = out / "run"
    small = ["--enc-dim", "16", "--dec-dim", "16", "--enc-layers", "1", "--dec-layers", "1", "--seed", "3"]
    assert cli(["train-vae", str(paths["star"]), "-o", str(run), "-n", "1", "--zdim", "2", *small]) == 0
    return run


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


@pytest.fixture
def notes(monkeypatch):
    """Notifications the napari docks send, as (kind, text), instead of napari's notification manager."""
    from cryo_napari.napari import _jobs

    seen = []
    monkeypatch.setattr(_jobs, "_notify", lambda kind, text: seen.append((kind, text)))
    return seen


def slow_fake_job(out: Path, n: int = 200, sleep_s: float = 0.02):
    """A fake job for the dock tests: writes step_<i>.mrc atomically, then yields a loss Metric
    and Progress; returns "finished".

    Returns (generator, state); ``state["last"]`` is the last file written, ``state["closed"]``
    becomes True when the generator is closed (abort) or finishes.
    """
    import time

    from cryo_napari.io.mrc import write_mrc
    from cryo_napari.jobs.protocol import Metric, Progress

    state = {"closed": False, "last": None}

    def job():
        try:
            for i in range(n):
                time.sleep(sleep_s)
                path = out / f"step_{i:03d}.mrc"
                write_mrc(path, np.full((4, 4, 4), i, np.float32), apix=1.0)
                state["last"] = path
                yield Metric("loss", 1.0 / (i + 1), i)
                yield Progress(i + 1, n, f"step {i + 1}")
            return "finished"
        finally:
            state["closed"] = True

    return job(), state
