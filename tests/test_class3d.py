"""3D classification without alignment: accuracy, stopping rules, outputs, diagnostics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from cryo_napari.jobs.protocol import Log, Metric, run_to_end
from cryo_napari.jobs.rundir import RunDir
from cryo_napari.methods.class3d import diagnostics as dg
from cryo_napari.methods.class3d.em import tempered_posteriors
from cryo_napari.methods.class3d.job import Class3DConfig, class3d_job, similarity_at
from cryo_napari.methods.class3d.outputs import complete_iterations, load_iteration


@pytest.fixture(scope="module")
def discrete(tmp_path_factory):
    """1500 particles, D=32, SNR 1, three states (full / domain swung / domain removed)."""
    from cryo_napari.simulate.heterogeneity import discrete_states, synthetic_map
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    out = tmp_path_factory.mktemp("c3d_data")
    maps, _, _ = discrete_states(synthetic_map(32))
    paths = simulate_dataset(maps, out, SimulationParams(n_particles=1500, snr=1.0, seed=0))
    return paths


FAST = dict(K=3, target_res=6.0, oem_batch_per_class=100, anneal_end=3, max_fem=12)


def run_job(particles, outdir, **kw):
    events = []
    job = class3d_job(Class3DConfig(particles=str(particles), outdir=str(outdir), **{**FAST, **kw}))
    while True:
        try:
            events.append(next(job))
        except StopIteration as stop:
            return stop.value, events


@pytest.fixture(scope="module")
def k3_run(discrete, tmp_path_factory):
    out = tmp_path_factory.mktemp("c3d_run")
    res, events = run_job(discrete["star"], out)
    return res, events, out


def test_k3_recovers_states_and_stops_by_switches(discrete, k3_run):
    from sklearn.metrics import adjusted_rand_score

    res, events, out = k3_run
    truth = np.load(discrete["truth"])["states"]
    assert adjusted_rand_score(truth, res["labels"]) >= 0.9
    assert res["stop_reason"] == "switch"
    assert res["step"] < FAST["max_fem"]
    assert any(isinstance(e, Log) and "converged: class switches" in e.text for e in events)
    assert {e.name for e in events if isinstance(e, Metric)} >= {"switch_pct", "rms_change", "mean_ess", "mean_kl"}


def test_every_iteration_complete_and_matches_metrics(discrete, k3_run):
    res, _, out = k3_run
    steps = complete_iterations(out)
    assert steps == list(range(1, res["step"] + 1))
    metrics = [m for m in RunDir(out).read_metrics() if m.get("phase") == "fem"]
    assert [m["iteration"] for m in metrics] == steps
    for m in metrics:
        it = load_iteration(out, m["iteration"])
        assert it["maps"].shape[0] == 3
        assert it["posterior"].shape == (1500, 3)
        np.testing.assert_allclose(it["posterior"].sum(1), 1, atol=1e-4)
        sizes = np.bincount(it["labels"], minlength=3).tolist()
        assert sizes == m["class_sizes"] == it["metrics"]["class_sizes"]
        assert sizes == sorted(sizes, reverse=True)  # ranked by size
        assert (it["posterior"].argmax(1) == it["labels"]).all()
        np.testing.assert_allclose(it["ess"].mean(), m["mean_ess"], rtol=1e-4)
        # RMS change in scientific notation, never a rounded 0.000
        assert m["rms_change_sci"] == f"{m['rms_change']:.3e}" and "e" in m["rms_change_sci"]
    assert json.loads((out / "final.json").read_text())["step"] == res["step"]
    assert (out / "diagnostics.png").stat().st_size > 0


def test_star_output_has_class_columns(discrete, k3_run):
    from cryo_napari.io.star import read_star_tables

    res, _, out = k3_run
    parts, optics = read_star_tables(out / f"iter_{res['step']:03d}" / "particles.star")
    assert optics is not None and len(parts) == 1500
    np.testing.assert_array_equal(parts["rlnClassNumber"].to_numpy(), res["labels"] + 1)
    assert "rlnImageName" in parts.columns and "rlnMaxValueProbDistribution" in parts.columns


def test_rms_log_in_scientific_notation(k3_run):
    _, events, _ = k3_run
    lines = [e.text for e in events if isinstance(e, Log) and e.text.startswith("F-EM")]
    assert lines and all("RMS change " in s and "e-" in s.split("RMS change ")[1].split(",")[0] for s in lines)


def test_scale_warning_when_all_scales_are_one(k3_run):
    _, events, out = k3_run  # the simulation has no scale variation: alignments3D/alpha is 1
    assert any(isinstance(e, Log) and e.level == "warning" and "scales are 1" in e.text for e in events)
    assert RunDir(out).read_metrics()[-1]["scales_all_one"] is True


def test_cs_input_optimal_scales_rms_stop(discrete, tmp_path):
    """.cs input, optimal scales (no warning), the RMS criterion stops and says why."""
    res, events = run_job(discrete["cs"], tmp_path, switch_conv=0.0, rms_conv=0.5, scales="optimal",
                          oem_epochs=1, max_fem=8)
    assert res["stop_reason"] == "rms"
    assert any(isinstance(e, Log) and "converged: mean RMS density change" in e.text for e in events)
    assert not any(isinstance(e, Log) and "scales are 1" in e.text for e in events)
    it = load_iteration(tmp_path)
    assert not np.allclose(it["scales"], 1.0)
    cs = np.load(it["dir"] / "particles.cs")
    np.testing.assert_array_equal(cs["alignments3D/class"], it["labels"])
    np.testing.assert_allclose(cs["alignments3D/class_posterior"], it["posterior"].max(1), rtol=1e-5)


def test_max_fem_ends_run(discrete, tmp_path):
    res, events = run_job(discrete["star"], tmp_path, max_fem=2, anneal_end=10, oem_epochs=1,
                          init_mode="simple", hard=True, hard_recon=True)
    assert res["stop_reason"] == "max-fem" and res["step"] == 2
    assert complete_iterations(tmp_path) == [1, 2]
    assert any(isinstance(e, Log) and "--max-fem 2" in e.text for e in events)
    it = load_iteration(tmp_path)
    assert set(np.unique(it["posterior"])) <= {0.0, 1.0}
    assert (it["dir"] / "class_01_hard.mrc").exists()


def test_killed_run_leaves_last_iteration_loadable(discrete, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "cryo_napari.cli.main", "class3d", str(discrete["star"]), "-K", "3", "-o", str(out),
           "--target-res", "8", "--oem-epochs", "1", "--anneal-end", "30", "--max-fem", "30", "--switch-conv", "0"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        t0 = time.time()
        while not (out / "iter_002").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() - t0 < 120
            time.sleep(0.05)
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    steps = complete_iterations(out)
    assert steps and steps[-1] >= 1
    it = load_iteration(out)
    assert it["metrics"] is not None and it["step"] in steps
    assert np.bincount(it["labels"], minlength=3).tolist() == it["metrics"]["class_sizes"]
    assert it["posterior"].shape == (1500, 3)


def test_tempering_and_diagnostics_definitions():
    ll = np.array([[0.0, -10.0, -20.0], [-5.0, 0.0, -5.0]])
    exact = tempered_posteriors(ll, 0.0, False)
    soft = tempered_posteriors(ll, 0.5, False)
    np.testing.assert_allclose(exact[0], np.exp(ll[0]) / np.exp(ll[0]).sum())
    assert (dg.class_ess(soft) > dg.class_ess(exact)).all()
    np.testing.assert_array_equal(tempered_posteriors(ll, 0.5, True), [[1, 0, 0], [0, 1, 0]])
    assert similarity_at(0.5, 1, 10) == pytest.approx(0.45) and similarity_at(0.5, 10, 10) == 0.0
    p = np.array([[0.5, 0.5], [1.0, 0.0]])
    q = np.array([[0.9, 0.1], [1.0, 0.0]])
    assert dg.mean_kl(p, p) == pytest.approx(0.0, abs=1e-9)
    assert dg.mean_kl(p, q) == pytest.approx(0.5 * (0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(0.5 / 0.1)))
    np.testing.assert_allclose(dg.class_ess(p), [2.0, 1.0])
    assert dg.class_switch_percent(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0])) == 25.0
    maps = np.ones((2, 4, 4, 4))
    rms, per = dg.rms_change(maps * 1.1, maps, np.ones((4, 4, 4)) * 2, np.array([3, 1]))
    assert rms == pytest.approx(0.05)


def test_bad_input_is_input_error(tmp_path):
    from cryo_napari.errors import InputError

    with pytest.raises(InputError):
        run_to_end(class3d_job(Class3DConfig(particles=str(tmp_path / "missing.star"), outdir=str(tmp_path / "o"))))
