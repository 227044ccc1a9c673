"""Writing subsets (STAR keeps the optics table and every column; .cs keeps all fields) and
cryoDRGN pkl round trips."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from cryo_napari.geometry.ctf import CTFParams
from cryo_napari.geometry.rotations import random_rotations
from cryo_napari.io import cryodrgn as drgn
from cryo_napari.io.cryosparc import read_cs, write_cs_subset
from cryo_napari.io.particles import load_indices, load_particles
from cryo_napari.io.star import read_star_tables, write_star_subset

REAL = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real-formats"


def fixture(name: str) -> Path:
    p = REAL / name
    if not p.exists():
        pytest.skip(f"fixture {name} not found")
    return p


def assert_frames_equal(a: pd.DataFrame, b: pd.DataFrame):
    """Same columns in the same order and equal values (numbers to 1e-6 relative, text exactly)."""
    assert list(a.columns) == list(b.columns)
    assert len(a) == len(b)
    for c in a.columns:
        x, y = a[c].reset_index(drop=True), b[c].reset_index(drop=True)
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
            np.testing.assert_allclose(x.to_numpy(np.float64), y.to_numpy(np.float64), rtol=1e-6, atol=1e-6,
                                       err_msg=c)
        else:
            assert x.astype(str).tolist() == y.astype(str).tolist(), c


# ---------------------------------------------------------------- STAR


def test_star_subset_keeps_optics_and_columns(tmp_path):
    src = fixture("relion31.6opticsgroups.star")
    parts, optics = read_star_tables(src)
    groups = parts["rlnOpticsGroup"].astype(int).to_numpy()
    ind = np.nonzero(np.isin(groups, [2, 5]))[0][::2]  # a subset using optics groups 2 and 5 only
    assert set(groups[ind]) == {2, 5}
    dst = write_star_subset(src, tmp_path / "sub.star", ind)

    sub_parts, sub_optics = read_star_tables(dst)
    assert len(sub_parts) == len(ind)
    assert_frames_equal(sub_parts, parts.iloc[ind])
    # optics table: only the groups still used, group numbers unchanged, every column kept
    assert sorted(sub_optics["rlnOpticsGroup"].astype(int)) == [2, 5]
    assert_frames_equal(sub_optics, optics[optics["rlnOpticsGroup"].astype(int).isin([2, 5])])
    # the file is RELION 3.1 style: data_optics then data_particles
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert list(starfile.read(dst, always_dict=True)) == ["optics", "particles"]

    # loading the subset gives the subset of the loaded original
    full = load_particles(src, with_images=False).subset(ind)
    part = load_particles(dst, with_images=False)
    assert len(part) == len(ind) and part.box == full.box
    np.testing.assert_allclose(part.apix, full.apix)
    np.testing.assert_allclose(part.rotations, full.rotations, atol=1e-9)
    np.testing.assert_allclose(part.shifts_px, full.shifts_px, atol=1e-6)
    np.testing.assert_allclose(part.ctf.cs_mm, full.ctf.cs_mm)
    np.testing.assert_allclose(part.ctf.defocus_u_A, full.ctf.defocus_u_A, rtol=1e-9)
    np.testing.assert_array_equal(part.optics_group, full.optics_group)
    np.testing.assert_array_equal(part.half, full.half)


def test_star_subset_of_relion30_file(tmp_path):
    src = fixture("sta_testing_bin8.star")
    parts, optics = read_star_tables(src)
    assert optics is None
    ind = np.array([5, 0, 218, 7])
    dst = write_star_subset(src, tmp_path / "sub.star", ind)
    sub_parts, sub_optics = read_star_tables(dst)
    assert sub_optics is None
    assert_frames_equal(sub_parts, parts.iloc[ind])
    assert len(load_particles(dst, with_images=False)) == 4


# ---------------------------------------------------------------- cryoSPARC


@pytest.mark.parametrize("name", ["cryosparc_P12_J24_001_particles.cs", "empiar_10076_7.cs"])
def test_cs_subset_keeps_all_fields(tmp_path, name):
    src = fixture(name)
    data = read_cs(src)
    ind = np.array([3, 0, 1, len(data) - 1])
    dst = write_cs_subset(src, tmp_path / "sub.cs", ind)
    assert dst.suffix == ".cs" and dst.exists()
    sub = read_cs(dst)
    assert sub.dtype == data.dtype
    for f in data.dtype.names:
        np.testing.assert_array_equal(sub[f], data[f][ind], err_msg=f)
    full = load_particles(src, with_images=False).subset(ind)
    part = load_particles(dst, with_images=False)
    np.testing.assert_array_equal(part.apix, full.apix)
    if full.rotations is not None:
        np.testing.assert_array_equal(part.rotations, full.rotations)
        np.testing.assert_array_equal(part.half, full.half)
    np.testing.assert_array_equal(part.shifts_px, full.shifts_px)


# ---------------------------------------------------------------- cryoDRGN pkls


def test_poses_pkl_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    R, sh, D = random_rotations(20, rng), rng.normal(scale=3, size=(20, 2)), 64
    p = drgn.write_poses_pkl(tmp_path / "poses.pkl", R, sh, D)
    with open(p, "rb") as f:  # cryoDRGN's layout: (rot (N,3,3), trans (N,2) in fractions of the box)
        rot, trans = pickle.load(f)
    np.testing.assert_allclose(rot, R, atol=1e-6)
    np.testing.assert_allclose(trans, sh / D, atol=1e-6)
    R2, sh2 = drgn.read_poses_pkl(p, D)
    np.testing.assert_allclose(R2, R, atol=1e-6)
    np.testing.assert_allclose(sh2, sh, atol=1e-5)
    # a rotations-only pkl gives zero shifts
    with open(tmp_path / "rot.pkl", "wb") as f:
        pickle.dump(R.astype(np.float32), f)
    R3, sh3 = drgn.read_poses_pkl(tmp_path / "rot.pkl", D)
    np.testing.assert_allclose(R3, R, atol=1e-6)
    np.testing.assert_array_equal(sh3, 0.0)


def test_ctf_pkl_round_trip(tmp_path):
    n = 10
    rng = np.random.default_rng(1)
    ctf = CTFParams(rng.uniform(8e3, 3e4, n), rng.uniform(8e3, 3e4, n), rng.uniform(-np.pi, np.pi, n),
                    np.full(n, 300.0), np.full(n, 2.7), np.full(n, 0.07), np.full(n, np.pi / 2), 0.0)
    p = drgn.write_ctf_pkl(tmp_path / "ctf.pkl", ctf, 128, 1.5)
    with open(p, "rb") as f:
        arr = pickle.load(f)
    assert arr.shape == (n, 9)
    np.testing.assert_allclose(arr[:, 4], np.rad2deg(ctf.astig_angle_rad), rtol=1e-5)  # stored in degrees
    np.testing.assert_allclose(arr[:, 8], 90.0, rtol=1e-6)
    back, Ds, apix = drgn.read_ctf_pkl(p)
    np.testing.assert_array_equal(Ds, 128)
    np.testing.assert_allclose(apix, 1.5)
    for name in ("defocus_u_A", "defocus_v_A", "astig_angle_rad", "voltage_kV", "cs_mm", "amp_contrast",
                 "phase_shift_rad"):
        np.testing.assert_allclose(getattr(back, name), getattr(ctf, name), rtol=1e-6, err_msg=name)


def test_z_pkl_round_trip(tmp_path):
    z = np.random.default_rng(2).normal(size=(50, 8)).astype(np.float32)
    p = drgn.write_z_pkl(tmp_path / "z.pkl", z)
    out = drgn.read_z_pkl(p)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, z)


def test_index_pkl_round_trip(tmp_path):
    ind = np.array([5, 2, 9, 0])
    p = drgn.write_index_pkl(tmp_path / "ind.pkl", ind)
    np.testing.assert_array_equal(drgn.read_index_pkl(p), ind)
    np.testing.assert_array_equal(load_indices(p, 10), ind)
    np.save(tmp_path / "ind.npy", ind)
    np.testing.assert_array_equal(load_indices(tmp_path / "ind.npy", 10), ind)
    (tmp_path / "ind.txt").write_text("5\n2\n9\n0\n")
    np.testing.assert_array_equal(load_indices(tmp_path / "ind.txt", 10), ind)
