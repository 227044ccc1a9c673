"""``cryo-napari info``: real fixtures summarise (exit 0), bad input gives one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cryo_napari.cli import info as info_mod
from cryo_napari.cli import main as cli_main
from cryo_napari.geometry.rotations import random_rotations, relion_euler_to_matrix
from cryo_napari.io.cryosparc import write_cs
from cryo_napari.io.mrc import write_mrc

REAL = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real-formats"

#: fixture → number of particles (counted in the raw files)
COUNTS = {
    "relion31.star": 5, "relion31.mrcs": 5, "relion31.6opticsgroups.star": 139, "relion5.star": 17,
    "empiar_10076_7.star": 7, "empiar_10076_7.cs": 7, "empiar_10076_7.mrc": 7,
    "toy_projections.star": 1000, "toy_projections.txt": 1000, "toy_projections.mrcs": 1000,
    "sta_testing_bin8.star": 219, "FinalRefinement-OriginalParticles-PfCRT.star": 5,
    "cryosparc_P12_J24_001_particles.cs": 2019, "cryosparc_J2_particles_exported.cs": 22,
}


@pytest.fixture
def info(monkeypatch, capsys):
    """Run ``cryo-napari info ARGS`` in-process → (exit code, stdout, stderr)."""
    # only this subcommand is built: a sibling subcommand module that is missing or broken while
    # others work on it must not decide these tests
    monkeypatch.setattr(cli_main, "COMMANDS", {"info": cli_main.COMMANDS["info"]})

    def run(*argv):
        rc = cli_main.main(["info", *map(str, argv)])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def assert_one_line_error(rc, out, err, name):
    assert rc == 2, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and name in lines[0], err
    assert "Traceback" not in err + out


# ---------------------------------------------------------------- real fixtures


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_real_fixture(info, name):
    path = REAL / name
    if not path.exists():
        pytest.skip(f"fixture {name} not found")
    rc, out, err = info(path)
    assert rc == 0, err
    assert f"particles: {COUNTS[name]}\n" in out
    assert "Traceback" not in err


def test_six_optics_groups_json(info):
    path = REAL / "relion31.6opticsgroups.star"
    if not path.exists():
        pytest.skip("fixture not found")
    rc, out, _ = info(path, "--json")
    assert rc == 0
    d = json.loads(out)
    assert d["format"] == "RELION 3.1+ (optics table)" and d["particles"] == 139 and d["box_px"] == 196
    assert d["images"] == "not found (metadata only)"
    assert d["optics_groups"]["count"] == 6
    assert sum(g["particles"] for g in d["optics_groups"]["groups"]) == 139
    assert {g["name"] for g in d["optics_groups"]["groups"]} == {f"opticsGroup{i}" for i in range(1, 7)}
    assert d["pixel_size_A"] == [1.24, 1.25]
    assert 0 < d["poses"]["coverage"] < 1 and d["half_sets"] == [74, 65]


def test_cs_with_poses_reports_scale_and_sign(info):
    path = REAL / "cryosparc_P12_J24_001_particles.cs"
    if not path.exists():
        pytest.skip("fixture not found")
    rc, out, _ = info(path)
    assert rc == 0
    assert "format: cryoSPARC" in out and "poses: present" in out
    assert "per-particle scale:" in out and "image sign: -1" in out


# ---------------------------------------------------------------- synthetic good input


def make_stack(tmp_path, name="stack.mrcs", n=4, D=16):
    rng = np.random.default_rng(0)
    return write_mrc(tmp_path / name, rng.normal(size=(n, D, D)).astype(np.float32), apix=2.0)


def write_star(path, rows, cols=("rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")):
    text = "data_\n\nloop_\n" + "".join(f"_{c}\n" for c in cols) + "".join(" ".join(map(str, r)) + "\n" for r in rows)
    Path(path).write_text(text)
    return Path(path)


def test_star_with_stack_and_json(info, tmp_path):
    make_stack(tmp_path)
    star = write_star(tmp_path / "p.star", [(f"{i + 1}@stack.mrcs", 10 * i, 30, 5) for i in range(4)])
    rc, out, _ = info(star, "--json")
    assert rc == 0
    d = json.loads(out)
    assert d["particles"] == 4 and d["images"] == "found" and d["box_px"] == 16
    assert d["stack"]["images"] == 4 and d["stack"]["voxel_size_A"] == 2.0
    assert d["poses"]["shifts_px"] == [0.0, 0.0] and d["ctf"] is None


def test_missing_stack_falls_back_to_metadata(info, tmp_path):
    star = write_star(tmp_path / "p.star", [(f"{i + 1}@elsewhere/stack.mrcs", 0, 0, 0) for i in range(3)])
    rc, out, err = info(star)
    assert rc == 0, err
    assert "images: not found (metadata only)" in out and "particles: 3" in out
    # with --datadir the stack is found
    (tmp_path / "data").mkdir()
    make_stack(tmp_path / "data")
    rc, out, _ = info(star, "--datadir", tmp_path / "data")
    assert rc == 0 and "images: found" in out and "stack: 3 images" in out


def test_cs_without_alignments_is_not_an_error(info, tmp_path):
    make_stack(tmp_path)
    dt = [("blob/path", "S16"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)), ("blob/psize_A", "<f4"),
          ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4")]
    a = np.zeros(4, dt)
    a["blob/path"], a["blob/idx"], a["blob/shape"], a["blob/psize_A"] = b"stack.mrcs", np.arange(4), 16, 2.0
    a["ctf/df1_A"], a["ctf/df2_A"] = 1.5e4, 1.4e4
    cs = write_cs(tmp_path / "p.cs", a)
    rc, out, err = info(cs)
    assert rc == 0, err
    assert "poses: none" in out and "particles: 4" in out and "images: found" in out


def test_pose_coverage():
    rng = np.random.default_rng(0)
    full = info_mod.pose_coverage(random_rotations(5000, rng))
    assert full["coverage"] > 0.98
    assert full["top_views_tilt_lt_15"] == pytest.approx(1 - np.cos(np.radians(15)), abs=0.02)
    # d and -d are the same view: tilt 10° and 170° fill the same cells
    eul = np.column_stack([rng.uniform(-180, 180, 300), np.full(300, 10.0), np.zeros(300)])
    up = info_mod.pose_coverage(relion_euler_to_matrix(eul))
    down = info_mod.pose_coverage(relion_euler_to_matrix(eul + [180, 160, 0]))  # −d: rot+180, tilt 170
    assert up["coverage"] == down["coverage"] < 0.05
    assert up["top_views_tilt_lt_15"] == down["top_views_tilt_lt_15"] == 1.0
    cells = info_mod.hemisphere_cells()
    assert cells.shape == (info_mod.N_CELLS, 3) and (cells[:, 2] > 0).all()


# ---------------------------------------------------------------- bad input


@pytest.mark.reliability
def test_truncated_stack(info, tmp_path):
    p = make_stack(tmp_path, "trunc.mrcs")
    size = p.stat().st_size
    with open(p, "r+b") as f:
        f.truncate(size - 300)
    assert_one_line_error(*info(p), "trunc.mrcs")
    # the same stack named by a STAR file
    star = write_star(tmp_path / "t.star", [("1@trunc.mrcs", 0, 0, 0)])
    assert_one_line_error(*info(star), "trunc.mrcs")


@pytest.mark.reliability
def test_stack_truncated_inside_header(info, tmp_path):
    p = make_stack(tmp_path, "short.mrcs")
    with open(p, "r+b") as f:
        f.truncate(500)
    assert_one_line_error(*info(p), "short.mrcs")


@pytest.mark.reliability
def test_not_an_mrc_renamed(info, tmp_path):
    p = tmp_path / "fake.mrcs"
    p.write_text("this is a text file, not an MRC stack\n" * 40)
    assert_one_line_error(*info(p), "fake.mrcs")


@pytest.mark.reliability
def test_stack_shorter_than_star_indices(info, tmp_path):
    make_stack(tmp_path, n=4)
    star = write_star(tmp_path / "long.star", [(f"{i + 1}@stack.mrcs", 0, 0, 0) for i in range(6)])
    rc, out, err = info(star)
    assert_one_line_error(rc, out, err, "long.star")
    assert "stack.mrcs" in err and "4 images" in err


@pytest.mark.reliability
def test_volume_is_not_a_stack(info, tmp_path):
    vol = write_mrc(tmp_path / "map.mrc", np.zeros((8, 8, 8), np.float32), is_stack=False)
    rc, out, err = info(vol)
    assert_one_line_error(rc, out, err, "map.mrc")
    assert "volume" in err


@pytest.mark.reliability
def test_star_without_image_names(info, tmp_path):
    star = write_star(tmp_path / "noname.star", [(10, 20, 30), (11, 21, 31)],
                      cols=("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))
    rc, out, err = info(star)
    assert_one_line_error(rc, out, err, "noname.star")
    assert "rlnImageName" in err


@pytest.mark.reliability
def test_star_with_nan_angles(info, tmp_path):
    make_stack(tmp_path)
    star = write_star(tmp_path / "nan.star", [("1@stack.mrcs", 10, 20, 30), ("2@stack.mrcs", 10, "nan", 30)])
    rc, out, err = info(star)
    assert_one_line_error(rc, out, err, "nan.star")
    assert "NaN" in err


@pytest.mark.reliability
@pytest.mark.parametrize("text", ["", "\x00\x01 not a star file"])
def test_unreadable_star(info, tmp_path, text):
    star = tmp_path / "bad.star"
    star.write_text(text)
    assert_one_line_error(*info(star), "bad.star")


@pytest.mark.reliability
def test_not_a_cs_file(info, tmp_path):
    cs = tmp_path / "bad.cs"
    cs.write_text("not numpy")
    assert_one_line_error(*info(cs), "bad.cs")


@pytest.mark.reliability
def test_unsupported_extension(info, tmp_path):
    p = tmp_path / "particles.xyz"
    p.write_text("1 2 3\n")
    rc, out, err = info(p)
    assert_one_line_error(rc, out, err, "particles.xyz")
    assert "unsupported" in err


@pytest.mark.reliability
@pytest.mark.parametrize("name", ["missing.star", "missing.cs", "missing.mrcs", "missing.txt", "missing.xyz"])
def test_missing_file(info, tmp_path, name):
    rc, out, err = info(tmp_path / name)
    assert_one_line_error(rc, out, err, name)
    assert "not found" in err


@pytest.mark.reliability
def test_txt_list_naming_a_missing_stack(info, tmp_path):
    make_stack(tmp_path)
    lst = tmp_path / "list.txt"
    lst.write_text("stack.mrcs\ngone.mrcs\n")
    rc, out, err = info(lst)
    assert_one_line_error(rc, out, err, "list.txt")
    assert "gone.mrcs" in err


@pytest.mark.reliability
def test_binary_txt_list(info, tmp_path):
    lst = tmp_path / "binary.txt"
    lst.write_bytes(bytes(range(256)) * 4)
    assert_one_line_error(*info(lst), "binary.txt")
