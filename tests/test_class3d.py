"""3D classification without alignment: accuracy, stopping rules, outputs, diagnostics."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from cryo_napari.errors import InputError
from cryo_napari.jobs.protocol import Log, Metric, run_to_end
from cryo_napari.jobs.rundir import RunDir
from cryo_napari.methods.class3d import diagnostics as dg
from cryo_napari.methods.class3d.em import tempered_posteriors, tune_similarity
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
    # one file per class, ranked like class_KK.mrc, together all particles once
    names = []
    for k in range(3):
        pk, _ = read_star_tables(out / f"iter_{res['step']:03d}" / f"particles_class_{k + 1:02d}.star")
        assert len(pk) == int(np.sum(res["labels"] == k)) and (pk["rlnClassNumber"] == k + 1).all()
        names += pk["rlnImageName"].tolist()
    assert sorted(names) == sorted(parts["rlnImageName"].tolist())


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
    res, events = run_job(discrete["cs"], tmp_path, target_res=12.0, switch_conv=0.0, rms_conv=0.5, scales="optimal",
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
    res, events = run_job(discrete["star"], tmp_path, target_res=12.0, max_fem=2, anneal_end=10, oem_epochs=1,
                          init_mode="simple", hard=True, hard_recon=True)
    assert res["stop_reason"] == "max-fem" and res["step"] == 2
    assert complete_iterations(tmp_path) == [1, 2]
    assert any(isinstance(e, Log) and "--max-fem 2" in e.text for e in events)
    it = load_iteration(tmp_path)
    assert set(np.unique(it["posterior"])) <= {0.0, 1.0}
    assert (it["dir"] / "class_01_hard.mrc").exists()


@pytest.mark.reliability
def test_sigkill_then_resume_continues_from_last_complete_iteration(discrete, tmp_path):
    """SIGKILL during F-EM; the last complete iteration loads and matches its metrics line;
    ``--load latest`` continues from the next iteration and ends with a clean metrics.jsonl."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    base = [sys.executable, "-m", "cryo_napari.cli.main", "class3d", str(discrete["star"]), "-K", "3", "-o", str(out),
            "--target-res", "12", "--oem-epochs", "1", "--oem-batch-per-class", "100", "--anneal-end", "1",
            "--switch-conv", "0", "--init-mode", "simple"]
    proc = subprocess.Popen(base + ["--max-fem", "30"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        t0 = time.time()
        while not (out / "iter_002").exists():  # kill while iteration 2 is being written (or just after)
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() - t0 < 240
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    steps = complete_iterations(out)
    assert steps and steps == list(range(1, steps[-1] + 1))
    last = steps[-1]
    it = load_iteration(out)
    assert it["step"] == last and it["metrics"]["iteration"] == last
    assert np.bincount(it["labels"], minlength=3).tolist() == it["metrics"]["class_sizes"]
    np.testing.assert_allclose(it["ess"].mean(), it["metrics"]["mean_ess"], rtol=1e-4)
    assert it["posterior"].shape == (1500, 3)

    done = subprocess.run(base + ["--max-fem", str(last + 2), "--load", "latest"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resuming from complete iteration {last}" in done.stderr
    assert "initial maps" not in done.stderr and "O-EM" not in done.stderr  # no re-initialisation
    assert complete_iterations(out) == list(range(1, last + 3))
    fem = [m["iteration"] for m in RunDir(out).read_metrics() if m.get("phase") == "fem"]
    assert fem == list(range(1, last + 3))  # no duplicated or torn lines
    assert json.loads((out / "final.json").read_text())["step"] == last + 2
    first_new = load_iteration(out, last + 1)["metrics"]
    assert first_new["switch_pct"] < 100.0  # compared with the resumed iteration, not a fresh start


def test_resume_reproduces_uninterrupted_run(discrete, k3_run, tmp_path):
    """Resuming the k3 run from its second-last iteration gives the same labels, maps and stop."""
    res, _, out = k3_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    start = max(1, res["step"] - 2)
    res2, events = run_job(discrete["star"], copy, load=str(start))
    assert any(isinstance(e, Log) and f"resuming from complete iteration {start}" in e.text for e in events)
    assert (res2["step"], res2["stop_reason"]) == (res["step"], res["stop_reason"])
    assert np.mean(res2["labels"] == res["labels"]) > 0.999
    a, b = load_iteration(out), load_iteration(copy)
    np.testing.assert_allclose(b["maps"], a["maps"], atol=1e-3 * np.abs(a["maps"]).max())
    with pytest.raises(InputError, match="classes"):
        run_to_end(class3d_job(Class3DConfig(particles=str(discrete["star"]), outdir=str(copy), **{**FAST, "K": 4},
                                             load="latest")))
    with pytest.raises(InputError, match="no complete"):
        run_to_end(class3d_job(Class3DConfig(particles=str(discrete["star"]), outdir=str(tmp_path / "empty"),
                                             **FAST, load="latest")))


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
    with pytest.raises(InputError):
        run_to_end(class3d_job(Class3DConfig(particles=str(tmp_path / "missing.star"), outdir=str(tmp_path / "o"))))


def test_auto_similarity_hits_target_ess_fraction():
    rng = np.random.default_rng(0)
    ll = rng.normal(0, 50, (400, 4))
    for target in (0.5, 0.75, 0.9):
        s = tune_similarity(ll, target)
        assert s > 0
        assert dg.class_ess(tempered_posteriors(ll, s, False)).mean() / 4 == pytest.approx(target, abs=1e-3)
    flat = np.zeros((10, 4))  # already uniform: no tempering needed
    assert tune_similarity(flat, 0.75) == 0.0


def test_class_distinctness_and_alike_warning():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(8, 8, 8))
    same = np.stack([a, a * 1.0001, a + 1e-4 * rng.normal(size=a.shape)])
    diff, corr = dg.class_distinctness(same, a)
    assert diff < 1e-3 and corr > 0.999
    assert "differ by only" in dg.classes_look_alike(1.2, 3, diff)
    distinct = np.stack([a, rng.normal(size=a.shape), rng.normal(size=a.shape)])
    diff, corr = dg.class_distinctness(distinct, a)
    assert diff > 1.0 and corr < 0.3
    assert dg.classes_look_alike(1.1, 3, diff) is None
    assert "ESS" in dg.classes_look_alike(2.9, 3, diff)


def _sphere(D, r):
    z, y, x = np.mgrid[:D, :D, :D] - D // 2
    return np.clip(r + 2 - np.sqrt(x * x + y * y + z * z), 0, 2).astype(np.float32) / 2


def test_identical_classes_are_flagged_with_given_mask_static_noise(discrete, tmp_path):
    """Two identical starting maps stay identical (the "all classes the same" case): the run says so.
    Also: --mask is used as given, --static-noise keeps σ² fixed, --scales none."""
    from cryo_napari.io.mrc import read_mrc, write_mrc

    truth = np.load(discrete["truth"])
    write_mrc(tmp_path / "full.mrc", truth["maps"][0], 3.0)
    write_mrc(tmp_path / "mask.mrc", _sphere(32, 12), 3.0)
    res, events = run_job(discrete["star"], tmp_path / "run", K=2, target_res=12.0, init_mode="input",
                          init_maps=[str(tmp_path / "full.mrc")] * 2, mask=str(tmp_path / "mask.mrc"),
                          static_noise=True, scales="none", oem_epochs=1, anneal_end=1, max_fem=2)
    warn = [e.text for e in events if isinstance(e, Log) and e.level == "warning" and "classes look alike" in e.text]
    assert warn and "ESS" in warn[0] and "differ by only" in warn[0]
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert "classes look alike" in final["warning"] and res["warning"] == final["warning"]
    recs = [m for m in RunDir(tmp_path / "run").read_metrics() if m.get("phase") == "fem"]
    assert recs[0]["sigma2"] == recs[-1]["sigma2"]
    assert recs[-1]["class_diff_min"] < 1e-3 and recs[-1]["mean_ess"] > 1.9
    mask, _ = read_mrc(tmp_path / "run" / "mask.mrc")
    assert mask.shape == (16, 16, 16) and 0.05 < mask.mean() < 0.6


def test_focus_mask_with_input_maps_and_auto_similarity(discrete, tmp_path):
    """Focused classification on the variable domain from the true maps, similarity auto-tuned."""
    from sklearn.metrics import adjusted_rand_score

    from cryo_napari.geometry.masks import threshold_mask_3d
    from cryo_napari.io.mrc import write_mrc

    truth = np.load(discrete["truth"])
    maps = truth["maps"]
    change = np.abs(maps - maps[0]).max(0)
    write_mrc(tmp_path / "focus.mrc", threshold_mask_3d(change, 0.2 * change.max(), 1.0, 2.0), 3.0)
    paths = []
    for k, m in enumerate(maps):
        write_mrc(tmp_path / f"init_{k}.mrc", m, 3.0)
        paths.append(str(tmp_path / f"init_{k}.mrc"))
    res, events = run_job(discrete["star"], tmp_path / "run", target_res=12.0, init_mode="input", init_maps=paths,
                          focus_mask=str(tmp_path / "focus.mrc"), auto_similarity=True, oem_epochs=1, max_fem=3)
    tuned = [e.text for e in events if isinstance(e, Log) and "auto-tuned" in e.text]
    assert tuned
    rec = RunDir(tmp_path / "run").read_metrics()[-1]
    assert rec["similarity_init"] > 0 and rec["similarity"] == 0.0  # annealed by anneal_end=3
    assert adjusted_rand_score(truth["states"], res["labels"]) >= 0.9
