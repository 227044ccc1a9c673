"""Bad input through the processing commands: one line naming the file and the problem, exit 2,
no traceback, and no output directory left looking complete.

Each case starts from the small simulated dataset (256 particles, 32 px) and breaks one thing.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from cryo_napari.cli import main as cli_main
from cryo_napari.io.cryosparc import write_cs
from cryo_napari.io.mrc import read_mrc
from cryo_napari.jobs.rundir import CONFIG_VERSION, RunDir

pytestmark = pytest.mark.reliability

SAMPLE = Path(__file__).resolve().parents[1] / "cryo_napari" / "sample_data"


@pytest.fixture
def sd(tmp_path):
    """A private copy of the sample dataset."""
    d = tmp_path / "sd"
    shutil.copytree(SAMPLE, d)
    return d


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run ``cryo-napari ARGS`` in-process → (exit code, stdout, stderr)."""

    def run(*argv):
        rc = cli_main.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def assert_one_line_error(rc, out, err, name, *words):
    assert rc == 2, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and name in lines[0], err
    assert "Traceback" not in err + out
    for w in words:
        assert w in lines[0], (w, lines[0])


def _star(sd):
    d = starfile.read(sd / "particles.star", always_dict=True)
    return d["optics"], d["particles"]


def _write_star(path, optics, parts):
    starfile.write({"optics": optics, "particles": parts}, path, overwrite=True)
    return path


def _no_complete_outputs(outdir: Path):
    """Nothing under ``outdir`` looks finished (no map, no final.json)."""
    if not outdir.exists():
        return True
    names = {p.name for p in outdir.rglob("*")}
    return not ({"map.mrc", "final.json"} & names)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nonfinite_defocus(sd, cli, tmp_path, value):
    optics, parts = _star(sd)
    parts.loc[3, "rlnDefocusU"] = value
    star = _write_star(sd / "bad_defocus.star", optics, parts)
    assert_one_line_error(*cli("backproject", star, "-o", tmp_path / "bp"), "bad_defocus.star", "row 4")
    assert _no_complete_outputs(tmp_path / "bp")


def test_inf_angle(sd, cli, tmp_path):
    optics, parts = _star(sd)
    parts.loc[7, "rlnAngleTilt"] = np.inf
    star = _write_star(sd / "inf_angle.star", optics, parts)
    assert_one_line_error(*cli("backproject", star, "-o", tmp_path / "bp"), "inf_angle.star")


def test_optics_group_without_pixel_size(sd, cli, tmp_path):
    optics, parts = _star(sd)
    o2 = pd.concat([optics, optics], ignore_index=True).astype(object)
    o2.loc[1, "rlnOpticsGroup"] = 2
    o2.loc[1, "rlnOpticsGroupName"] = "opticsGroup2"
    o2.loc[1, "rlnImagePixelSize"] = np.nan
    parts.loc[100:, "rlnOpticsGroup"] = 2
    star = _write_star(sd / "optics.star", o2, parts)
    assert_one_line_error(*cli("backproject", star, "-o", tmp_path / "bp"), "optics.star", "pixel size")


def test_nan_pixels_in_stack(sd, cli, tmp_path):
    with mrcfile.open(sd / "particles.mrcs") as m:
        a = m.data.copy()
    a[5, 3, 3] = np.nan
    with mrcfile.new(sd / "particles.mrcs", overwrite=True) as m:
        m.set_data(a)
    assert_one_line_error(*cli("backproject", sd / "particles.star", "-o", tmp_path / "bp"), "particles.star", "NaN")
    rc, out, err = cli("info", sd / "particles.star")  # info still summarises, with a warning
    assert rc == 0 and "NaN/inf" in out


def test_duplicate_particles(sd, cli, tmp_path):
    optics, parts = _star(sd)
    parts = pd.concat([parts, parts.iloc[[10, 11]]], ignore_index=True)
    star = _write_star(sd / "dup.star", optics, parts)
    assert_one_line_error(*cli("backproject", star, "-o", tmp_path / "bp"), "dup.star", "2 duplicate", "row 257")
    rc, out, _ = cli("info", star)
    assert rc == 0 and "2 duplicate" in out


def test_symmetry_expansion_is_not_duplication(sd, cli, tmp_path):
    optics, parts = _star(sd)
    extra = parts.iloc[:20].copy()
    extra["rlnAnglePsi"] = extra["rlnAnglePsi"] + 180.0  # C2-expanded copies: same image, other pose
    star = _write_star(sd / "c2.star", optics, pd.concat([parts, extra], ignore_index=True))
    rc, out, err = cli("backproject", star, "-o", tmp_path / "bp")
    assert rc == 0, err


def test_cs_without_alignments(sd, cli, tmp_path):
    cs = np.load(sd / "particles.cs")
    keep = [n for n in cs.dtype.names if not n.startswith("alignments3D")]
    import numpy.lib.recfunctions as rf

    write_cs(sd / "noalign.cs", rf.repack_fields(cs[keep]))
    for cmd in ("backproject", "train-vae", "class3d"):
        assert_one_line_error(*cli(cmd, sd / "noalign.cs", "-o", tmp_path / cmd), "noalign.cs", "alignments3D/pose")
        assert _no_complete_outputs(tmp_path / cmd)


def test_poses_pkl_for_other_particles(sd, cli, tmp_path):
    rot, trans = pickle.load(open(sd / "poses.pkl", "rb"))
    with open(sd / "short.pkl", "wb") as f:
        pickle.dump((rot[:100], trans[:100]), f)
    assert_one_line_error(*cli("backproject", sd / "particles.mrcs", "--poses", sd / "short.pkl", "--ctf",
                               sd / "ctf.pkl", "-o", tmp_path / "bp"), "short.pkl", "100 poses")


def test_star_for_a_different_box(sd, cli, tmp_path):
    optics, parts = _star(sd)
    optics["rlnImageSize"] = 64
    star = _write_star(sd / "box64.star", optics, parts)
    assert_one_line_error(*cli("backproject", star, "-o", tmp_path / "bp"), "box64.star", "64", "32")


def test_non_cubic_initial_map(sd, cli, tmp_path):
    with mrcfile.new(sd / "rect.mrc", overwrite=True) as m:
        m.set_data(np.zeros((32, 32, 30), np.float32))
    assert_one_line_error(*cli("class3d", sd / "particles.star", "-K", "2", "--init-mode", "input",
                               "--init-maps", sd / "rect.mrc", sd / "rect.mrc", "-o", tmp_path / "c3"),
                          "rect.mrc", "cubic")
    assert _no_complete_outputs(tmp_path / "c3")


def test_complex_mode_stack(sd, cli, tmp_path):
    with mrcfile.new(sd / "cplx.mrcs", overwrite=True) as m:
        m.set_data(np.zeros((4, 32, 32), np.complex64))
    rc, out, err = cli("info", sd / "cplx.mrcs")
    assert_one_line_error(rc, out, err, "cplx.mrcs", "mode")


def test_big_endian_stack_reads_the_same(sd, cli, tmp_path):
    """Not an error: a big-endian stack (old software) must read exactly like the little-endian one."""
    a, apix = read_mrc(sd / "particles.mrcs")
    with mrcfile.new(sd / "be.mrcs", overwrite=True) as m:
        m.set_data(a.astype(">f4"))
        m.voxel_size = apix
    b, apix_b = read_mrc(sd / "be.mrcs")
    np.testing.assert_array_equal(a, b)
    assert apix_b == pytest.approx(apix)


def test_run_config_from_a_newer_version(sd, cli, tmp_path):
    rd = RunDir(tmp_path / "run").create()
    rd.write_config({"particles": str(sd / "particles.star")}, kind="train-vae")
    cfg = (rd.path / "config.yaml").read_text()
    (rd.path / "config.yaml").write_text(cfg.replace(f"config_version: {CONFIG_VERSION}",
                                                     f"config_version: {CONFIG_VERSION + 1}"))
    assert_one_line_error(*cli("eval-vol", rd.path, "--z", "0", "0", "-o", tmp_path / "vols"), "config.yaml", "newer")
