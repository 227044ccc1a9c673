"""Build the tiny bundled sample dataset (``sample_data/``) from a synthetic map.

Run ``python -m cryo_napari.simulate.sample_data`` to regenerate it; it is deterministic. The
dataset: 3 discrete states (full, domain swung 25°, domain removed) of a synthetic chiral map,
256 particles at 32 px, 3 Å/px, SNR 0.1, plus the consensus map back-projected from them.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from cryo_napari.jobs.protocol import run_to_end
from cryo_napari.io.particles import load_particles
from cryo_napari.methods.backproject import backproject_job
from cryo_napari.simulate.heterogeneity import discrete_states, synthetic_map
from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "sample_data"


def build_sample_data(out: Path = DEFAULT_DIR, n: int = 256, D: int = 32) -> Path:
    """Write particles.mrcs/.star/.cs, poses.pkl, ctf.pkl, ground_truth.npz and consensus.mrc."""
    out = Path(out)
    maps, _, _ = discrete_states(synthetic_map(D, seed=0))
    simulate_dataset(maps, out, SimulationParams(n_particles=n, snr=0.1, apix=3.0, seed=0))
    tmp = out / "_bp"
    run_to_end(backproject_job(load_particles(out / "particles.star"), tmp))
    shutil.move(tmp / "map.mrc", out / "consensus.mrc")
    shutil.rmtree(tmp)
    return out


if __name__ == "__main__":
    print(build_sample_data(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR))
