"""Latent refinement by the basis decoder's likelihood (``cryo-napari refine-z``)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from cryo_napari.cli.main import main as cli
from cryo_napari.jobs.protocol import run_to_end
from cryo_napari.methods.vae.basis import init_mean_from_data
from cryo_napari.methods.vae.data import VAEData, encoder_width
from cryo_napari.methods.vae.model import build_vae
from cryo_napari.methods.vae.refine import refine_latents_job, slice_terms
from cryo_napari.simulate.heterogeneity import discrete_states, synthetic_map

D = 16


@pytest.fixture(scope="module")
def two_states(tmp_path_factory):
    """600 particles at SNR 1 of two states (full map, domain removed) with a basis decoder whose
    weight w(z) = z is exact: z = 0 gives the full map, z = 1 the map without the domain."""
    from cryo_napari.io.particles import load_particles
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    maps, _, _ = discrete_states(synthetic_map(D, seed=3))
    maps = maps[[0, 2]]
    out = tmp_path_factory.mktemp("refine")
    paths = simulate_dataset(maps, out, SimulationParams(n_particles=600, snr=1.0, apix=6.0, seed=4))
    states = np.load(out / "ground_truth.npz")["states"]
    data = VAEData(load_particles(paths["star"]), D=D)
    for _ in data.prepare():
        pass
    model = build_vae(D, encoder_width(len(data.lattice), "fourier"), zdim=1, enc_layers=1, enc_dim=8,
                      dec_layers=1, dec_dim=8, decoder="basis", n_basis=1)
    dec = model.decoder
    dec.smooth = 0.0
    init_mean_from_data(dec, data, n_max=600)
    with torch.no_grad():
        # the back-projection is of the population mean; fit its units to the true mean map
        mean_true = torch.as_tensor(maps.mean(0)) * dec.mask
        alpha = float((dec.volumes[0] * dec.mask * dec.scale * mean_true).sum() / mean_true.square().sum())
        dec.volumes[0] = alpha * torch.as_tensor(maps[0]) / dec.scale
        dec.volumes[1] = alpha * torch.as_tensor(maps[1] - maps[0]) / dec.scale
        dec.mix = torch.nn.Linear(1, 1)
        dec.mix.weight.fill_(1.0)
        dec.mix.bias.zero_()
    model.lattice_k = data.lattice.k
    return SimpleNamespace(data=data, model=model, states=states, path=out)


def _ari(z, truth, k=2):
    return adjusted_rand_score(truth, KMeans(k, n_init=10, random_state=0).fit_predict(z))


def test_quadratic_form_is_the_weighted_image_misfit(two_states):
    model, data = two_states.model, two_states.data
    batch = data.batch(np.arange(5))
    inv_var = torch.rand(len(data.lattice)) + 0.5
    with torch.no_grad():
        g, H, yy, _, _ = slice_terms(model, batch, model.decoder.half_transforms(), inv_var)
        z = torch.tensor([[0.0], [0.4], [1.0]])
        W = model.decoder.weights(z)
        quad = yy[:, None] - 2 * g @ W.T + torch.einsum("cn,bnk,ck->bc", W, H, W)
        for c in range(3):
            pred = model.decode_slices(batch["rot"], model.lattice_k, z[c].expand(5, 1)) * batch["ctf"][..., None]
            direct = ((pred - batch["y"]).square().sum(-1) * inv_var).sum(-1)
            assert torch.allclose(quad[:, c], direct, rtol=1e-4)


def test_refinement_recovers_the_states_from_a_poor_encoder(two_states):
    rng = np.random.default_rng(0)
    truth = two_states.states
    # an "encoder" that places each particle at its state plus large noise: k-means mixes them
    z_enc = (truth[:, None] + rng.normal(0, 0.7, (len(truth), 1))).astype(np.float32)
    run = SimpleNamespace(model=two_states.model, z=z_enc, config={"decoder": "basis"}, path=two_states.path)
    res = run_to_end(refine_latents_job(run, two_states.data, n_candidates=200, seed=0))
    z_ref = res["z"]
    assert z_ref.shape == z_enc.shape and z_ref.dtype == np.float32 and np.isfinite(z_ref).all()
    before, after = _ari(z_enc, truth), _ari(z_ref, truth)
    # the Bayes classifier that knows the two states exactly (z = 0 or 1): what no latent can beat
    with torch.no_grad():
        model, data = two_states.model, two_states.data
        W = model.decoder.weights(torch.tensor([[0.0], [1.0]]))
        r = torch.cat([yy[:, None] - 2 * g @ W.T + torch.einsum("cn,bnk,ck->bc", W, H, W) for g, H, yy, _, _ in (
            slice_terms(model, b, model.decoder.half_transforms(), torch.ones(len(data.lattice)))
            for b in data.iter_batches(np.arange(data.N), 200))])
    oracle = adjusted_rand_score(truth, r.argmin(1).numpy())
    assert before < 0.5 and oracle > 0.8 and after > 0.95 * oracle, (before, after, oracle)
    s2 = np.array(res["sigma2_per_shell"])
    assert len(s2) == D // 2 + 1 and (s2 > 0).all() and np.isfinite(s2).all()
    assert 1 < res["effective_candidates"] < 200 and 0 < res["median_max_posterior"] < 1


def test_refine_z_cli_writes_refined_latents_that_analysis_reads(tmp_path):
    from cryo_napari.analysis.runs import load_latent_run
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    maps, _, _ = discrete_states(synthetic_map(D, seed=3))
    paths = simulate_dataset(maps, tmp_path / "data", SimulationParams(n_particles=160, snr=1.0, apix=6.0, seed=5))
    small = ["--enc-dim", "16", "--dec-dim", "16", "--enc-layers", "1", "--dec-layers", "1", "--zdim", "2",
             "--decoder", "basis", "--n-basis", "3", "-b", "32", "--convergence-every", "0", "-n", "1"]
    run = tmp_path / "run"
    assert cli(["train-vae", str(paths["star"]), "-o", str(run), *small]) == 0
    with pytest.raises(Exception, match="refine-z"):  # not refined yet: the error names the command
        load_latent_run(run, 1, refined=True)
    assert cli(["refine-z", str(run), "--candidates", "50"]) == 0
    assert (run / "z.1.refined.npy.ok").exists() and (run / "refine_z.1.json").exists()
    import json

    assert json.loads((run / "refine_z.1.json").read_text())["working_box"] == 16
    z_full = np.load(run / "z.1.refined.npy")
    assert cli(["refine-z", str(run), "--candidates", "50", "--box", "7"]) != 0  # odd box: refused, file kept
    assert np.array_equal(np.load(run / "z.1.refined.npy"), z_full)
    assert cli(["refine-z", str(run), "--candidates", "50", "--box", "8"]) == 0
    assert json.loads((run / "refine_z.1.json").read_text())["working_box"] == 8
    assert not np.allclose(np.load(run / "z.1.refined.npy"), z_full)  # fewer frequencies, other posteriors
    r = load_latent_run(run, 1, refined=True)
    enc = load_latent_run(run, 1)
    assert r.z.shape == enc.z.shape == (160, 2) and not np.allclose(r.z, enc.z)
    # the explorer dock's loader too
    from cryo_napari.napari._latent_explorer import load_run

    assert np.array_equal(load_run(run, 1, refined=True)[1], r.z)
    # the analysis commands take --refined
    assert cli(["analyze", str(run), "--refined", "--ksample", "3", "--pc", "1", "--skip-umap", "-o",
                str(tmp_path / "an")]) == 0


def test_refine_z_basis_method_refuses_an_mlp_run_in_one_line(vae_run, capsys):
    assert cli(["refine-z", str(vae_run), "--method", "basis"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(vae_run) in err[0] and "--decoder basis" in err[0]
    assert not list(vae_run.glob("*.refined.npy"))


def test_refine_z_on_a_missing_run_is_one_line(tmp_path, capsys):
    assert cli(["refine-z", str(tmp_path / "nope")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]
