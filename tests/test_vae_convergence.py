"""Convergence diagnostics: statistics, the verdict heuristic and the CLI end to end."""

import json

import numpy as np
import pytest

from cryo_napari.cli.main import main as cli
from cryo_napari.methods.vae.convergence import latent_shift_stats, looks_converged, map_agreement


def test_latent_shift_stats():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(500, 4))
    same = latent_shift_stats(z, z)
    assert same["median_shift"] == 0 and same["median_cosine"] == pytest.approx(1.0)
    flipped = latent_shift_stats(z, -z)
    assert flipped["median_cosine"] == pytest.approx(-1.0)
    assert flipped["median_relative_shift"] == pytest.approx(2.0, rel=0.2)


def test_verdict_heuristic():
    epochs = [1, 2, 3, 4, 5, 6]
    loss = {2: 0.2, 3: 0.05, 4: 0.003, 5: 0.002, 6: 0.001}
    shift = {2: 0.5, 3: 0.2, 4: 0.05, 5: 0.04, 6: 0.03}
    cc = {2: 0.9, 3: 0.995, 4: 0.999, 5: 0.999, 6: 0.9995}
    e, why = looks_converged(epochs, loss, shift, cc, 0.005, 0.1, 0.99)
    assert e == 3 and "epoch 3" in why
    shift[6] = 0.3  # latents still moving at the end → no verdict
    e, why = looks_converged(epochs, loss, shift, cc, 0.005, 0.1, 0.99)
    assert e is None and "train longer" in why


def test_map_agreement_identical_maps(small_map):
    ag = map_agreement(small_map, small_map)
    assert ag["cc"] == pytest.approx(1.0) and ag["fsc_auc"] == pytest.approx(0.5, abs=0.01)


def test_convergence_cli(tmp_path):
    from cryo_napari.simulate.heterogeneity import discrete_states, synthetic_map
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    maps, _, _ = discrete_states(synthetic_map(16, seed=3))
    paths = simulate_dataset(maps, tmp_path / "data", SimulationParams(n_particles=120, snr=1.0, apix=6.0, seed=2))
    run = tmp_path / "run"
    assert cli(["train-vae", str(paths["star"]), "-o", str(run), "-n", "3", "--enc-dim", "32", "--dec-dim", "32",
                "--zdim", "2"]) == 0
    assert cli(["convergence", str(run), "--markers", "3", "-D", "8"]) == 0
    out = run / "convergence"
    for name in ("loss.png", "latent_shifts.png", "maps.png", "convergence.json"):
        assert (out / name).stat().st_size > 0
    res = json.loads((out / "convergence.json").read_text())
    assert res["epochs"] == [1, 2, 3] and len(res["latent_shifts"]) == 2 and len(res["map_agreement"]) == 2
    assert len(res["marker_particles"]) <= 3 and res["reasoning"]
    assert all(-1 <= r["cc"] <= 1 for r in res["map_agreement"])
    # one epoch only → one-line error
    one = tmp_path / "one"
    assert cli(["train-vae", str(paths["star"]), "-o", str(one), "-n", "1", "--enc-dim", "16", "--dec-dim", "16"]) == 0
    assert cli(["convergence", str(one)]) == 2
