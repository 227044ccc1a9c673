"""Runs written by cryoDRGN itself: loading, maps against cryoDRGN's ``eval_vol``, analyze / filter.

References (``tests/data``, made by ``benchmarks/make_cryodrgn_reference.py`` with cryoDRGN 4.3.1):
``cryodrgn_eval_vol_ref.npz`` holds ``rows`` (particles of the fixture's z.pkl), ``vol16``
(``eval_vol --downsample 16`` at those rows) and ``vol32`` (``--downsample 32`` at the first);
the latents are read from the fixture, not stored. ``cryodrgn_ft_run`` is a tiny
``domain: fourier`` model with ``ref.npz`` (its latent points ``z`` and ``eval_vol`` maps ``vol``).
Measured (2026-11-30): max abs error 0.0 (bit-identical float32) for all of them, and at full
size (64³) too.
"""

from pathlib import Path

import numpy as np
import pytest

from cryo_napari.cli.main import main as cli

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def drgn_run():
    run = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "cryodrgn-run"
    if not (run / "weights.pkl").exists():
        pytest.skip("../shared/fixtures/cryodrgn-run not present")
    return run


def _assert_close(ours, ref, rel=1e-5):
    err = np.abs(ours - ref).max()
    assert err <= rel * np.abs(ref).max(), (err, np.abs(ref).max())


def test_reference_holds_no_fixture_latents():
    ref = np.load(DATA / "cryodrgn_eval_vol_ref.npz")
    assert sorted(ref.files) == ["rows", "vol16", "vol32"]


def test_cryodrgn_run_maps_match_eval_vol(drgn_run):
    from cryo_napari.analysis.runs import load_latent_run
    from cryo_napari.io.cryodrgn import read_z_pkl

    run = load_latent_run(drgn_run)
    assert run.kind == "cryodrgn" and run.z.shape == (4549, 8) and run.D == 64 and run.zdim == 8
    ref = np.load(DATA / "cryodrgn_eval_vol_ref.npz")
    rows = ref["rows"]
    z = read_z_pkl(drgn_run / "z.pkl")[rows]
    np.testing.assert_array_equal(run.z[rows], z)
    v16 = run.generate_volumes(z, 16)
    assert v16.shape == ref["vol16"].shape
    _assert_close(v16, ref["vol16"])
    _assert_close(run.generate_volumes(z[:1], 32), ref["vol32"])
    assert run.apix_at(16) == pytest.approx(4 * run.apix)
    # different latents give different maps (the comparison is not trivially satisfied)
    assert np.abs(v16[0] - v16[1]).max() > 0.05 * np.abs(v16[0]).max()


def test_fourier_domain_run_matches_eval_vol():
    from cryo_napari.analysis.cryodrgn_run import load_cryodrgn_run

    run = load_cryodrgn_run(DATA / "cryodrgn_ft_run")
    ref = np.load(DATA / "cryodrgn_ft_run" / "ref.npz")
    assert run.D == 16 and run.zdim == 4 and run.config["model_args"]["domain"] == "fourier"
    vols = run.generate_volumes(ref["z"])
    _assert_close(vols, ref["vol"])
    assert np.abs(vols[0] - vols[1]).max() > 0.05 * np.abs(vols[0]).max()


def test_analyze_and_filter_work_on_a_cryodrgn_run(drgn_run, tmp_path):
    import json

    from cryo_napari.analysis.filtering import latent_norm_zscore
    from cryo_napari.io.cryodrgn import read_index_pkl, read_z_pkl

    out = tmp_path / "an"
    assert cli(["analyze", str(drgn_run), "--skip-umap", "--ksample", "3", "--pc", "1", "--pc-points", "2",
                "-D", "16", "-o", str(out)]) == 0
    assert np.load(out / "labels.npy").shape == (4549,)
    assert all((out / "kmeans3" / f"vol_{i:03d}.mrc").exists() for i in range(3))
    assert (out / "pc1" / "vol_001.mrc").exists() and (out / "analysis.ipynb").exists()
    flt = tmp_path / "flt"
    assert cli(["filter", str(drgn_run), "--zscore", "2", "-o", str(flt)]) == 0
    expected = np.nonzero(latent_norm_zscore(read_z_pkl(drgn_run / "z.pkl")) <= 2)[0]
    np.testing.assert_array_equal(read_index_pkl(flt / "ind.pkl"), expected)
    report = json.loads((flt / "filter.json").read_text())
    assert report["kept"] == len(expected) and 0 < report["removed"] < 4549 * 0.1
