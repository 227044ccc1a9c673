"""`flex train` killed with SIGKILL mid-run: the last complete checkpoint loads, generate works on
the partial run, and `--load latest` finishes the schedule with every epoch's outputs complete."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from cryo_napari.cli.main import main as cli
from cryo_napari.jobs.rundir import RunDir

pytestmark = pytest.mark.reliability

N, D = 120, 16
E = 12  # epochs: enough that the kill after epoch 1 cannot miss the run on a fast, idle machine


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    from cryo_napari.io.mrc import write_mrc
    from cryo_napari.simulate.heterogeneity import domain_motion_series, synthetic_map
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    out = tmp_path_factory.mktemp("flexkill")
    maps, _, _ = domain_motion_series(synthetic_map(D, seed=3), 5, 15.0)
    paths = simulate_dataset(maps, out / "sim", SimulationParams(n_particles=N, snr=1.0, apix=6.0, seed=1))
    write_mrc(out / "consensus.mrc", maps.mean(0), 6.0)
    assert cli(["flex", "prep", str(paths["star"]), "-o", str(out / "prep"), "--train-box", str(D),
                "--map", str(out / "consensus.mrc")]) == 0
    assert cli(["flex", "mesh", str(out / "consensus.mrc"), "-o", str(out / "mesh.pkl"), "--cells", "4"]) == 0
    return out


def test_sigkill_during_training_then_resume(prep, tmp_path):
    run = tmp_path / "run"
    args = ["flex", "train", str(prep / "prep"), "--mesh", str(prep / "mesh.pkl"), "-o", str(run),
            "--hidden", "16", "--layers", "2", "--batch-size", "20", "--epochs", str(E)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "stderr.txt", "w")  # a file, not a pipe: tqdm would fill a pipe and block
    proc = subprocess.Popen([sys.executable, "-m", "cryo_napari.cli.main", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=log)
    try:
        t0 = time.time()
        while not (run / "weights.1.pt.ok").exists():
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-2000:]
            assert time.time() - t0 < 120, "no checkpoint within 120 s"
            time.sleep(0.02)
        time.sleep(0.05)  # inside epoch 2 (or writing its files)
        assert proc.poll() is None, "training finished before it could be killed"
        proc.kill()  # SIGKILL: no cleanup runs
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    rd = RunDir(run)
    done = rd.complete_steps("weights", "pt")
    assert done and done == list(range(1, done[-1] + 1)) and done[-1] < E
    # the partial run is usable: generate from its latest complete checkpoint
    assert cli(["flex", "generate", str(run), "-o", str(tmp_path / "gen"), "--frames", "3"]) == 0
    assert np.load(tmp_path / "gen" / "axis1" / "series.npy").shape == (3, D, D, D)
    # resume finishes the schedule
    assert cli([*args, "--load", "latest"]) == 0
    assert rd.complete_steps("weights", "pt") == list(range(1, E + 1))
    assert rd.complete_steps("z", "npy") == list(range(1, E + 1))
    epochs = [m["epoch"] for m in rd.read_metrics()]
    assert epochs[-1] == E and sorted(set(epochs)) == epochs  # no epoch logged twice
    assert not [p for p in run.iterdir() if p.name.startswith(".tmp-")]
    z = np.load(run / f"z.{E}.npy")
    assert z.shape == (N, 2) and np.isfinite(z).all()
