"""train-vae inputs: .star, .cs, stack + cryoDRGN pkls (simulated and real files), --ind, -D, --uninvert."""

import json

import numpy as np
import pytest

from cryo_napari.cli.main import main as cli

SMALL = ["--enc-dim", "32", "--dec-dim", "32", "--enc-layers", "1", "--dec-layers", "1", "--zdim", "2", "--seed", "2"]
N = 96


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from cryo_napari.simulate.heterogeneity import discrete_states, synthetic_map
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    maps, _, _ = discrete_states(synthetic_map(16, seed=3))
    out = tmp_path_factory.mktemp("vae_inputs")
    return simulate_dataset(maps, out, SimulationParams(n_particles=N, snr=1.0, apix=6.0, seed=7))


def _train(tmp_path, name, *argv):
    run = tmp_path / name
    assert cli(["train-vae", *map(str, argv), "-o", str(run), "-n", "1", *SMALL]) == 0
    return run


def _loss(run):
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["loss"]


def test_star_cs_and_stack_with_pkls_train_identically(sim, tmp_path):
    """The three formats carry the same poses, shifts and CTF, so one epoch gives the same latents."""
    runs = [_train(tmp_path, "star", sim["star"]), _train(tmp_path, "cs", sim["cs"]),
            _train(tmp_path, "stack", sim["stack"], "--poses", sim["poses"], "--ctf", sim["ctf"])]
    z = [np.load(r / "z.1.npy") for r in runs]
    assert all(zi.shape == (N, 2) for zi in z)
    assert np.abs(z[0] - z[1]).max() < 1e-3 and np.abs(z[0] - z[2]).max() < 1e-3
    assert _loss(runs[1]) == pytest.approx(_loss(runs[0]), rel=1e-4)
    assert _loss(runs[2]) == pytest.approx(_loss(runs[0]), rel=1e-4)


def test_uninvert_negates_the_data(sim):
    from cryo_napari.io.particles import load_particles
    from cryo_napari.methods.vae.data import VAEData

    pdata = load_particles(sim["star"])
    plain, inv = VAEData(pdata, D=12), VAEData(pdata, D=12, uninvert=True)
    for d in (plain, inv):
        for _ in d.prepare():
            pass
    assert plain.norm == pytest.approx(inv.norm)
    assert np.allclose(inv.values_of(np.arange(10)).numpy(), -plain.values_of(np.arange(10)).numpy(), atol=1e-6)


def test_uninvert_ind_and_downsample_on_the_cli(sim, tmp_path):
    ind = tmp_path / "ind.txt"
    np.savetxt(ind, [5, 1, 40, 3, 77, 60], fmt="%d")
    run = _train(tmp_path, "sub", sim["star"], "--ind", ind, "-D", "8", "--uninvert")
    from cryo_napari.methods.vae.eval import load_vae_run

    r = load_vae_run(run)
    assert r.z.shape == (6, 2) and r.D == 8 and r.apix == pytest.approx(12.0)
    assert r.config["uninvert"] is True and r.config["ind"].endswith("ind.txt")
    assert r.generate_volumes(r.z[:1]).shape == (1, 8, 8, 8)
    # the inverted stack trains to the same loss as the original without --uninvert
    flipped = tmp_path / "neg.mrcs"
    from cryo_napari.io.mrc import read_mrc, write_mrc

    imgs, apix = read_mrc(sim["stack"])
    write_mrc(flipped, -imgs, apix)
    a = _train(tmp_path, "pos", sim["stack"], "--poses", sim["poses"], "--ctf", sim["ctf"], "-D", "12")
    b = _train(tmp_path, "neg", flipped, "--poses", sim["poses"], "--ctf", sim["ctf"], "-D", "12", "--uninvert")
    assert np.allclose(np.load(a / "z.1.npy"), np.load(b / "z.1.npy"), atol=1e-5)
    assert _loss(b) == pytest.approx(_loss(a), rel=1e-5)


# -- real files from cryoDRGN's test data ----------------------------------------------------------

def test_real_stack_with_cryodrgn_pkls(fixtures_dir, tmp_path):
    real = fixtures_dir / "real-formats"
    ind = tmp_path / "ind.npy"
    np.save(ind, np.arange(0, 1000, 25))  # 40 of the 1000 toy projections
    run = _train(tmp_path, "toy", real / "toy_projections.mrcs", "--poses", real / "toy_rot_trans.pkl",
                 "--ctf", real / "test_ctf.pkl", "--ind", ind, "-D", "16")
    z = np.load(run / "z.1.npy")
    assert z.shape == (40, 2) and np.isfinite(z).all()
    # the same images through a .star that has no poses, poses from the pkl
    run2 = _train(tmp_path, "toy_star", real / "toy_projections.star", "--poses", real / "toy_rot_trans.pkl",
                  "--ind", ind, "-D", "16")
    assert np.load(run2 / "z.1.npy").shape == (40, 2)


def test_real_relion31_star(fixtures_dir, tmp_path):
    run = _train(tmp_path, "r31", fixtures_dir / "real-formats" / "relion31.star", "-D", "32")
    from cryo_napari.methods.vae.eval import load_vae_run

    r = load_vae_run(run)
    assert r.z.shape == (5, 2) and r.D == 32 and r.apix == pytest.approx(2.806 * 256 / 32, rel=1e-4)


@pytest.mark.parametrize("name", ["empiar_10076_7.star", "empiar_10076_7.cs"])
def test_real_files_without_poses_are_refused_in_one_line(fixtures_dir, tmp_path, capsys, name):
    rc = cli(["train-vae", str(fixtures_dir / "real-formats" / name), "-o", str(tmp_path / "r"), "-D", "32"])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "poses" in lines[0] and name in lines[0] and "Traceback" not in err
