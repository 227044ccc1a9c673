"""Real-format fixtures (cryoDRGN's public test data) loaded by ``io.particles`` against numbers
derived here by hand from the raw files, following cryoDRGN's parsers (``R_from_relion``,
``parse_pose_star``/``parse_pose_csparc``, ``parse_ctf_star``/``parse_ctf_csparc``)."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
from scipy.spatial.transform import Rotation

from cryo_napari.geometry.rotations import (cryosparc_pose_to_matrix, matrix_to_cryosparc_pose,
                                            matrix_to_relion_euler, random_rotations, relion_euler_to_matrix)
from cryo_napari.io.cryodrgn import read_ctf_pkl
from cryo_napari.io.particles import load_particles

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
REAL = FIXTURES / "real-formats"

pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason=f"fixtures not found at {REAL}")

STARS = ["relion31.star", "relion31.6opticsgroups.star", "relion5.star", "empiar_10076_7.star",
         "toy_projections.star", "sta_testing_bin8.star", "FinalRefinement-OriginalParticles-PfCRT.star"]
CS_FILES = ["empiar_10076_7.cs", "cryosparc_P12_J24_001_particles.cs", "cryosparc_J2_particles_exported.cs"]


def fixture(name: str) -> Path:
    p = REAL / name
    if not p.exists():
        pytest.skip(f"fixture {name} not found")
    return p


# ---------------------------------------------------------------- hand-written reference parsers


def R_from_relion(rot, tilt, psi) -> np.ndarray:
    """cryoDRGN ``utils.R_from_relion``: R = Rz(psi)·Ry(tilt)·Rz(rot), then RELION's sign flips."""
    a, b, y = np.deg2rad([rot, tilt, psi])
    ca, sa, cb, sb, cy, sy = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(y), np.sin(y)
    Ra = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    Rb = np.array([[cb, 0, -sb], [0, 1, 0], [sb, 0, cb]])
    Ry = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    R = Ry @ Rb @ Ra
    R[0, 1] *= -1
    R[1, 0] *= -1
    R[1, 2] *= -1
    R[2, 1] *= -1
    return R


def raw_stack(name) -> np.ndarray:
    """All images of a fixture stack read directly with mrcfile (float32)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # these headers lack the MAP id / machine stamp
        with mrcfile.open(fixture(name), permissive=True) as m:
            return np.asarray(m.data, dtype=np.float32)


def raw_star(path):
    """(particles, optics or None) read directly with starfile."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        blocks = starfile.read(path, always_dict=True)
    optics = blocks.get("optics")
    particles = blocks.get("particles")
    if particles is None:
        particles = [v for k, v in blocks.items() if k != "optics"][0]
    return particles.reset_index(drop=True), optics


def per_particle(particles, optics, name):
    """A column per particle: from the particle table, else from the particle's optics group."""
    if name in particles.columns:
        return particles[name].to_numpy(np.float64)
    if optics is None or name not in optics.columns:
        return None
    row = {int(g): float(v) for g, v in zip(optics["rlnOpticsGroup"], optics[name])}
    return np.array([row[int(g)] for g in particles["rlnOpticsGroup"]])


# ---------------------------------------------------------------- conventions


def test_relion_formula_matches_module():
    rng = np.random.default_rng(0)
    eul = np.column_stack([rng.uniform(-180, 180, 50), rng.uniform(0, 180, 50), rng.uniform(-180, 180, 50)])
    ours = relion_euler_to_matrix(eul)
    for e, R in zip(eul, ours):
        np.testing.assert_allclose(R, R_from_relion(*e), atol=1e-12)


def test_relion_euler_round_trip():
    R = random_rotations(500, np.random.default_rng(1))
    np.testing.assert_allclose(relion_euler_to_matrix(matrix_to_relion_euler(R)), R, atol=1e-9)
    eul = matrix_to_relion_euler(R)
    assert (eul[:, 1] >= 0).all() and (eul[:, 1] <= 180).all()


@pytest.mark.parametrize("euler", [
    (30.0, 0.0, 40.0), (-75.0, 0.0, 0.0),
    (30.0, 180.0, 40.0), (0.0, 180.0, -120.0),
])
def test_relion_euler_round_trip_gimbal_lock(euler):
    lock = relion_euler_to_matrix(np.array(euler))
    back = matrix_to_relion_euler(lock)
    np.testing.assert_allclose(relion_euler_to_matrix(back), lock, atol=1e-9)
    assert back[1] == pytest.approx(euler[1], abs=1e-9)


def test_cryosparc_pose_round_trip():
    R = random_rotations(500, np.random.default_rng(2))
    pose = matrix_to_cryosparc_pose(R)
    np.testing.assert_allclose(cryosparc_pose_to_matrix(pose), R, atol=1e-9)
    np.testing.assert_allclose(cryosparc_pose_to_matrix(pose), Rotation.from_rotvec(pose).as_matrix().transpose(0, 2, 1),
                               atol=1e-12)
    rv = np.random.default_rng(3).normal(size=(200, 3))
    rv *= (np.random.default_rng(4).uniform(0, np.pi * 0.99, 200) / np.linalg.norm(rv, axis=1))[:, None]
    np.testing.assert_allclose(matrix_to_cryosparc_pose(cryosparc_pose_to_matrix(rv)), rv, atol=1e-9)


# ---------------------------------------------------------------- RELION .star


@pytest.mark.parametrize("name", STARS)
def test_star_metadata_matches_hand_parse(name):
    path = fixture(name)
    pdata = load_particles(path, with_images=False)
    parts, optics = raw_star(path)
    n = len(parts)
    assert len(pdata) == n and pdata.kind == "star" and pdata.images is None

    apix = per_particle(parts, optics, "rlnImagePixelSize")
    if apix is None:
        det, mag = per_particle(parts, optics, "rlnDetectorPixelSize"), per_particle(parts, optics, "rlnMagnification")
        apix = det * 1e4 / mag if det is not None else np.full(n, np.nan)
    np.testing.assert_allclose(pdata.apix, apix, rtol=1e-12)
    size = per_particle(parts, optics, "rlnImageSize")
    assert pdata.box == (int(size[0]) if size is not None else 0)

    if "rlnAngleRot" in parts.columns:
        ref = np.stack([R_from_relion(r, t, p) for r, t, p in
                        parts[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(np.float64)])
        np.testing.assert_allclose(pdata.rotations, ref, atol=1e-12)
    else:
        assert pdata.rotations is None

    if "rlnOriginXAngst" in parts.columns:
        sh = parts[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(np.float64) / apix[:, None]
    elif "rlnOriginX" in parts.columns:
        sh = parts[["rlnOriginX", "rlnOriginY"]].to_numpy(np.float64)
    else:
        sh = np.zeros((n, 2))
    np.testing.assert_allclose(pdata.shifts_px, sh, atol=1e-12)

    ctf = pdata.ctf
    np.testing.assert_allclose(ctf.defocus_u_A, parts["rlnDefocusU"].to_numpy(np.float64))
    np.testing.assert_allclose(ctf.defocus_v_A, parts["rlnDefocusV"].to_numpy(np.float64))
    np.testing.assert_allclose(ctf.astig_angle_rad, np.deg2rad(parts["rlnDefocusAngle"].to_numpy(np.float64)))
    np.testing.assert_allclose(ctf.voltage_kV, per_particle(parts, optics, "rlnVoltage"))
    np.testing.assert_allclose(ctf.cs_mm, per_particle(parts, optics, "rlnSphericalAberration"))
    w = per_particle(parts, optics, "rlnAmplitudeContrast")
    # absent (PfCRT file): the loader's documented default 0.1 (RELION's own CTF code uses Q0 = 0)
    np.testing.assert_allclose(ctf.amp_contrast, w if w is not None else 0.0)
    ps = per_particle(parts, optics, "rlnPhaseShift")
    np.testing.assert_allclose(ctf.phase_shift_rad, np.deg2rad(ps) if ps is not None else 0.0)

    if "rlnRandomSubset" in parts.columns:
        np.testing.assert_array_equal(pdata.half, parts["rlnRandomSubset"].to_numpy(int) - 1)
    else:
        assert pdata.half is None
    if "rlnOpticsGroup" in parts.columns:
        np.testing.assert_array_equal(pdata.optics_group, parts["rlnOpticsGroup"].to_numpy(int))
    np.testing.assert_array_equal(pdata.scale, 1.0)
    np.testing.assert_array_equal(pdata.image_sign, 1.0)


def test_six_optics_groups_values_from_the_right_group():
    path = fixture("relion31.6opticsgroups.star")
    pdata = load_particles(path, with_images=False)
    parts, optics = raw_star(path)
    assert len(optics) == 6 and sorted(np.unique(pdata.optics_group)) == [1, 2, 3, 4, 5, 6]
    assert pdata.box == 196
    for _, row in optics.iterrows():
        sel = pdata.optics_group == int(row["rlnOpticsGroup"])
        assert sel.any()
        np.testing.assert_array_equal(pdata.apix[sel], float(row["rlnImagePixelSize"]))
        np.testing.assert_array_equal(pdata.ctf.voltage_kV[sel], float(row["rlnVoltage"]))
        np.testing.assert_array_equal(pdata.ctf.cs_mm[sel], float(row["rlnSphericalAberration"]))
        np.testing.assert_array_equal(pdata.ctf.amp_contrast[sel], float(row["rlnAmplitudeContrast"]))
        sx = parts.loc[sel, "rlnOriginXAngst"].to_numpy(np.float64) / float(row["rlnImagePixelSize"])
        np.testing.assert_allclose(pdata.shifts_px[sel, 0], sx, atol=1e-12)
    # the groups really differ (1.24 vs 1.25 Å, Cs 2.6 vs 2.7 mm): a wrong lookup would show
    assert len(np.unique(pdata.apix)) > 1 and len(np.unique(pdata.ctf.cs_mm)) > 1


def test_relion31_with_images():
    path = fixture("relion31.star")
    raw = raw_stack("relion31.mrcs")
    pdata = load_particles(path)
    parts, _ = raw_star(path)
    idx = np.array([int(s.split("@")[0]) - 1 for s in parts["rlnImageName"]])
    assert pdata.box == raw.shape[-1] == 256
    np.testing.assert_array_equal(pdata.read_images(), raw[idx])
    np.testing.assert_array_equal(pdata.read_images([3, 1]), raw[idx[[3, 1]]])


@pytest.mark.parametrize("name", ["empiar_10076_7.star", "empiar_10076_7.cs"])
def test_empiar_with_images(name):
    path = fixture(name)
    raw = raw_stack("empiar_10076_7.mrc")
    pdata = load_particles(path)
    assert len(pdata) == 7 and pdata.box == 320
    sign = -1.0 if name.endswith(".cs") else 1.0  # cryoSPARC blob/sign = -1 is applied on reading
    np.testing.assert_array_equal(pdata.read_images(), sign * raw)
    assert pdata.rotations is None
    np.testing.assert_allclose(pdata.apix, 5.0 * 1e4 / 38168, rtol=1e-6)


def test_empiar_star_and_cs_agree():
    s = load_particles(fixture("empiar_10076_7.star"), with_images=False)
    c = load_particles(fixture("empiar_10076_7.cs"), with_images=False)
    np.testing.assert_allclose(c.ctf.defocus_u_A, s.ctf.defocus_u_A, rtol=1e-6)
    np.testing.assert_allclose(c.ctf.defocus_v_A, s.ctf.defocus_v_A, rtol=1e-6)
    np.testing.assert_allclose(c.ctf.astig_angle_rad, s.ctf.astig_angle_rad, rtol=1e-6)
    np.testing.assert_allclose(c.apix, s.apix, rtol=1e-6)


@pytest.mark.parametrize("name", ["toy_projections.star", "toy_projections.txt", "toy_projections.mrcs"])
def test_toy_projections_images(name):
    path = fixture(name)
    raw = raw_stack("toy_projections.mrcs")
    pdata = load_particles(path)
    assert len(pdata) == 1000 and pdata.box == 30
    ind = np.array([0, 1, 499, 998, 999])
    np.testing.assert_array_equal(pdata.read_images(ind), raw[ind])


# ---------------------------------------------------------------- cryoSPARC .cs


@pytest.mark.parametrize("name", CS_FILES)
def test_cs_metadata_matches_hand_parse(name):
    path = fixture(name)
    pdata = load_particles(path, with_images=False)
    raw = np.load(path)
    names = raw.dtype.names
    n = len(raw)
    assert len(pdata) == n and pdata.kind == "cs"
    np.testing.assert_allclose(pdata.apix, raw["blob/psize_A"].astype(np.float64))
    assert pdata.box == int(raw["blob/shape"][0, 0])
    if "alignments3D/pose" in names:
        ref = np.stack([Rotation.from_rotvec(p).as_matrix().T for p in raw["alignments3D/pose"].astype(np.float64)])
        np.testing.assert_allclose(pdata.rotations, ref, atol=1e-12)
        ratio = raw["alignments3D/psize_A"].astype(np.float64) / raw["blob/psize_A"].astype(np.float64)
        np.testing.assert_allclose(pdata.shifts_px, raw["alignments3D/shift"].astype(np.float64) * ratio[:, None])
        np.testing.assert_allclose(pdata.scale, raw["alignments3D/alpha"].astype(np.float64))
        np.testing.assert_array_equal(pdata.half, raw["alignments3D/split"].astype(int))
    else:  # no 3-D alignments (2-D classification export, or import only)
        assert pdata.rotations is None and pdata.half is None
        np.testing.assert_array_equal(pdata.shifts_px, 0.0)
    ctf = pdata.ctf
    np.testing.assert_allclose(ctf.defocus_u_A, raw["ctf/df1_A"].astype(np.float64))
    np.testing.assert_allclose(ctf.defocus_v_A, raw["ctf/df2_A"].astype(np.float64))
    np.testing.assert_allclose(ctf.astig_angle_rad, raw["ctf/df_angle_rad"].astype(np.float64))
    np.testing.assert_allclose(ctf.voltage_kV, raw["ctf/accel_kv"].astype(np.float64))
    np.testing.assert_allclose(ctf.cs_mm, raw["ctf/cs_mm"].astype(np.float64))
    np.testing.assert_allclose(ctf.amp_contrast, raw["ctf/amp_contrast"].astype(np.float64))
    np.testing.assert_allclose(ctf.phase_shift_rad, raw["ctf/phase_shift_rad"].astype(np.float64))
    np.testing.assert_array_equal(pdata.image_sign, raw["blob/sign"].astype(np.float64))
    np.testing.assert_array_equal(pdata.optics_group, raw["ctf/exp_group_id"].astype(int))


def test_cs_with_3d_alignments_has_real_poses():
    pdata = load_particles(fixture("cryosparc_P12_J24_001_particles.cs"), with_images=False)
    assert pdata.rotations.shape == (2019, 3, 3)
    np.testing.assert_allclose(pdata.rotations @ pdata.rotations.transpose(0, 2, 1), np.eye(3)[None].repeat(2019, 0),
                               atol=1e-6)
    assert np.abs(pdata.shifts_px).max() > 1  # shifts in pixels, not fractions of the box
    assert set(np.unique(pdata.half)) == {0, 1}


# ---------------------------------------------------------------- cryoDRGN pkls


def test_toy_stack_with_poses_pkl():
    stack, pkl = fixture("toy_projections.mrcs"), fixture("toy_rot_trans.pkl")
    with open(pkl, "rb") as f:
        rot, trans = pickle.load(f)
    pdata = load_particles(stack, poses=pkl)
    assert pdata.kind == "stack" and len(pdata) == 1000 and pdata.D == 30
    np.testing.assert_array_equal(pdata.rotations, np.asarray(rot, np.float64))
    np.testing.assert_allclose(pdata.shifts_px, np.asarray(trans, np.float64) * 30, rtol=1e-12)


def test_ctf_pkl_units():
    pkl = fixture("test_ctf.pkl")
    with open(pkl, "rb") as f:
        arr = np.asarray(pickle.load(f), dtype=np.float64)
    ctf, Ds, apix = read_ctf_pkl(pkl)
    assert len(ctf) == len(arr) == 1000
    np.testing.assert_array_equal(Ds, arr[:, 0])
    np.testing.assert_array_equal(apix, arr[:, 1])
    np.testing.assert_array_equal(ctf.defocus_u_A, arr[:, 2])  # Å
    np.testing.assert_array_equal(ctf.defocus_v_A, arr[:, 3])
    np.testing.assert_allclose(ctf.astig_angle_rad, np.deg2rad(arr[:, 4]))  # ° → rad
    np.testing.assert_array_equal(ctf.voltage_kV, arr[:, 5])
    np.testing.assert_array_equal(ctf.cs_mm, arr[:, 6])
    np.testing.assert_array_equal(ctf.amp_contrast, arr[:, 7])
    np.testing.assert_allclose(ctf.phase_shift_rad, np.deg2rad(arr[:, 8]))
    np.testing.assert_allclose(ctf.phase_shift_rad, np.pi / 2)  # the file holds 90°
    # with the matching stack: per-particle pixel size from the pkl
    pdata = load_particles(fixture("toy_projections.mrcs"), ctf=pkl)
    np.testing.assert_array_equal(pdata.apix, arr[:, 1])
    np.testing.assert_array_equal(pdata.ctf.defocus_u_A, arr[:, 2])
