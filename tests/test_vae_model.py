"""VAE model pieces: positional encodings, Friedel symmetry, loss representations, generation."""

import numpy as np
import pytest
import torch

from cryo_napari.geometry.fourier import ifft_centered
from cryo_napari.methods.vae.data import HalfLattice, VAEData, encoder_input, encoder_width, hartley_full
from cryo_napari.methods.vae.model import Decoder, PositionalEncoding, build_vae, generate_volume_ft
from cryo_napari.methods.vae.train import slice_loss, step_loss


@pytest.mark.parametrize("pe_type", ["gaussian", "geom_lowf"])
def test_positional_encoding_shapes_and_frequencies(pe_type):
    pe = PositionalEncoding(16, pe_type)
    x = torch.rand(5, 7, 3) - 0.5
    out = pe(x)
    assert out.shape == (5, 7, 6 * 8)
    assert torch.allclose(out[..., :24] ** 2 + out[..., 24:] ** 2, torch.ones(5, 7, 24), atol=1e-5)
    if pe_type == "geom_lowf":  # per-axis geometric frequencies D/2 … 1
        f = pe.freqs[:8, 0]
        assert f[0] == pytest.approx(8.0) and f[-1] == pytest.approx(1.0)
        assert torch.all(pe.freqs[:8, 1:] == 0)
    else:  # N(0, 0.5²)·D/2 random frequencies, fixed by the seed
        assert pe.freqs.std().item() == pytest.approx(4.0, rel=0.35)
        assert torch.equal(pe.freqs, PositionalEncoding(16, pe_type).freqs)
    with pytest.raises(ValueError):
        PositionalEncoding(16, "linear")


def test_decoder_output_is_friedel_symmetric():
    torch.manual_seed(0)
    dec = Decoder(16, zdim=4, nlayers=2, hidden=32)
    k = torch.rand(3, 50, 3) - 0.5
    z = torch.randn(3, 4)
    a, b = dec(k, z), dec(-k, z)
    assert a.shape == (3, 50, 2)
    assert torch.allclose(a[..., 0], b[..., 0]) and torch.allclose(a[..., 1], -b[..., 1])
    # the latent changes the output
    assert not torch.allclose(dec(k, z + 1.0), a)


def test_half_lattice_covers_the_disc_once():
    lat = HalfLattice(16)
    k = lat.k
    assert lat.radius[0] == 0 and torch.all(lat.radius[1:] >= lat.radius[:-1])
    full = torch.cat([k, -k[1:]])
    assert len(torch.unique(full, dim=0)) == len(full) == lat.n_full
    g = torch.stack(torch.meshgrid(torch.arange(16) - 8, torch.arange(16) - 8, indexing="ij"), -1).reshape(-1, 2)
    assert lat.n_full == int((g.float().norm(dim=-1) < 8).sum())
    assert lat.count_within(4) == int((lat.radius < 4).sum())


def test_fourier_and_hartley_losses_agree():
    """Same decoder, same data: the Friedel-half complex MSE equals the full-lattice Hartley MSE."""
    torch.manual_seed(1)
    lat = HalfLattice(16)
    M = len(lat)
    model = build_vae(16, encoder_width(M, "fourier"), zdim=4, enc_layers=1, enc_dim=32, dec_layers=2, dec_dim=32)
    model.lattice_k, model.lattice_w = lat.k, lat.weight
    y = torch.randn(6, M, 2)
    y[:, 0, 1] = 0  # DC is real
    ctf = torch.rand(6, M) - 0.3
    rot = torch.as_tensor(np.linalg.qr(np.random.default_rng(0).normal(size=(6, 3, 3)))[0], dtype=torch.float32)
    z = torch.randn(6, 4)
    for m in (M, lat.count_within(5)):
        lf = slice_loss(model, y, ctf, rot, z, m, "fourier")
        lh = slice_loss(model, y, ctf, rot, z, m, "hartley")
        # they differ only at DC: Fourier fits the real part a, Hartley fits a − b
        ab = model.decoder(torch.zeros(6, 1, 3), z)[:, 0] * ctf[:, :1]
        d_re = ab[:, 0] - y[:, 0, 0]
        dc_diff = (d_re.square() - (d_re - ab[:, 1]).square()).mean() / (2 * m - 1)
        assert lf.item() == pytest.approx(lh.item() + dc_diff.item(), rel=1e-4)
    # Hartley values of the full lattice keep all the information of the complex half
    h = hartley_full(y)
    assert h.shape == (6, 2 * M - 1)
    assert torch.allclose((h[:, 1:M] + h[:, M:]) / 2, y[:, 1:, 0], atol=1e-6)
    assert encoder_input(y, ctf, "hartley").shape == (6, encoder_width(M, "hartley"))


def test_generated_volume_is_hermitian_and_shaped():
    model = build_vae(16, 10, zdim=3, enc_layers=1, enc_dim=16, dec_layers=1, dec_dim=16)
    ft = generate_volume_ft(model, torch.randn(3), 12)
    assert ft.shape == (12, 12, 12)
    inner = ft[1:, 1:, 1:]  # indices 1..11 ↔ k = -5..5: every point has its Friedel mate
    mate = torch.flip(inner, dims=(0, 1, 2)).conj()
    inner, mate = inner.clone(), mate.clone()
    inner[5, 5, 5] = mate[5, 5, 5] = 0  # DC: only its real part is used
    assert torch.allclose(inner, mate, atol=1e-6)
def test_loss_decreases_on_tiny_dataset(tmp_path, small_map):
    from cryo_napari.geometry.fourier import fourier_crop_3d
    from cryo_napari.io.particles import load_particles
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    vol = fourier_crop_3d(torch.as_tensor(small_map), 16).numpy()
    paths = simulate_dataset(vol, tmp_path, SimulationParams(n_particles=128, snr=10.0, apix=6.0, seed=2))
    data = VAEData(load_particles(paths["star"]), D=16)
    for _ in data.prepare():
        pass
    torch.manual_seed(0)
    lat = data.lattice
    model = build_vae(16, encoder_width(len(lat), "fourier"), zdim=2, enc_layers=2, enc_dim=64, dec_layers=2, dec_dim=64)
    model.lattice_k, model.lattice_w = lat.k, lat.weight
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for it in range(40):
        batch = data.batch(np.arange(32 * (it % 4), 32 * (it % 4 + 1)))
        mse, kl, _ = step_loss(model, batch, len(lat), "fourier")
        loss = mse + 0.5 * kl / lat.n_full
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(mse.item())
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])
