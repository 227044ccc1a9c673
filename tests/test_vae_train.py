"""train-vae / eval-vol end to end on a tiny simulated dataset (D=16, 300 particles)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from cryo_napari.cli.main import main as cli
from cryo_napari.io.mrc import read_mrc

N = 300


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from cryo_napari.simulate.heterogeneity import discrete_states, synthetic_map
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    out = tmp_path_factory.mktemp("vae_data")
    maps, _, _ = discrete_states(synthetic_map(16, seed=3))
    paths = simulate_dataset(maps, out, SimulationParams(n_particles=N, snr=1.0, apix=6.0, seed=5))
    ind = np.random.default_rng(0).permutation(N)[:200]
    np.save(out / "ind.npy", ind)
    return paths, out / "ind.npy", ind


def train(star, run, *extra):
    small = ["--enc-dim", "64", "--dec-dim", "64", "--enc-layers", "2", "--dec-layers", "2", "--seed", "3"]
    assert cli(["train-vae", str(star), "-o", str(run), *small, *extra]) == 0


def test_train_writes_complete_epochs_in_input_order(dataset, tmp_path):
    paths, ind_file, ind = dataset
    run = tmp_path / "run"
    # z.N.npy is the end-of-epoch encoder's output for every particle (cryoDRGN's eval_z), so it
    # equals the saved model's encoding even when the model moves a lot within the epoch
    train(paths["star"], run, "-n", "2", "--ind", str(ind_file), "--zdim", "4", "--lr", "3e-3")
    for e in (1, 2):
        for name in (f"weights.{e}.pt", f"z.{e}.npy"):
            assert (run / name).exists() and (run / f"{name}.ok").exists()
    assert (run / "config.yaml").exists()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and all(m["images_per_s"] > 0 for m in metrics)
    z = np.load(run / "z.2.npy")
    assert z.shape == (200, 4) and z.dtype == np.float32

    from cryo_napari.io.particles import load_particles
    from cryo_napari.methods.vae.data import VAEData, encoder_input
    from cryo_napari.methods.vae.eval import load_vae_run

    r = load_vae_run(run)
    assert r.epoch == 2 and r.zdim == 4 and r.D == 16 and r.apix == pytest.approx(6.0)
    assert r.config["ind"].endswith("ind.npy")
    data = VAEData(load_particles(paths["star"], ind=ind), D=16)
    for _ in data.prepare():
        pass
    b = data.batch(np.arange(200))
    with torch.no_grad():
        mu, _ = r.model.encode(encoder_input(b["y"], b["ctf"], "fourier"))
    assert np.abs(mu.numpy() - z).max() < 1e-4
    # and not in any other order
    assert np.abs(mu.numpy()[::-1] - z).max() > 1e-3


def test_encoder_radius_feeds_the_encoder_only_low_frequencies(dataset, tmp_path):
    """--enc-radius R: the encoder reads the lattice points with |k| < R (its input width says so
    after reloading) and the saved z is that encoder's output; too small a radius is an error."""
    from cryo_napari.io.particles import load_particles
    from cryo_napari.methods.vae.data import VAEData, encoder_input
    from cryo_napari.methods.vae.eval import load_vae_run

    paths, ind_file, ind = dataset
    run = tmp_path / "run"
    train(paths["star"], run, "-n", "1", "--ind", str(ind_file), "--zdim", "2", "--lr", "1e-12", "--enc-radius", "4")
    r = load_vae_run(run)
    data = VAEData(load_particles(paths["star"], ind=ind), D=16)
    for _ in data.prepare():
        pass
    m = data.lattice.count_within(4)
    assert 2 < m < len(data.lattice) // 2 and r.model.arch["enc_in"] == 2 * m
    b = data.batch(np.arange(200))
    with torch.no_grad():
        mu, _ = r.model.encode(encoder_input(b["y"][:, :m], b["ctf"][:, :m], "fourier"))
    assert np.abs(mu.numpy() - np.load(run / "z.1.npy")).max() < 1e-4
    with pytest.raises(Exception, match="enc-radius"):
        from cryo_napari.jobs.protocol import run_to_end
        from cryo_napari.methods.vae.train import train_vae_job

        run_to_end(train_vae_job(dict(particles=paths["star"], outdir=tmp_path / "bad", epochs=1, enc_radius=0.5)))


def test_convergence_runs_every_k_epochs_without_changing_training(dataset, tmp_path):
    paths, ind_file, _ = dataset
    with_check, without = tmp_path / "with", tmp_path / "without"
    train(paths["star"], with_check, "-n", "3", "--ind", str(ind_file), "--zdim", "2", "--convergence-every", "2",
          "--convergence-embedding", "pca")
    train(paths["star"], without, "-n", "3", "--ind", str(ind_file), "--zdim", "2", "--convergence-every", "0")
    res = json.loads((with_check / "convergence" / "convergence.json").read_text())
    assert res["epochs"] == [1, 2] and res["reasoning"]
    assert (with_check / "convergence" / "maps.png").exists()
    assert not (without / "convergence").exists()
    # the check after epoch 2 leaves the training RNG alone: epoch 3 is identical
    assert np.array_equal(np.load(with_check / "z.3.npy"), np.load(without / "z.3.npy"))


def test_resume_matches_uninterrupted_run_and_skips_incomplete(dataset, tmp_path):
    paths, _, _ = dataset
    full, part, broken = tmp_path / "full", tmp_path / "part", tmp_path / "broken"
    train(paths["star"], full, "-n", "3")
    train(paths["star"], part, "-n", "2")
    train(paths["star"], part, "-n", "3", "--load", "latest")
    train(paths["star"], broken, "-n", "2")
    (broken / "weights.2.pt.ok").unlink()  # as if killed between the file and its marker
    train(paths["star"], broken, "-n", "3", "--load", "latest")
    a = torch.load(full / "weights.3.pt", weights_only=False)
    for run in (part, broken):
        b = torch.load(run / "weights.3.pt", weights_only=False)
        assert b["epoch"] == 3
        for k in a["model"]:
            assert torch.allclose(a["model"][k], b["model"][k], atol=1e-6), k
        assert np.allclose(np.load(full / "z.3.npy"), np.load(run / "z.3.npy"), atol=1e-6)
    epochs = [json.loads(line)["epoch"] for line in (broken / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 2, 3]  # epoch 2 was redone


def test_lr_schedule_follows_the_epoch_and_survives_resume(dataset, tmp_path):
    """cosine:E0 holds lr until epoch E0 then falls to lr/100 at the last epoch; a run resumed without
    repeating --lr/--lr-schedule continues the same schedule (identical weights to the uninterrupted run)."""
    import shutil

    from cryo_napari.methods.vae.train import lr_at

    cfg = {"epochs": 4, "lr_schedule": "cosine:2"}
    assert lr_at(cfg, 1e-3, 1.5) == 1e-3 and lr_at(cfg, 1e-3, 4.0) == pytest.approx(1e-5)
    assert lr_at(cfg, 1e-3, 3.0) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5)) and lr_at({"epochs": 4}, 2e-3, 3) == 2e-3
    paths, ind_file, _ = dataset
    full, part = tmp_path / "full", tmp_path / "part"
    train(paths["star"], full, "-n", "3", "--ind", str(ind_file), "--zdim", "2", "--lr", "3e-3",
          "--lr-schedule", "cosine:1", "--convergence-every", "0")
    lrs = [json.loads(line)["lr"] for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert lrs[0] == pytest.approx(3e-3) and lrs[0] > lrs[1] > lrs[2] > 3e-5
    shutil.copytree(full, part)
    for name in ("weights.3.pt", "weights.3.pt.ok", "z.3.npy", "z.3.npy.ok", "final.json"):
        (part / name).unlink()
    metrics = (part / "metrics.jsonl").read_text().splitlines()
    (part / "metrics.jsonl").write_text("\n".join(metrics[:2]) + "\n")
    train(paths["star"], part, "-n", "3", "--ind", str(ind_file), "--zdim", "2", "--load", "latest",
          "--convergence-every", "0")
    a, b = (torch.load(r / "weights.3.pt", weights_only=False) for r in (full, part))
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-6), k
    assert json.loads((part / "metrics.jsonl").read_text().splitlines()[-1])["lr"] == pytest.approx(lrs[2])


def test_eval_vol_writes_maps_with_voxel_size(dataset, tmp_path):
    paths, _, _ = dataset
    run = tmp_path / "run"
    train(paths["star"], run, "-n", "1", "--zdim", "2")
    out = tmp_path / "vols"
    assert cli(["eval-vol", str(run), "--particles", "0", "5", "-o", str(out)]) == 0
    for i in range(2):
        vol, apix = read_mrc(out / f"vol_{i:03d}.mrc")
        assert vol.shape == (16, 16, 16) and apix == pytest.approx(6.0, rel=1e-4)
    zf = tmp_path / "z.npy"
    np.save(zf, np.zeros((3, 2), np.float32))
    out2 = tmp_path / "vols2"
    assert cli(["eval-vol", str(run), "--z-file", str(zf), "-o", str(out2), "-D", "8", "--flip"]) == 0
    vols = sorted(out2.glob("vol_*.mrc"))
    assert len(vols) == 3
    vol, apix = read_mrc(vols[0])
    assert vol.shape == (8, 8, 8) and apix == pytest.approx(12.0, rel=1e-4)

    from cryo_napari.methods.vae.eval import load_vae_run

    r = load_vae_run(run)
    v = r.generate_volumes(np.zeros((2, 2)), D=8)
    assert v.shape == (2, 8, 8, 8) and v.dtype == np.float32
    assert np.allclose(read_mrc(vols[0])[0], r.generate_volumes(np.zeros(2), D=8, flip=True)[0], atol=1e-6)


@pytest.mark.parametrize("argv", [
    ["train-vae", "{data}/missing.star", "-o", "{tmp}/r"],
    ["train-vae", "{data}/particles.star", "-o", "{tmp}/r", "-D", "15"],
    ["eval-vol", "{tmp}", "--z", "0", "-o", "{tmp}/v"],
    ["train-vae", "{data}/particles.star", "-o", "{tmp}/r", "--lr-schedule", "cosine:x"],
])
def test_bad_input_exits_2_with_one_line(dataset, tmp_path, argv):
    data_dir = dataset[0]["star"].parent
    argv = [a.format(data=data_dir, tmp=tmp_path) for a in argv]
    p = subprocess.run([sys.executable, "-m", "cryo_napari.cli.main", *argv], capture_output=True, text=True,
                       env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in p.stderr


def test_lazy_and_downsampled_training(dataset, tmp_path):
    paths, _, _ = dataset
    mem, lazy = tmp_path / "mem", tmp_path / "lazy"
    train(paths["star"], mem, "-n", "1", "-D", "12")
    train(paths["star"], lazy, "-n", "1", "-D", "12", "--lazy")
    assert np.allclose(np.load(mem / "z.1.npy"), np.load(lazy / "z.1.npy"), atol=1e-5)
    loss = [json.loads((r / "metrics.jsonl").read_text())["loss"] for r in (mem, lazy)]
    assert loss[1] == pytest.approx(loss[0], rel=1e-5)  # same batches, same values, same loss
    from cryo_napari.methods.vae.eval import load_vae_run

    r = load_vae_run(lazy)
    assert r.D == 12 and r.apix == pytest.approx(8.0) and r.config["lazy"] is True
    assert r.generate_volumes(r.z[:1]).shape == (1, 12, 12, 12)
