"""train-vae under a real SIGKILL and under torch DDP (2 CPU processes, gloo), end to end."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from cryo_napari.cli.main import main as cli
from cryo_napari.jobs.rundir import RunDir

SMALL = ["--enc-dim", "32", "--dec-dim", "32", "--enc-layers", "2", "--dec-layers", "2", "--zdim", "3", "--seed", "1",
         "--convergence-embedding", "pca"]
N = 120


@pytest.fixture(scope="module")
def star(tmp_path_factory):
    from cryo_napari.simulate.heterogeneity import discrete_states, synthetic_map
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    maps, _, _ = discrete_states(synthetic_map(16, seed=3))
    out = tmp_path_factory.mktemp("vae_rel")
    return simulate_dataset(maps, out, SimulationParams(n_particles=N, snr=1.0, apix=6.0, seed=4))["star"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _check_run(run, epochs, zdim=3, n=N):
    """Every epoch complete and loadable, same shapes throughout, no temporary files, clean metrics."""
    from cryo_napari.methods.vae.eval import load_vae_run

    rd = RunDir(run)
    assert rd.complete_steps("weights", "pt") == list(range(1, epochs + 1))
    assert rd.complete_steps("z", "npy") == list(range(1, epochs + 1))
    ref = torch.load(run / "weights.1.pt", weights_only=False)["model"]
    for e in range(1, epochs + 1):
        state = torch.load(run / f"weights.{e}.pt", weights_only=False)
        assert state["epoch"] == e
        assert {k: v.shape for k, v in state["model"].items()} == {k: v.shape for k, v in ref.items()}
        z = np.load(run / f"z.{e}.npy")
        assert z.shape == (n, zdim) and z.dtype == np.float32 and np.isfinite(z).all()
        assert load_vae_run(run, e).epoch == e
    assert not [p.name for p in run.iterdir() if p.name.startswith(".tmp-")]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert {json.loads(ln)["epoch"] for ln in lines} == set(range(1, epochs + 1))  # every line parses
    assert json.loads((run / "final.json").read_text())["step"] == epochs


@pytest.mark.reliability
@pytest.mark.slow
def test_sigkill_during_training_then_load_latest(star, tmp_path):
    run, ref = tmp_path / "run", tmp_path / "ref"
    E = 6
    argv = ["train-vae", str(star), "-o", str(run), "-n", str(E), *SMALL]
    proc = subprocess.Popen([sys.executable, "-m", "cryo_napari.cli.main", *argv], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while not (run / "metrics.jsonl").exists():  # written last in an epoch
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "epoch 1 never completed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # somewhere in epoch 1's writes or in epoch 2+
    assert proc.wait(60) == -signal.SIGKILL
    proc.stderr.close()
    assert not (run / "final.json").exists() and not (run / f"weights.{E}.pt.ok").exists()
    # what a kill in the middle of a write leaves, whatever this kill hit: a temporary file, a torn line
    (run / ".tmp-weights.9.pt-dead.pt").write_bytes(b"\x00" * 100)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 9, "loss": 0.')
    assert cli([*argv, "--load", "latest"]) == 0
    _check_run(run, E)
    # and the resumed run is the uninterrupted one
    assert cli(["train-vae", str(star), "-o", str(ref), "-n", str(E), *SMALL]) == 0
    a = torch.load(ref / f"weights.{E}.pt", weights_only=False)["model"]
    b = torch.load(run / f"weights.{E}.pt", weights_only=False)["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert np.allclose(np.load(ref / f"z.{E}.npy"), np.load(run / f"z.{E}.npy"), atol=1e-6)


@pytest.mark.reliability
def test_resume_skips_epoch_with_missing_latents(star, tmp_path):
    """Killed between weights.N.pt and z.N.npy: epoch N is redone, so every epoch has its z."""
    run = tmp_path / "run"
    assert cli(["train-vae", str(star), "-o", str(run), "-n", "2", *SMALL]) == 0
    for name in ("z.2.npy", "z.2.npy.ok", "final.json"):
        (run / name).unlink()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n")
    assert cli(["train-vae", str(star), "-o", str(run), "-n", "3", *SMALL, "--load", "latest"]) == 0
    _check_run(run, 3)


@pytest.mark.slow
def test_ddp_two_cpu_processes_gloo(star, tmp_path):
    """torchrun, 2 processes, gloo: 91 particles (odd: one rank's shard is padded)."""
    ind = tmp_path / "ind.npy"
    n = 91
    np.save(ind, np.random.default_rng(1).permutation(N)[:n])
    one, two = tmp_path / "one", tmp_path / "two"
    # lr ~0 keeps the model fixed within the run, so each particle's latent can be recomputed
    common = [str(star), "--ind", str(ind), "-n", "2", *SMALL, "--lr", "1e-12"]
    assert cli(["train-vae", *common, "-o", str(one)]) == 0
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "cryo_napari.cli.main", "train-vae", *common, "-o", str(two)],
                       env=_env(), capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    _check_run(two, 2, n=n)
    _check_run(one, 2, n=n)

    from cryo_napari.io.particles import load_particles
    from cryo_napari.methods.vae.data import VAEData, encoder_input
    from cryo_napari.methods.vae.eval import load_vae_run

    r1, r2 = load_vae_run(one), load_vae_run(two)
    assert r2.config["world_size"] == 2 and r1.config["world_size"] == 1
    assert r2.z.shape == r1.z.shape
    data = VAEData(load_particles(star, ind=np.load(ind)), D=16)
    for _ in data.prepare():
        pass
    b = data.batch(np.arange(n))
    with torch.no_grad():
        mu, _ = r2.model.encode(encoder_input(b["y"], b["ctf"], "fourier"))
    # rows gathered from both ranks land in input order, the padded duplicate averaged, none missing
    assert np.abs(mu.numpy() - r2.z).max() < 1e-4
    assert np.abs(r1.z - r2.z).max() < 1e-4  # same seed, same initial model
    m1 = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    # the epoch loss averages over both ranks' images; equal up to the reparameterisation noise
    assert m2[-1]["mse"] == pytest.approx(m1[-1]["mse"], rel=0.05)
