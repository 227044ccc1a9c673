"""The basis decoder (``train-vae --decoder basis``): slices, generated maps, init, training."""

import numpy as np
import pytest
import torch

from cryo_napari.cli.main import main as cli
from cryo_napari.geometry.fourier import _sample_trilinear, fft_centered, ifft_centered, volume_to_fourier
from cryo_napari.geometry.fsc import fsc, fsc_auc
from cryo_napari.geometry.masks import soft_spherical_mask_3d
from cryo_napari.methods.vae.basis import BasisDecoder, init_mean_from_data
from cryo_napari.methods.vae.model import build_vae, generate_volume_ft
from cryo_napari.simulate.heterogeneity import discrete_states, synthetic_map


def _rotations(n, seed=0):
    from scipy.spatial.transform import Rotation

    return torch.as_tensor(Rotation.random(n, random_state=seed).as_matrix(), dtype=torch.float32)


def _slice_coords(D, rot):
    k = torch.stack(torch.meshgrid(torch.arange(-D // 2 + 1, D // 2.0), torch.arange(-D // 2 + 1, D // 2.0),
                                   indexing="xy"), -1).reshape(-1, 2)
    k = k[k.norm(dim=-1) < D / 2]
    k3 = torch.cat([k, torch.zeros(len(k), 1)], -1) / D
    return torch.einsum("mi,bij->bmj", k3, rot)


@pytest.mark.parametrize("pad", [1, 2])
def test_slices_are_trilinear_samples_of_the_masked_volume_transform(pad):
    D = 16
    vol = torch.as_tensor(synthetic_map(D, seed=3), dtype=torch.float32)
    dec = BasisDecoder(D, 2, n_basis=2, nlayers=1, hidden=8, pad=pad, smooth=0)
    with torch.no_grad():
        dec.volumes.zero_()
        dec.volumes[0] = vol
        dec.volumes[2] = -0.5 * vol  # mixed with weight w_2(z)
    coords = _slice_coords(D, _rotations(4))
    z = torch.randn(4, 2)
    w = dec.weights(z)
    got = dec(coords, z)
    ref = _sample_trilinear(volume_to_fourier(vol * dec.mask, pad), coords * D * pad)  # (4, M) complex
    ref = ref * (1 - 0.5 * w[:, 2:3])
    got_c = torch.complex(got[..., 0], got[..., 1])
    # the reference reads zeros beyond the last plane; the decoder wraps to the −P/2 plane there
    inner = (coords * D * pad).abs().amax(-1) < D * pad / 2 - 1
    assert (got_c - ref)[inner].abs().max() < 1e-4 * ref.abs().max()
    assert inner.float().mean() > 0.7
    # Friedel: the value at −k is the conjugate of the value at k
    minus = dec(-coords, z)
    assert torch.allclose(minus[..., 0], got[..., 0], atol=1e-3) and torch.allclose(minus[..., 1], -got[..., 1], atol=1e-3)


@pytest.mark.parametrize("pad", [1, 2])
def test_generated_map_reproduces_the_slices_the_decoder_was_trained_on(pad):
    # with blurred differences: the map from volume() (minus its gridding correction), sliced the
    # same way, gives the decoder's slice values
    D = 16
    dec = BasisDecoder(D, 2, n_basis=2, nlayers=1, hidden=8, pad=pad, smooth=1.0)
    with torch.no_grad():
        # support well inside the box, so the blurred tails stay inside it (volume() crops to D)
        inner_sphere = torch.as_tensor(soft_spherical_mask_3d(D, D / 4 - 1, 1.0), dtype=torch.float32)
        dec.volumes.copy_(torch.randn(3, D, D, D) * inner_sphere)
        dec.mix[-1].weight.normal_()
    z = torch.randn(1, 2)
    coords = _slice_coords(D, _rotations(3))
    got = dec(coords, z.expand(3, -1))
    r = (torch.arange(D, dtype=torch.float32) - D // 2) / (pad * D)
    s = torch.sinc(r) ** 2
    vol = dec.volume(z[0]) / (s[:, None, None] * s[None, :, None] * s[None, None, :])
    ref = _sample_trilinear(volume_to_fourier(vol, pad), coords * D * pad)
    inner = (coords * D * pad).abs().amax(-1) < D * pad / 2 - 1
    err = (torch.complex(got[..., 0], got[..., 1]) - ref)[inner].abs().max()
    assert err < 2e-3 * ref.abs().max()
    # and the blur acts: without it the differences would add more high-frequency power
    sharp = BasisDecoder(D, 2, n_basis=2, nlayers=1, hidden=8, pad=pad, smooth=0)
    sharp.load_state_dict(dec.state_dict())
    hi = coords.norm(dim=-1) > 0.3
    assert dec(coords, z.expand(3, -1))[hi].abs().mean() < sharp(coords, z.expand(3, -1))[hi].abs().mean()


def test_generated_map_is_the_mixed_volume_and_crops_to_a_preview():
    D = 16
    model = build_vae(D, 10, zdim=3, enc_layers=1, enc_dim=8, dec_layers=1, dec_dim=8, decoder="basis", n_basis=4)
    z = torch.tensor([0.3, -1.0, 0.5])
    ft = generate_volume_ft(model, z, D)
    vol = ifft_centered(ft, 3).real
    ref = fft_centered(model.decoder.volume(z).to(torch.complex64), 3)
    k = torch.arange(D) - D // 2
    r = (k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2).sqrt()
    assert torch.allclose(ft, torch.where(r <= D / 2, ref, 0), atol=1e-5 * float(ref.abs().max()))
    assert (ft[r > D / 2] == 0).all()
    small = generate_volume_ft(model, z, 8)
    assert small.shape == (8, 8, 8) and torch.allclose(small, ft[4:12, 4:12, 4:12])
    # the map depends on z through the mixing weights only
    assert not torch.allclose(vol, ifft_centered(generate_volume_ft(model, -z, D), 3).real)


def test_mean_volume_starts_as_the_back_projection(tmp_path):
    from cryo_napari.io.particles import load_particles
    from cryo_napari.methods.vae.data import VAEData
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    D = 16
    truth = synthetic_map(D, seed=3)
    paths = simulate_dataset(truth[None], tmp_path, SimulationParams(n_particles=400, snr=1.0, apix=6.0, seed=2))
    data = VAEData(load_particles(paths["star"]), D=D)
    for _ in data.prepare():
        pass
    dec = BasisDecoder(D, 2, n_basis=2, nlayers=1, hidden=8)
    before = fsc_auc(fsc(dec.volume(None).numpy(), truth))
    info = init_mean_from_data(dec, data)
    after = fsc_auc(fsc(dec.volume(None).numpy(), truth))
    assert info["n"] == 400 and info["scale"] > 0
    assert before < 0.1 < 0.3 < after  # AUC over [0, 0.5]: 0.5 is a perfect map


def test_basis_training_end_to_end_resumes_and_evaluates(tmp_path):
    from cryo_napari.methods.vae.eval import load_vae_run
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    maps, _, _ = discrete_states(synthetic_map(16, seed=3))
    paths = simulate_dataset(maps, tmp_path / "data", SimulationParams(n_particles=200, snr=1.0, apix=6.0, seed=5))
    small = ["--enc-dim", "32", "--dec-dim", "16", "--enc-layers", "1", "--dec-layers", "1", "--zdim", "2",
             "--decoder", "basis", "--n-basis", "3", "-b", "32", "--lr", "3e-3", "--convergence-every", "0"]
    run = tmp_path / "run"
    assert cli(["train-vae", str(paths["star"]), "-o", str(run), *small, "-n", "1"]) == 0
    assert cli(["train-vae", str(paths["star"]), "-o", str(run), *small, "-n", "2", "--load", "latest"]) == 0
    r = load_vae_run(run)
    assert r.epoch == 2 and r.model.arch["decoder"] == "basis" and r.model.arch["n_basis"] == 3
    assert r.z.shape == (200, 2) and np.isfinite(r.z).all()
    vols = r.generate_volumes(r.z[:2])
    assert vols.shape == (2, 16, 16, 16) and np.isfinite(vols).all()
    out = tmp_path / "vols"
    assert cli(["eval-vol", str(run), "--particles", "0", "1", "-o", str(out)]) == 0
    assert len(list(out.glob("*.mrc"))) == 2
    # the maps resemble the truth: the mean volume came from the data and training kept it
    assert fsc_auc(fsc(vols[0], maps[0])) > 0.3
