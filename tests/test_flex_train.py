"""Flex prep / train / generate / reconstruct end to end on a tiny domain-motion dataset (D=16)."""

import json
import pickle

import numpy as np
import pytest

from cryo_napari.cli.main import main as cli
from cryo_napari.errors import InputError
from cryo_napari.io.mrc import read_mrc, write_mrc
from cryo_napari.jobs.protocol import run_to_end
from cryo_napari.jobs.rundir import RunDir

N = 300
D = 16
TINY = ["--hidden", "16", "--layers", "2", "--batch-size", "50"]


@pytest.fixture(scope="module")
def flexdata(tmp_path_factory):
    from cryo_napari.simulate.heterogeneity import domain_motion_series, synthetic_map
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    out = tmp_path_factory.mktemp("flex")
    vol = synthetic_map(D, seed=3)
    maps, angles, _ = domain_motion_series(vol, 5, 15.0)
    paths = simulate_dataset(maps, out / "sim", SimulationParams(n_particles=N, snr=1.0, apix=6.0, seed=1),
                             extra_truth={"trajectory_angle_deg": angles})
    write_mrc(out / "consensus.mrc", maps.mean(0), 6.0)
    assert cli(["flex", "prep", str(paths["star"]), "-o", str(out / "prep"), "--train-box", str(D),
                "--map", str(out / "consensus.mrc")]) == 0
    assert cli(["flex", "mesh", str(out / "consensus.mrc"), "-o", str(out / "mesh.pkl"), "--cells", "4",
                "--preview", str(out / "mesh.ply")]) == 0
    return out, paths


def test_prep_writes_cropped_stack_star_and_yaml(flexdata, tmp_path):
    out, paths = flexdata
    from cryo_napari.io.particles import load_particles

    p = load_particles(out / "prep" / "particles.star")
    assert len(p) == N and p.D == D and p.half is not None
    src = load_particles(paths["star"])
    np.testing.assert_array_equal(p.half, src.half)  # half-sets kept from the input
    np.testing.assert_allclose(p.rotations, src.rotations, atol=1e-6)
    # cropping to a smaller box with --max-particles
    assert cli(["flex", "prep", str(paths["star"]), "-o", str(tmp_path / "p8"), "--train-box", "8",
                "--max-particles", "40"]) == 0
    q = load_particles(tmp_path / "p8" / "particles.star")
    assert len(q) == 40 and q.D == 8
    np.testing.assert_allclose(q.apix, 12.0)
    np.testing.assert_allclose(q.shifts_px, src.shifts_px[np.load(tmp_path / "p8" / "indices.npy")] / 2, atol=1e-4)
    assert read_mrc(tmp_path / "p8" / "consensus.mrc")[0].shape == (8, 8, 8)


def test_train_checkpoints_resume_generate_and_reconstruct(flexdata, tmp_path):
    out, _ = flexdata
    run = tmp_path / "run"
    base = ["flex", "train", str(out / "prep"), "--mesh", str(out / "mesh.pkl"), "-o", str(run), *TINY,
            "--no-refine-z"]  # refine-z on demand below; the default final refinement has its own test
    assert cli([*base, "--epochs", "2"]) == 0
    rd = RunDir(run)
    assert rd.complete_steps("weights", "pt") == [1, 2]
    assert rd.complete_steps("z", "npy") == [1, 2]
    z2 = np.load(run / "z.2.npy")
    assert z2.shape == (N, 2) and np.abs(z2).max() < 1.5
    assert len(rd.read_metrics()) == 2
    # resume: one extra epoch from the latest complete checkpoint
    assert cli([*base, "--epochs", "2", "--extra-epochs", "1", "--load", "latest"]) == 0
    assert rd.complete_steps("weights", "pt") == [1, 2, 3]
    assert [m["epoch"] for m in rd.read_metrics()] == [1, 2, 3]
    # a torn checkpoint (no valid marker) is ignored by the generator
    (run / "weights.4.pt").write_bytes(b"partial")

    gen = tmp_path / "gen"
    assert cli(["flex", "generate", str(run), "-o", str(gen), "--frames", "5"]) == 0
    from cryo_napari.methods.flex.train import load_trained

    model, _, step = load_trained(run)
    assert step == 3
    canonical = model.V.detach().numpy()
    for k in (1, 2):
        series = np.load(gen / f"axis{k}" / "series.npy")
        assert series.shape == (5, D, D, D)
        np.testing.assert_allclose(series[2], canonical, atol=1e-5)  # zero latent in the middle
        assert not np.allclose(series[0], series[4])
        meta = json.loads((gen / f"axis{k}" / "series.json").read_text())
        assert meta["epoch"] == 3 and len(meta["latents"]) == 5 and meta["latents"][2] == [0.0, 0.0]
        motion = meta["segment_motion"]  # the rigid fit per frame and segment (one segment here)
        assert len(motion) == 5 and motion[2]["segments"][0]["max_shift_A"] == 0.0
        assert motion[0]["segments"][0]["max_shift_A"] > 0.0
        assert len(list((gen / f"axis{k}").glob("*.mrc"))) == 5
    assert cli(["flex", "generate", str(run), "-o", str(gen / "even"), "--frames", "4"]) == 2
    # trilinear as in training: the same frames to within the interpolation difference
    assert cli(["flex", "generate", str(run), "-o", str(gen / "lin"), "--frames", "5", "--interp", "linear"]) == 0
    lin = np.load(gen / "lin" / "axis1" / "series.npy")
    cub = np.load(gen / "axis1" / "series.npy")
    np.testing.assert_allclose(lin[2], canonical, atol=1e-5)
    assert np.corrcoef(lin[0].ravel(), cub[0].ravel())[0, 1] > 0.95
    assert json.loads((gen / "lin" / "axis1" / "series.json").read_text())["interp"] == "linear"

    # a user path and a high-resolution map (twice the box)
    np.save(tmp_path / "path.npy", np.array([[0.0, 0.0], [0.5, 0.2], [1.0, 0.4]], np.float32))
    hi = np.zeros((2 * D,) * 3, np.float32)
    hi[D // 2 : 3 * D // 2, D // 2 : 3 * D // 2, D // 2 : 3 * D // 2] = 1.0
    write_mrc(tmp_path / "hi.mrc", hi, 3.0)
    assert cli(["flex", "generate", str(run), "-o", str(tmp_path / "gp"), "--path", str(tmp_path / "path.npy"),
                "--map", str(tmp_path / "hi.mrc")]) == 0
    sp = np.load(tmp_path / "gp" / "series.npy")
    assert sp.shape == (3, 2 * D, 2 * D, 2 * D)
    np.testing.assert_allclose(sp[0], hi, atol=1e-6)

    rec = tmp_path / "rec"
    assert cli(["flex", "reconstruct", str(run), "--prep", str(out / "prep"), "-o", str(rec), "--iters", "3",
                "--max-particles", "80"]) == 0
    for name in ("flex_map", "flex_half_1", "flex_half_2", "rigid_map", "rigid_half_1", "rigid_half_2"):
        vol, apix = read_mrc(rec / f"{name}.mrc")
        assert vol.shape == (D, D, D) and np.isfinite(vol).all() and vol.std() > 0
    table = np.loadtxt(rec / "fsc.txt")
    assert table.shape == (D // 2 + 1, 4) and table[1, 2] > 0.5 and table[1, 3] > 0.5
    assert (rec / "fsc.png").stat().st_size > 1000

    # --refined: the latents refine-z wrote; before refine-z the error names the command
    rr = tmp_path / "rec_refined"
    rec_args = ["flex", "reconstruct", str(run), "--prep", str(out / "prep"), "-o", str(rr), "--iters", "3",
                "--max-particles", "80", "--refined"]
    assert cli(rec_args) == 2 and not (rr / "flex_map.mrc").exists()
    assert cli(["refine-z", str(run), "--centres", "8"]) == 0
    assert cli(rec_args) == 0
    assert not np.allclose(read_mrc(rr / "flex_map.mrc")[0], read_mrc(rec / "flex_map.mrc")[0])
    np.testing.assert_allclose(read_mrc(rr / "rigid_map.mrc")[0], read_mrc(rec / "rigid_map.mrc")[0], atol=1e-5)
    assert cli(["flex", "generate", str(run), "-o", str(tmp_path / "gr"), "--frames", "3", "--refined"]) == 0
    zr = np.load(run / "z.3.refined.npy")
    lat = np.array(json.loads((tmp_path / "gr" / "axis1" / "series.json").read_text())["latents"])
    np.testing.assert_allclose(lat[-1, 0], np.percentile(np.abs(zr[:, 0]), 98), rtol=1e-5)


def test_latent_analysis_commands_open_flex_runs(flexdata, tmp_path):
    """eval-vol, filter and analyze take a flex run like a VAE run: maps are the convected canonical
    map, and a selection maps back through PREP's indices to the source .star."""
    out, paths = flexdata
    run = tmp_path / "run"
    assert cli(["flex", "train", str(out / "prep"), "--mesh", str(out / "mesh.pkl"), "-o", str(run), *TINY,
                "--epochs", "1", "--no-refine-z"]) == 0
    from cryo_napari.io.particles import load_particles
    from cryo_napari.methods.flex.train import load_trained

    model, _, _ = load_trained(run)
    assert cli(["eval-vol", str(run), "--z", "0", "0", "0.8", "0", "-o", str(tmp_path / "ev")]) == 0
    v0, apix = read_mrc(tmp_path / "ev" / "vol_000.mrc")
    np.testing.assert_allclose(v0, model.V.detach().numpy(), atol=1e-5)  # zero latent: the canonical map
    np.testing.assert_allclose(apix, 6.0, rtol=1e-5)
    assert not np.allclose(read_mrc(tmp_path / "ev" / "vol_001.mrc")[0], v0)
    assert cli(["eval-vol", str(run), "--z", "0", "0", "-D", "8", "-o", str(tmp_path / "ev8")]) == 0
    v8, apix8 = read_mrc(tmp_path / "ev8" / "vol_000.mrc")
    assert v8.shape == (8, 8, 8) and abs(apix8 - 12.0) < 1e-4

    z = np.load(run / "z.1.npy")
    assert cli(["filter", str(run), "--zscore", "1.0", "-o", str(tmp_path / "flt")]) == 0
    pos = np.load(tmp_path / "flt" / "indices_in_run.npy")
    assert 0 < len(pos) < N
    rows = np.load(out / "prep" / "indices.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "flt" / "indices.npy"), rows[pos])
    sub, src = load_particles(tmp_path / "flt" / "particles.star"), load_particles(paths["star"])
    np.testing.assert_allclose(sub.rotations, src.rotations[rows[pos]], atol=1e-5)
    assert len(z) == N

    assert cli(["analyze", str(run), "--skip-umap", "--ksample", "3", "--pc", "1", "--pc-points", "3",
                "-D", "8", "-o", str(tmp_path / "an")]) == 0
    assert len(list((tmp_path / "an").rglob("*.mrc"))) >= 3
    assert cli(["analyze", str(run), "--refined", "--skip-umap", "-o", str(tmp_path / "an2")]) == 2


def test_training_ends_with_refine_z_unless_told_not_to(flexdata, tmp_path, capsys, monkeypatch):
    """By default the last epoch's latents are refined by the trained model (what `refine-z --box
    D/2 --centres 64` writes); a refinement that cannot run leaves training successful, with a warning."""
    out, _ = flexdata
    run = tmp_path / "run"
    assert cli(["flex", "train", str(out / "prep"), "--mesh", str(out / "mesh.pkl"), "-o", str(run), *TINY,
                "--epochs", "1", "--refine-centres", "8"]) == 0
    assert "refined latents →" in capsys.readouterr().out
    rd = RunDir(run)
    zr_path = rd.refined_latents_path(1)
    assert rd.is_complete(zr_path)
    zr, z = np.load(zr_path), np.load(run / "z.1.npy")
    assert zr.shape == z.shape and not np.allclose(zr, z)
    summary = json.loads((run / "refine_z.1.json").read_text())
    assert summary["working_box"] == 16 and summary["n_centres"] == 8  # default box: max(D/2, 16) at D 16
    assert cli(["refine-z", str(run), "--box", "16", "--centres", "8"]) == 0  # the same computation by hand
    np.testing.assert_allclose(np.load(zr_path), zr, atol=1e-6)

    from cryo_napari.methods import refine_run
    from cryo_napari.methods.flex.train import default_refine_box, flex_train_job

    assert [default_refine_box(d) for d in (16, 24, 32, 64, 128)] == [16, 16, 16, 32, 64]

    def fails(*a, **k):
        raise InputError(run, "need at least 2 distinct latent centres")
        yield  # a job

    monkeypatch.setattr(refine_run, "refine_run_latents_job", fails)
    events = []
    res = run_to_end(flex_train_job(dict(prep=out / "prep", mesh=out / "mesh.pkl", outdir=tmp_path / "run2", epochs=1,
                                         hidden=16, layers=2, batch_size=50)), events.append)
    assert res["epoch"] == 1 and res["z_refined"] is None
    assert any(getattr(e, "level", "") == "warning" and "2 distinct" in e.text for e in events)
    assert not RunDir(tmp_path / "run2").refined_latents_path(1).exists()


def test_the_ramp_is_capped_in_particle_visits_and_an_uncapped_long_ramp_warns(flexdata, tmp_path, monkeypatch):
    """With ``ramp_visits`` shorter than the per-epoch ramp the learning rates and the loss band reach
    their final settings after that many particle visits, advancing every batch; an uncapped ramp
    longer than ``RAMP_VISITS_WARN`` warns once; a resumed run keeps the cap it was made with."""
    from cryo_napari.methods.flex import train
    from cryo_napari.methods.flex.train import flex_train_job, ramp_visits, schedule

    cfg0 = dict(train.DEFAULTS, epochs=10)
    assert ramp_visits(cfg0, 10_000) == 30_000 and ramp_visits(cfg0, 3_000) == 0  # 9 × 3,000 ≤ 30,000
    assert ramp_visits(dict(cfg0, ramp_visits=0), 10_000) == 0
    assert "(1 epoch of 30,000 particles), then 3 epochs" in train.ramp_message(30_000, dict(cfg0, epochs=4)).text
    assert schedule(cfg0, 2, 64, 20_000, 30_000)[1] == pytest.approx(16 + 9.6 * 2 / 3)
    assert schedule(cfg0, 5, 64, 50_000, 30_000) == schedule(cfg0, 9, 64)  # final settings
    assert schedule(cfg0, 2, 64, 20_000, 0) == schedule(cfg0, 2, 64)  # uncapped: per epoch, as before

    out, _ = flexdata
    cfg = dict(prep=out / "prep", mesh=out / "mesh.pkl", hidden=8, layers=1, batch_size=N // 4, refine_z=False)

    def logs(**kw):
        events = []
        run_to_end(flex_train_job({**cfg, **kw}), events.append)
        return [(e.level, e.text) for e in events if hasattr(e, "level")]

    capped = logs(outdir=tmp_path / "capped", epochs=3, extra_epochs=1, ramp_visits=N // 2)
    assert (f"ramp over the first {N // 2:,} particle visits (0.5 epochs of {N:,} particles), then 3.5 epochs"
            in capped[0][1]) and capped[0][0] == "info"
    rows = [json.loads(x) for x in (tmp_path / "capped" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr_factor"] for r in rows] == pytest.approx([0.1] * 4)  # final settings from visit N/2 on
    assert rows[0]["k_max"] == pytest.approx(0.8 * train.FlexData(out / "prep").D / 2)

    monkeypatch.setattr(train, "RAMP_VISITS_WARN", N)
    w = [t for lvl, t in logs(outdir=tmp_path / "long", epochs=2, extra_epochs=1, ramp_visits=0) if lvl == "warning"]
    assert len(w) == 1 and f"{N:,} particles × 2 ramp epochs = {2 * N:,} particle visits" in w[0]
    assert "Consider --ramp-visits 30000" in w[0]
    resumed = logs(outdir=tmp_path / "long", epochs=2, extra_epochs=2, load="latest", ramp_visits=N // 2)
    assert [lvl for lvl, _ in resumed] == ["info"]  # only "resumed from": the run keeps its uncapped ramp
    assert [lvl for lvl, _ in logs(outdir=tmp_path / "short", epochs=1, ramp_visits=0)] == []


def test_hand_built_mesh_dict_in_the_schema_trains(flexdata, tmp_path):
    """A custom mesh: one cube of 5 tetrahedra (not our 6-split) covering the central region."""
    out, _ = flexdata
    from cryo_napari.methods.flex.train import flex_train_job

    lo, hi = 3.0, 12.0
    corners = np.array([[x, y, z] for z in (lo, hi) for y in (lo, hi) for x in (lo, hi)], np.float32)
    # 5-tetra split of a cube (corner index = x + 2y + 4z)
    cells = np.array([[0, 1, 2, 4], [1, 3, 2, 7], [1, 4, 5, 7], [2, 4, 6, 7], [1, 2, 4, 7]], np.int64)
    k = np.arange(D)
    zz, yy, xx = np.meshgrid(k, k, k, indexing="ij")
    pos = np.stack([xx, yy, zz], -1).reshape(-1, 3).astype(np.float64)
    tmap = np.full(D**3, -1, np.int32)
    for c, tet in enumerate(cells):
        P = corners[tet].astype(np.float64)
        lam = np.linalg.solve((P[:3] - P[3]).T, (pos - P[3]).T).T
        inside = (lam >= -1e-9).all(1) & (lam.sum(1) <= 1 + 1e-9) & (tmap < 0)
        tmap[inside] = c
    mask = (tmap >= 0).reshape(D, D, D).astype(np.float32)
    mesh = {"tm_points": corners, "tm_cells": cells, "tm_tetraidx_map": tmap.reshape(D, D, D),
            "tm_rweights": np.ones(5, np.float32), "mask": mask, "mask_soft": mask, "N": D, "psize_A": 6.0}
    with open(tmp_path / "custom.pkl", "wb") as f:
        pickle.dump(mesh, f)
    res = run_to_end(flex_train_job(dict(prep=out / "prep", mesh=tmp_path / "custom.pkl", outdir=tmp_path / "run",
                                         epochs=1, hidden=16, layers=2, batch_size=100)))
    assert res["epoch"] == 1 and RunDir(tmp_path / "run").is_complete(tmp_path / "run" / "weights.1.pt")
    assert (tmp_path / "run" / "mesh.pkl").exists()


def test_bad_inputs_are_one_line_errors(flexdata, tmp_path, capsys):
    out, _ = flexdata
    assert cli(["flex", "train", str(tmp_path), "--mesh", str(out / "mesh.pkl"), "-o", str(tmp_path / "r")]) == 2
    assert "prep.yaml" in capsys.readouterr().err
    assert cli(["flex", "generate", str(tmp_path / "nope"), "-o", str(tmp_path / "g")]) == 2
    assert "config.yaml" in capsys.readouterr().err
    seg = np.zeros((D,) * 3, np.float32)
    seg[:, :, D // 2 :] = 1
    write_mrc(tmp_path / "seg.mrc", seg, 6.0)
    assert cli(["flex", "mesh", str(out / "consensus.mrc"), "-o", str(tmp_path / "m.pkl"), "--cells", "4",
                "--segments", str(tmp_path / "seg.mrc"), "--fuse", "0>1,1>0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cycle" in err[0]
    with pytest.raises(InputError):
        from cryo_napari.methods.flex.generate import axis_paths

        axis_paths(np.zeros((3, 2)), 4)


def test_segments_not_a_tree_and_mesh_for_another_box_are_one_line_errors(flexdata, tmp_path, capsys):
    out, _ = flexdata
    seg = np.zeros((D,) * 3, np.float32)
    seg[:, :, D // 2 :] = 1
    seg[:, D // 2 :, D // 2 :] = 2  # three touching segments
    write_mrc(tmp_path / "seg3.mrc", seg, 6.0)
    mesh = ["flex", "mesh", str(out / "consensus.mrc"), "-o", str(tmp_path / "m.pkl"), "--cells", "4",
            "--segments", str(tmp_path / "seg3.mrc")]
    for fuse, msg in (("0>2,1>2", "more than one parent"), ("0>1,1>2,2>0", "cycle"), ("0>1,0>5", "does not exist")):
        assert cli([*mesh, "--fuse", fuse]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0] and "--fuse" in err[0], err
    assert not (tmp_path / "m.pkl").exists()
    assert cli([*mesh, "--fuse", "0>1,1>2"]) == 0  # a tree is fine
    # a mesh made for a box of another physical size (same pixels, half the pixel size)
    vol, _ = read_mrc(out / "consensus.mrc")
    write_mrc(tmp_path / "small.mrc", vol, 3.0)
    assert cli(["flex", "mesh", str(tmp_path / "small.mrc"), "-o", str(tmp_path / "small.pkl"), "--cells", "4"]) == 0
    capsys.readouterr()
    assert cli(["flex", "train", str(out / "prep"), "--mesh", str(tmp_path / "small.pkl"), "-o", str(tmp_path / "r"),
                *TINY, "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "small.pkl" in err[0] and "48.0 Å" in err[0] and "96.0 Å" in err[0], err
    assert not list((tmp_path / "r").glob("weights.*"))


def test_schedule_anneals_learning_rate_and_band():
    from cryo_napari.methods.flex.train import DEFAULTS, schedule

    cfg = {**DEFAULTS, "epochs": 5}
    f0, k0 = schedule(cfg, 0, 64)
    f4, k4 = schedule(cfg, 4, 64)
    assert f0 == pytest.approx(1.0) and f4 == pytest.approx(0.1)
    assert k0 == pytest.approx(0.5 * 32) and k4 == pytest.approx(0.8 * 32)  # up to 0.8 × Nyquist
    assert schedule(cfg, 7, 64) == (f4, k4)  # extra epochs stay at the final settings


def test_spline_convection_keeps_detail_that_trilinear_damps():
    """A half-voxel shift of a map with detail near Nyquist: cubic B-spline convection (the
    generator's default) lands far nearer the exact (Fourier) shift than trilinear; zero flow
    returns the map itself."""
    import torch
    from scipy import ndimage

    from cryo_napari.methods.flex.generate import convect_spline
    from cryo_napari.methods.flex.model import convect

    D = 32
    V = ndimage.gaussian_filter(np.random.default_rng(0).normal(size=(D, D, D)), 0.8).astype(np.float32)
    coeffs = ndimage.spline_filter(V.astype(np.float64), order=3)
    flow = np.zeros((3, D, D, D), np.float32)
    np.testing.assert_allclose(convect_spline(coeffs, flow), V, atol=1e-5)
    flow[0] = 0.5  # x, voxels
    k = np.fft.fftfreq(D)
    exact = np.real(np.fft.ifftn(np.fft.fftn(V) * np.exp(-2j * np.pi * k[None, None, :] * 0.5)))
    inner = (slice(6, -6),) * 3
    cubic = convect_spline(coeffs, flow)
    linear = convect(torch.as_tensor(V), torch.as_tensor(flow[None]))[0].numpy()

    def err(m):
        return float(np.std((m - exact)[inner]) / np.std(V[inner]))

    assert err(cubic) < 0.5 * err(linear), (err(cubic), err(linear))
    assert err(cubic) < 0.1
