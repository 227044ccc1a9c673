"""Flex latents: the gradient reaches z, the encoder learns a hinge from scratch, auto-decode still runs.

The learning test uses a tiny, high-SNR hinge (D=16, 6 Å/px, 400 particles, SNR 100, domain swung
0–40°), where the Bayes-optimal angle from the ground-truth maps reaches Spearman ρ ≈ 0.96 (see
docs/flex.md). Latents start random; the bar is |ρ| ≥ 0.8 after 12 epochs.
"""

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from cryo_napari.cli.main import main as cli
from cryo_napari.io.mrc import write_mrc
from cryo_napari.jobs.protocol import run_to_end

D = 16
N = 400


@pytest.fixture(scope="module")
def hinge(tmp_path_factory):
    from cryo_napari.simulate.heterogeneity import domain_motion_series, synthetic_map
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    out = tmp_path_factory.mktemp("hinge")
    maps, angles, _ = domain_motion_series(synthetic_map(D, seed=3), 20, 40.0)
    paths = simulate_dataset(maps, out / "sim", SimulationParams(n_particles=N, snr=100.0, apix=6.0, seed=1))
    write_mrc(out / "consensus.mrc", maps.mean(0), 6.0)
    assert cli(["flex", "prep", str(paths["star"]), "-o", str(out / "prep"), "--train-box", str(D),
                "--map", str(out / "consensus.mrc")]) == 0
    assert cli(["flex", "mesh", str(out / "consensus.mrc"), "-o", str(out / "mesh.pkl"), "--cells", "4"]) == 0
    true_angle = angles[np.load(paths["truth"])["states"]]
    return out, true_angle


def test_latent_gradient_matches_finite_difference(hinge):
    from cryo_napari.methods.flex.model import FlexModel, fourier_loss_mask
    from cryo_napari.methods.flex.train import FlexData, image_loss, load_mesh

    out, _ = hinge
    data = FlexData(out / "prep")
    torch.manual_seed(0)
    model = FlexModel(load_mesh(str(out / "mesh.pkl")), D, len(data), K=1, hidden=16, layers=2, V0=data.consensus)
    with torch.no_grad():
        model.generator.head.weight.normal_(0, 0.05)  # a generator with a clear z-dependence
    y, R, ctf = data.batch(torch.tensor([3]))
    kmask = fourier_loss_mask(D, 0.8 * D / 2)

    def loss(z):
        return image_loss(model, y, R, ctf, model.displacements(z), data.sigma, kmask).sum()

    z = torch.tensor([[0.3]], requires_grad=True)
    loss(z).backward()
    h = 1e-3
    with torch.no_grad():
        num = (loss(torch.tensor([[0.3 + h]])) - loss(torch.tensor([[0.3 - h]]))) / (2 * h)
    assert abs(z.grad.item()) > 1e-3
    assert z.grad.item() == pytest.approx(num.item(), rel=0.02)


def test_encoder_latent_learns_hinge_angle_from_scratch(hinge, tmp_path):
    from cryo_napari.methods.flex.train import flex_train_job, load_trained

    out, true_angle = hinge
    res = run_to_end(flex_train_job(dict(prep=out / "prep", mesh=out / "mesh.pkl", outdir=tmp_path / "run", K=1,
                                         hidden=16, layers=2, epochs=12, batch_size=16)))
    z1 = np.load(tmp_path / "run" / "z.1.npy")[:, 0]
    z = np.load(res["z"])[:, 0]
    assert abs(spearmanr(z1, true_angle).statistic) < 0.5  # it starts far from the answer
    assert abs(spearmanr(z, true_angle).statistic) >= 0.8
    model, cfg, _ = load_trained(tmp_path / "run")
    assert cfg["latent"] == "encoder" and model.encoder is not None
    from cryo_napari.methods.flex.train import FlexData

    np.testing.assert_allclose(model.all_z(FlexData(out / "prep").images)[:, 0], z, atol=1e-5)  # saved = encoder


def test_autodecode_option_trains_and_resumes_in_its_mode(hinge, tmp_path):
    out, _ = hinge
    base = ["flex", "train", str(out / "prep"), "--mesh", str(out / "mesh.pkl"), "-o", str(tmp_path / "run"),
            "-K", "1", "--hidden", "8", "--layers", "1", "--batch-size", "100", "--epochs", "1"]
    assert cli([*base, "--latent", "autodecode"]) == 0
    assert cli([*base, "--extra-epochs", "1", "--load", "latest"]) == 0  # default is encoder; the run's mode wins
    from cryo_napari.methods.flex.train import load_trained

    model, cfg, step = load_trained(tmp_path / "run")
    assert step == 2 and cfg["latent"] == "autodecode" and model.encoder is None
    assert np.load(tmp_path / "run" / "z.2.npy").shape == (N, 1)
    with pytest.raises(SystemExit):  # argparse choices
        cli([*base, "-o", str(tmp_path / "bad"), "--latent", "nope"])


def test_encoder_box_crops_the_encoder_input_and_reloads(hinge, tmp_path, capsys):
    """``--enc-box`` low-passes what the encoder sees (its first layer takes box² inputs); the
    run reloads with the same encoder (saved latents = encoder of the images); a box that is odd
    or larger than the training box is one clear error and leaves no run behind."""
    from cryo_napari.methods.flex.train import FlexData, load_trained

    out, _ = hinge
    base = ["flex", "train", str(out / "prep"), "--mesh", str(out / "mesh.pkl"), "-K", "1", "--hidden", "8",
            "--layers", "1", "--batch-size", "100", "--epochs", "1"]
    assert cli([*base, "-o", str(tmp_path / "run"), "--enc-box", "8"]) == 0
    model, cfg, step = load_trained(tmp_path / "run")
    assert cfg["enc_box"] == 8 and model.encoder.net[1].in_features == 64
    images = FlexData(out / "prep").images
    np.testing.assert_allclose(model.all_z(images), np.load(tmp_path / "run" / f"z.{step}.npy"), atol=1e-5)
    # the encoder's input is the cropped image: a change above the crop's band does not move z
    high = torch.zeros(2, D, D)
    high[:, ::2, ::2] = 1.0  # minus its mean: only Nyquist components, all outside an 8-px crop
    with torch.no_grad():
        z0 = model.encoder(images[:2])
        z1 = model.encoder(images[:2] + 5.0 * (high - high.mean()))
    np.testing.assert_allclose(z0.numpy(), z1.numpy(), atol=1e-4)
    for bad in ("7", "32"):
        capsys.readouterr()
        assert cli([*base, "-o", str(tmp_path / f"bad{bad}"), "--enc-box", bad]) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--enc-box" in err[0] and "even box" in err[0]
        assert not list((tmp_path / f"bad{bad}").glob("weights.*.pt"))
