"""Convergence diagnostics: statistics, the verdict heuristic and the CLI end to end."""

import json

import numpy as np
import pytest

from cryo_napari.cli.main import main as cli
from cryo_napari.analysis.sketch import follow_marker_sets, prune_close_maxima, sketch_by_local_maxima
from cryo_napari.methods.vae.convergence import latent_shift_stats, looks_converged, map_agreement


def test_latent_shift_stats():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(500, 4))
    same = latent_shift_stats(z, z)
    assert same["median_shift"] == 0 and same["median_cosine"] == pytest.approx(1.0)
    flipped = latent_shift_stats(z, -z)
    assert flipped["median_cosine"] == pytest.approx(-1.0)
    assert flipped["median_relative_shift"] == pytest.approx(2.0, rel=0.2)
    # shift vectors: a steady drift (same direction twice) vs noise (independent directions)
    drift = latent_shift_stats(z + 1, z + 2, z)
    assert drift["median_shift_cosine_distance"] == pytest.approx(0.0, abs=1e-9) and drift["median_shift_dot"] == 4
    e1, e2 = rng.normal(size=z.shape), rng.normal(size=z.shape)
    noise = latent_shift_stats(z + e1, z + e1 + e2, z)  # independent steps: cosine distance ≈ 1
    assert 0.8 < noise["median_shift_cosine_distance"] < 1.2
    back_and_forth = latent_shift_stats(z + e1, z, z)  # oscillation: 2
    assert back_and_forth["median_shift_cosine_distance"] == pytest.approx(2.0)


def _blobs(sizes, centres, spread=0.4, seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(c, spread, (n, 2)) for c, n in zip(centres, sizes)])


def test_sketch_finds_one_marker_per_mode_ordered_by_height():
    centres = np.array([[0, 0], [6, 0], [0, 6], [6, 6.0]])
    emb = _blobs([400, 300, 200, 100], centres)
    s = sketch_by_local_maxima(emb)
    assert s.members.shape == (1000, 4) and s.n_found == 4
    assert np.all(np.diff(s.peak_values) < 0)  # highest first
    # each marker sits on its mode (same order as the sizes) and holds only that mode's particles
    assert np.abs(s.centers - centres).max() < 0.3
    truth = np.repeat(np.arange(4), [400, 300, 200, 100])
    for k in range(4):
        assert set(truth[s.members[:, k]]) == {k} and s.members[:, k].sum() > 20
    # more maxima than wanted: only 2 highest kept
    assert sketch_by_local_maxima(emb, n_final=2).members.shape[1] == 2


def test_pruning_merges_close_peaks_keeping_the_higher():
    coords = np.array([[0, 0], [2, 0], [20, 20], [22, 21]])
    values = np.array([5.0, 9.0, 3.0, 1.0])
    c, v = prune_close_maxima(coords, values, n_keep=2, radius=5)
    assert v.tolist() == [9.0, 3.0] and c.tolist() == [[2, 0], [20, 20]]
    # well separated peaks are never pruned, even above n_keep
    c, v = prune_close_maxima(coords, values, n_keep=1, radius=1)
    assert len(v) == 4


def test_marker_sets_are_followed_to_on_data_latents():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(300, 3)).astype(np.float32)
    members = np.zeros((300, 2), bool)
    members[:50, 0], members[100:120, 1] = True, True
    zm, ind = follow_marker_sets(z, members)
    assert zm.shape == (2, 3) and np.array_equal(zm, z[ind])
    for k in range(2):  # the particle nearest the set's median latent
        med = np.median(z[members[:, k]], axis=0)
        assert ind[k] == np.argmin(((z - med) ** 2).sum(1))


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
    # masked (cryoDRGN's loose mask): solvent noise no longer dilutes the disagreement
    noisy = small_map + np.random.default_rng(0).normal(0, small_map.std(), small_map.shape).astype(np.float32)
    assert map_agreement(small_map, noisy, masked=True)["cc"] != map_agreement(small_map, noisy)["cc"]


def test_convergence_cli(tmp_path):
    from cryo_napari.simulate.heterogeneity import discrete_states, synthetic_map
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    maps, _, _ = discrete_states(synthetic_map(16, seed=3))
    paths = simulate_dataset(maps, tmp_path / "data", SimulationParams(n_particles=120, snr=1.0, apix=6.0, seed=2))
    run = tmp_path / "run"
    assert cli(["train-vae", str(paths["star"]), "-o", str(run), "-n", "3", "--enc-dim", "32", "--dec-dim", "32",
                "--zdim", "2"]) == 0
    assert cli(["convergence", str(run), "--markers", "3", "-D", "8", "--every", "1", "--embedding", "pca"]) == 0
    out = run / "convergence"
    for name in ("loss.png", "latent_shifts.png", "maps.png", "embeddings.png", "sketch.png", "convergence.json"):
        assert (out / name).stat().st_size > 0
    res = json.loads((out / "convergence.json").read_text())
    assert res["epochs"] == [1, 2, 3] and len(res["latent_shifts"]) == 2 and len(res["map_agreement"]) == 2
    assert "median_shift_cosine_distance" in res["latent_shifts"][1]
    assert res["embedding"]["method"] == "pca" and res["markers"]["from_epoch"] == 3
    assert 1 <= len(res["marker_particles"]) <= 3 and res["reasoning"]
    assert [r["epoch"] for r in res["markers"]["per_epoch"]] == [1, 2, 3]
    assert all(-1 <= r["cc"] <= 1 for r in res["map_agreement"])
    emb = np.load(out / "embeddings" / "emb.pca.3.npy")
    assert emb.shape == (120, 2)
    # a later check of the same run reuses the stored embeddings; the default --every 5 evaluates the last epoch
    mtime = (out / "embeddings" / "emb.pca.3.npy").stat().st_mtime_ns
    assert cli(["convergence", str(run), "--markers", "3", "-D", "8", "--embedding", "pca"]) == 0
    assert (out / "embeddings" / "emb.pca.3.npy").stat().st_mtime_ns == mtime
    assert json.loads((out / "convergence.json").read_text())["evaluated_epochs"] == [3]
    # one epoch only → one-line error
    one = tmp_path / "one"
    assert cli(["train-vae", str(paths["star"]), "-o", str(one), "-n", "1", "--enc-dim", "16", "--dec-dim", "16"]) == 0
    assert cli(["convergence", str(one)]) == 2
    assert cli(["convergence", str(run), "--every", "0"]) == 2


@pytest.mark.slow
def test_convergence_with_umap_markers(tmp_path):
    """The default embedding (UMAP; umap-learn compiles for minutes on first use, so one test only)."""
    pytest.importorskip("umap")
    from cryo_napari.simulate.heterogeneity import discrete_states, synthetic_map
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    maps, _, _ = discrete_states(synthetic_map(16, seed=3))
    paths = simulate_dataset(maps, tmp_path / "data", SimulationParams(n_particles=200, snr=1.0, apix=6.0, seed=2))
    run = tmp_path / "run"
    assert cli(["train-vae", str(paths["star"]), "-o", str(run), "-n", "2", "--enc-dim", "32", "--dec-dim", "32",
                "--zdim", "2", "--convergence-every", "2"]) == 0
    res = json.loads((run / "convergence" / "convergence.json").read_text())
    assert res["embedding"]["method"] == "umap" and res["evaluated_epochs"] == [2]
    assert np.load(run / "convergence" / "embeddings" / "emb.umap.2.npy").shape == (200, 2)
    assert 1 <= len(res["marker_particles"]) <= 10
