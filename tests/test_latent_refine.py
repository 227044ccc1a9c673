"""Latent refinement against maps generated at latent centres (any model; ``refine-z --method maps``)."""

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from cryo_napari.geometry.rotations import flip_map_handedness
from cryo_napari.jobs.protocol import run_to_end
from cryo_napari.methods.latent_refine import latent_centres, refine_by_maps_job
from cryo_napari.simulate.heterogeneity import discrete_states, synthetic_map

D = 16


@pytest.fixture(scope="module")
def two_states(tmp_path_factory):
    from cryo_napari.io.particles import load_particles
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    maps, _, _ = discrete_states(synthetic_map(D, seed=3))
    maps = maps[[0, 2]]
    out = tmp_path_factory.mktemp("maps_refine")
    paths = simulate_dataset(maps, out, SimulationParams(n_particles=400, snr=1.0, apix=6.0, seed=4))
    return maps, np.load(out / "ground_truth.npz")["states"], load_particles(paths["star"])


def _model(maps, flip=False, gain=3.0):
    """A 'decoder': latent t → (1 − t)·A + t·B in its own units (×gain), optionally mirrored."""
    def make_maps(c, d):
        assert d == D
        t = np.clip(c[:, 0], 0, 1)[:, None, None, None]
        v = gain * ((1 - t) * maps[0] + t * maps[1]).astype(np.float32)
        return flip_map_handedness(v) if flip else v
    return make_maps


def _ari(z, truth):
    return adjusted_rand_score(truth, KMeans(2, n_init=10, random_state=0).fit_predict(z))


def test_latent_centres_are_kmeans_with_their_weights():
    z = np.concatenate([np.zeros((30, 2)), np.ones((10, 2))]).astype(np.float32)
    c, lp = latent_centres(z + np.random.default_rng(0).normal(0, 0.01, z.shape).astype(np.float32), 2)
    order = np.argsort(c[:, 0])
    assert np.allclose(c[order], [[0, 0], [1, 1]], atol=0.02)
    assert np.allclose(np.exp(lp[order]), [0.75, 0.25])


@pytest.mark.parametrize("flip", [False, True])
def test_maps_refinement_fits_scale_and_hand_and_recovers_the_states(two_states, flip):
    maps, truth, pdata = two_states
    z_enc = (truth[:, None] + np.random.default_rng(1).normal(0, 0.7, (len(truth), 1))).astype(np.float32)
    res = run_to_end(refine_by_maps_job(z_enc, _model(maps, flip), pdata, D, n_centres=12, seed=0))
    assert res["flip"] is flip and res["working_box"] == D and res["n_centres"] == 12
    assert res["scale"] == pytest.approx(1 / 3.0, rel=0.15)  # the simulator's units / the model's
    before, after = _ari(z_enc, truth), _ari(res["z"], truth)
    # the Bayes classifier with the two true maps (the centres nearest 0 and 1 of this model)
    ends = run_to_end(refine_by_maps_job(truth[:, None].astype(np.float32), _model(maps, flip), pdata, D, 2))
    oracle = _ari(ends["z"], truth)
    assert before < 0.5 and oracle > 0.8 and after > 0.95 * oracle, (before, after, oracle)


def test_maps_refinement_refuses_a_bad_box(two_states):
    maps, truth, pdata = two_states
    with pytest.raises(Exception, match="working box 18"):
        run_to_end(refine_by_maps_job(truth[:, None].astype(np.float32), _model(maps), pdata, 18))


def test_refine_z_maps_on_an_mlp_vae_run(vae_run, tmp_path):
    import json
    import shutil

    from cryo_napari.analysis.runs import load_latent_run
    from cryo_napari.cli.main import main as cli

    run = tmp_path / "run"
    shutil.copytree(vae_run, run)
    assert cli(["refine-z", str(run), "--centres", "4", "--box", "8"]) != 0  # below class3d's smallest box
    assert not list(run.glob("*.refined.npy"))
    assert cli(["refine-z", str(run), "--centres", "4"]) == 0
    r = load_latent_run(run, refined=True)
    assert r.z.shape == load_latent_run(run).z.shape and np.isfinite(r.z).all()
    info = json.loads(next(run.glob("refine_z.*.json")).read_text())
    assert info["method"] == "maps" and info["working_box"] == 16 and info["n_centres"] == 4


def test_refine_z_on_a_cryodrgn_run(tmp_path, capsys):
    """A cryoDRGN-written model (tests/data/cryodrgn_ft_run, D = 16, zdim 4) given a simulated stack,
    cryoDRGN pose/CTF pkls and a z.pkl: refine-z reads them as cryoDRGN did and writes
    z.final.refined.npy, which the loader serves with refined=True."""
    import pickle
    import shutil
    from pathlib import Path

    import yaml

    from cryo_napari.analysis.runs import load_latent_run
    from cryo_napari.cli.main import main as cli
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    run = tmp_path / "drgn"
    shutil.copytree(Path(__file__).parent / "data" / "cryodrgn_ft_run", run)
    paths = simulate_dataset(synthetic_map(D, seed=3)[None], tmp_path / "data",
                             SimulationParams(n_particles=120, snr=1.0, apix=6.0, seed=5))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    data = Path(paths["star"]).parent
    cfg["dataset_args"].update(particles=str(data / "particles.mrcs"), poses=str(data / "poses.pkl"),
                               ctf=str(data / "ctf.pkl"))
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    with open(run / "z.pkl", "wb") as f:
        pickle.dump(np.random.default_rng(0).normal(size=(120, 4)).astype(np.float32), f)
    with pytest.raises(Exception, match="refine-z"):
        load_latent_run(run, refined=True)
    assert cli(["refine-z", str(run), "--centres", "4", "--method", "basis"]) != 0  # not a basis-decoder run
    assert cli(["refine-z", str(run), "--centres", "4"]) == 0
    r = load_latent_run(run, refined=True)
    assert (run / "z.final.refined.npy").exists() and r.latents == "refined"
    assert r.z.shape == (120, 4) and np.isfinite(r.z).all()
