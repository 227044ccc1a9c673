"""Independent round trips: simulate → write → parse → back-project → FSC against ground truth."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from cryo_napari.cli.main import main as cli
from cryo_napari.geometry.fsc import fsc
from cryo_napari.geometry.rotations import flip_map_handedness
from cryo_napari.io.mrc import read_mrc, write_mrc
from cryo_napari.io.particles import load_particles
from cryo_napari.io.star import write_star
from cryo_napari.jobs.protocol import run_to_end
from cryo_napari.methods.backproject import backproject_job


def relion_projection(vol, rot_tilt_psi, origin_px):
    """An independent RELION-convention simulator: A from scipy's intrinsic ZYZ (passive = transpose),
    real-space rotation V'(r) = V(Aᵀ r), sum along z, then place the particle at centre − origin."""
    D = vol.shape[-1]
    A = Rotation.from_euler("ZYZ", rot_tilt_psi, degrees=True).as_matrix().T
    P = np.eye(3)[::-1]
    M = P @ A.T @ P
    c = np.full(3, D // 2, dtype=float)
    proj = ndimage.affine_transform(vol, M, offset=c - M @ c, order=1).sum(0)
    # image(r) = proj(r + origin): content moves by −origin (ndimage.shift takes (y, x))
    return ndimage.shift(proj, (-origin_px[1], -origin_px[0]), order=1)


def test_hand_built_relion_star_reconstructs_with_right_hand(tmp_path, small_map):
    rng = np.random.default_rng(5)
    n, D, apix = 1200, 32, 2.0
    eul = np.stack([rng.uniform(-180, 180, n), np.degrees(np.arccos(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)], 1)
    origins = rng.integers(-3, 4, (n, 2)).astype(float)
    imgs = np.stack([relion_projection(small_map, eul[i], origins[i]) for i in range(n)]).astype(np.float32)
    write_mrc(tmp_path / "parts.mrcs", imgs, apix)
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["g1"], "rlnImagePixelSize": [apix],
                           "rlnImageSize": [D], "rlnImageDimensionality": [2], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]})
    parts = pd.DataFrame({"rlnImageName": [f"{i + 1}@parts.mrcs" for i in range(n)],
                          "rlnAngleRot": eul[:, 0], "rlnAngleTilt": eul[:, 1], "rlnAnglePsi": eul[:, 2],
                          "rlnOriginXAngst": origins[:, 0] * apix, "rlnOriginYAngst": origins[:, 1] * apix,
                          "rlnOpticsGroup": 1})
    write_star(tmp_path / "parts.star", parts, optics)
    pdata = load_particles(tmp_path / "parts.star", require_poses=True)
    run_to_end(backproject_job(pdata, tmp_path / "bp", use_ctf=False))
    rec, a = read_mrc(tmp_path / "bp" / "map.mrc")
    assert a == apix
    right = np.corrcoef(rec.ravel(), small_map.ravel())[0, 1]
    mirror = np.corrcoef(rec.ravel(), flip_map_handedness(small_map).ravel())[0, 1]
    assert right > 0.97, right
    assert mirror < right - 0.1, (right, mirror)
    assert fsc(rec, small_map)[:9].min() > 0.9


@pytest.mark.parametrize("fmt", ["star", "cs"])
def test_simulate_then_backproject_matches_truth(tmp_path, fmt):
    sim = tmp_path / "sim"
    assert cli(["simulate", "--synthetic", "32", "--preset", "discrete", "-n", "1500", "--snr", "1", "-o", str(sim)]) == 0
    for name in ("particles.mrcs", "particles.star", "particles.cs", "poses.pkl", "ctf.pkl", "ground_truth.npz"):
        assert (sim / name).exists()
    assert cli(["backproject", str(sim / f"particles.{fmt}"), "-o", str(tmp_path / "bp")]) == 0
    truth = np.load(sim / "ground_truth.npz")
    rec, _ = read_mrc(tmp_path / "bp" / "map.mrc")
    c = fsc(rec, truth["mean_map"])
    assert c[:8].min() > 0.9, np.round(c, 3)
    assert (tmp_path / "bp" / "fsc.png").stat().st_size > 1000
    lines = (tmp_path / "bp" / "fsc.txt").read_text().splitlines()
    assert len(lines) == 1 + 17


def test_star_and_cs_and_pkl_give_the_same_map(tmp_path):
    sim = tmp_path / "sim"
    cli(["simulate", "--synthetic", "16", "-n", "300", "--snr", "10", "--scale-sigma", "0.1", "-o", str(sim)])
    maps = []
    for src in ("star", "cs", "pkl"):
        if src == "pkl":
            pdata = load_particles(sim / "particles.mrcs", poses=sim / "poses.pkl", ctf=sim / "ctf.pkl")
            pdata.half = load_particles(sim / "particles.star").half
        else:
            pdata = load_particles(sim / f"particles.{src}")
        run_to_end(backproject_job(pdata, tmp_path / src))
        maps.append(read_mrc(tmp_path / src / "map.mrc")[0])
    # the .cs carries per-particle scales; the star and pkl do not, so compare shapes of the maps
    for m in maps[1:]:
        assert np.corrcoef(maps[0].ravel(), m.ravel())[0, 1] > 0.99
    np.testing.assert_allclose(maps[0], maps[2], atol=1e-4 * np.abs(maps[0]).max())


def test_downsample_stack_and_star(tmp_path):
    sim = tmp_path / "sim"
    cli(["simulate", "--synthetic", "32", "-n", "50", "-o", str(sim)])
    assert cli(["downsample", str(sim / "particles.star"), "-D", "16", "-o", str(tmp_path / "small.mrcs")]) == 0
    p = load_particles(tmp_path / "small.star")
    assert p.D == 16 and len(p) == 50
    assert abs(p.apix[0] - 6.0) < 1e-6
    assert cli(["downsample", str(sim / "maps" / "state_00.mrc"), "-D", "16", "-o", str(tmp_path / "v.mrc")]) == 0
    v, a = read_mrc(tmp_path / "v.mrc")
    assert v.shape == (16, 16, 16) and abs(a - 6.0) < 1e-6


def test_demo_runs(tmp_path):
    assert cli(["demo", "-o", str(tmp_path / "d"), "-n", "300", "-D", "16", "--epochs", "2"]) == 0
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    assert {"backproject_star", "backproject_cs", "vae", "class3d"} <= set(report)
    assert report["backproject_star"]["fsc_vs_truth_auc"] == pytest.approx(report["backproject_cs"]["fsc_vs_truth_auc"])
    assert report["vae"]["epochs"] == 2 and -1 <= report["vae"]["latent_kmeans3_ari_vs_truth"] <= 1
    assert sum(report["class3d"]["class_sizes"]) == 300
    assert (tmp_path / "d" / "vae" / "analyze" / "labels.npy").exists()


def test_simulate_from_atomic_model_with_a_chain_removed(tmp_path, fixtures_dir):
    out = tmp_path / "m"
    assert cli(["simulate", "--model", str(fixtures_dir / "models" / "4E43.pdb"), "-D", "32", "--apix", "2",
                "--remove-chains", "C", "-n", "40", "-o", str(out)]) == 0
    truth = np.load(out / "ground_truth.npz")
    full, no_c = truth["maps"]
    assert full.sum() > no_c.sum() > 0.9 * full.sum()  # chain C is a small peptide
    assert cli(["simulate", "--model", str(fixtures_dir / "models" / "4E43.pdb"), "-D", "32", "--apix", "2",
                "--remove-chains", "Z", "-n", "4", "-o", str(tmp_path / "bad")]) == 2


def test_snr_definitions(small_map):
    from cryo_napari.simulate.particles import SimulationParams, add_noise, particle_radius_px, render_clean_images, sample_ground_truth

    p = SimulationParams(n_particles=200, snr=0.1)
    gt = sample_ground_truth(1, p)
    clean = render_clean_images(small_map[None], gt, p)
    noisy, sigma_box = add_noise(clean, 0.1, 0)
    assert abs(np.var(noisy - clean) / sigma_box**2 - 1) < 0.02
    assert abs(np.var(clean) / sigma_box**2 - 0.1) < 1e-3  # cryoDRGN's definition: whole stack
    r = particle_radius_px(small_map[None])
    assert 3 < r < 16
    _, sigma_particle = add_noise(clean, 0.1, 0, r)
    assert sigma_particle > sigma_box  # signal is denser inside the particle's disc


def test_domain_mask_series_follows_the_moving_domain():
    from cryo_napari.simulate.heterogeneity import (domain_mask, domain_mask_series, domain_motion_series,
                                                    synthetic_map)

    vol = synthetic_map(24, seed=3)
    maps, angles, mask = domain_motion_series(vol, 3, 40.0)
    moved = domain_mask_series(vol, angles)
    assert moved.shape == maps.shape
    np.testing.assert_allclose(moved[0], domain_mask(vol)[0], atol=1e-5)  # angle 0: the mask itself
    # the domain's density at 40° lies inside the moved mask far more than inside the unmoved one
    dom40 = maps[-1] - vol * (1 - mask)
    inside = lambda m: float((dom40 * (m > 0.5)).sum() / dom40.sum())  # noqa: E731
    assert inside(moved[-1]) > 0.8 and inside(moved[-1]) > inside(mask) + 0.1


def test_domain_only_fsc_sees_the_domain_where_the_masked_fsc_sees_the_hinge():
    from scipy import ndimage

    from cryo_napari.geometry.fsc import fsc
    from cryo_napari.simulate.heterogeneity import (domain_mask_series, domain_motion_series, domain_only_fsc,
                                                    domain_truth_parts, remove_static_part, synthetic_map)

    D, f0 = 32, 3
    vol = synthetic_map(D, seed=3)
    maps, angles, _ = domain_motion_series(vol, 7, -60.0)
    dom, static = domain_truth_parts(vol, angles)
    np.testing.assert_allclose(dom + static, maps, atol=1e-5)
    dom = dom[f0]
    moved = domain_mask_series(vol, angles)
    soft = lambda m: ndimage.gaussian_filter(m.astype(np.float32), 1.0)  # noqa: E731
    mask = soft(ndimage.binary_dilation(moved[f0] > 0.1, iterations=2))
    static_mask = soft(~ndimage.binary_dilation(moved.max(0) > 0.1, iterations=2))
    # the true static part is removed exactly from a map that holds it with unit gain
    np.testing.assert_allclose(remove_static_part(maps[f0], static, static_mask), dom, atol=1e-4)
    # and with any per-shell gain (a low-passed map): what is left is the low-passed domain
    lp = lambda m: ndimage.gaussian_filter(m, 1.0, mode="wrap")  # noqa: E731
    left = remove_static_part(lp(maps[f0]), static, static_mask)
    assert np.corrcoef(left.ravel(), lp(dom).ravel())[0, 1] > 0.97

    def high(c):  # mean over shells D/4 ... D/2
        return float(np.mean(c[D // 4 + 1:]))

    assert high(domain_only_fsc(maps[f0], static, dom, mask, static_mask)) > 0.999
    near = high(domain_only_fsc(maps[f0 - 1], static, dom, mask, static_mask))  # 10° away
    far = high(domain_only_fsc(maps[0], static, dom, mask, static_mask))  # 30° away
    assert near > far + 0.3 and far < 0.35
    # the plain masked FSC scores the far frame high: the static density inside the mask
    assert high(fsc(maps[0] * mask, maps[f0] * mask)) > 0.55


def test_domain_from_maps_swings_one_chain_about_its_interface():
    """A domain given by its own density (one chain of a model): mask on the chain, centre at its
    centre of mass, pivot at the interface; the series moves that chain only."""
    from cryo_napari.simulate.heterogeneity import domain_from_maps, domain_motion_series, domain_truth_parts

    D = 32
    k = np.arange(D)
    Z, Y, X = np.meshgrid(k, k, k, indexing="ij")

    def blob(x, y, z, s=2.5):
        return np.exp(-((X - x) ** 2 + (Y - y) ** 2 + (Z - z) ** 2) / (2 * s * s)).astype(np.float32)

    a, b = blob(10, 16, 16), blob(20, 16, 16)  # touching along x; the interface near x = 15
    mask, centre, pivot = domain_from_maps(b, a)
    np.testing.assert_allclose(centre, [20, 16, 16], atol=0.05)  # (x, y, z)
    assert 13 < pivot[0] < 17 and abs(pivot[1] - 16) < 1 and abs(pivot[2] - 16) < 1
    assert mask[16, 16, 20] > 0.99 and mask[16, 16, 8] < 0.01
    vol = a + b
    maps, angles, _ = domain_motion_series(vol, 3, 60.0, domain=(mask, centre, pivot))
    dom, static = domain_truth_parts(vol, angles, domain=(mask, centre, pivot))
    np.testing.assert_allclose(dom + static, maps, atol=1e-5)
    # chain a stays (its peak all but untouched), chain b's peak leaves its place
    assert abs(maps[-1][16, 16, 10] - vol[16, 16, 10]) < 0.05
    assert maps[-1][16, 16, 20] < 0.5 * vol[16, 16, 20]
