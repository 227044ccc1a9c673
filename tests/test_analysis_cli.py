"""analyze / traverse / filter / occupancy end to end on a tiny trained VAE run (D=16, zdim 4).

The run is trained for one epoch on 200 of 240 simulated particles (``--ind``), so filtered
indices must map back to rows of the particle file. UMAP is skipped (numba compile time).
"""

import json

import numpy as np
import pytest

from cryo_napari.cli.main import main as cli
from cryo_napari.io.mrc import read_mrc

N_FILE, IND = 240, np.arange(20, 220)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from cryo_napari.simulate.heterogeneity import discrete_states, synthetic_map
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    root = tmp_path_factory.mktemp("analysis")
    maps, _, _ = discrete_states(synthetic_map(16, seed=3))
    paths = simulate_dataset(maps, root / "data", SimulationParams(n_particles=N_FILE, snr=1.0, apix=6.0, seed=5))
    np.save(root / "data" / "ind.npy", IND)
    small = ["--enc-dim", "32", "--dec-dim", "32", "--enc-layers", "2", "--dec-layers", "2", "--seed", "3",
             "-n", "1", "--zdim", "4", "--batch-size", "16"]
    run = root / "run"
    assert cli(["train-vae", str(paths["star"]), "-o", str(run), "--ind", str(root / "data" / "ind.npy"), *small]) == 0
    return {"run": run, "paths": paths, "root": root}


@pytest.fixture(scope="module")
def analyzed(trained):
    out = trained["root"] / "analyze"
    assert cli(["analyze", str(trained["run"]), "--skip-umap", "--ksample", "4", "--pc", "2", "--pc-points", "3",
                "-o", str(out)]) == 0
    return out


def test_analyze_outputs(trained, analyzed):
    from cryo_napari.analysis.runs import load_latent_run

    run = load_latent_run(trained["run"])
    out = analyzed
    labels = np.load(out / "labels.npy")
    centers = np.loadtxt(out / "centers.txt", ndmin=2)
    cind = np.loadtxt(out / "centers_ind.txt", dtype=int, ndmin=1)
    assert labels.shape == (200,) and set(labels) == {0, 1, 2, 3}
    assert centers.shape == (4, 4) and cind.shape == (4,)
    np.testing.assert_allclose(centers, run.z[cind], atol=1e-5)  # on-data centres
    for k in range(4):  # the centre particle is the member nearest its cluster mean
        mean = run.z[labels == k].mean(0)
        d = np.linalg.norm(run.z - mean, axis=1)
        assert cind[k] == np.argmin(d)
    vols = [read_mrc(out / "kmeans4" / f"vol_{i:03d}.mrc") for i in range(4)]
    assert not (out / "kmeans4" / "vol_004.mrc").exists()
    np.testing.assert_allclose(vols[2][0], run.generate_volumes(run.z[cind[2]])[0], atol=1e-5)
    assert vols[0][1] == pytest.approx(6.0, rel=1e-4)
    pca = np.load(out / "pca.npy")
    for j in (1, 2):
        ind = np.loadtxt(out / f"pc{j}" / "ind.txt", dtype=int)
        assert len(ind) == 3 and all((out / f"pc{j}" / f"vol_{i:03d}.mrc").exists() for i in range(3))
        s = pca[ind, j - 1]  # on-data points ordered along PC j, within its 1st-99th percentile span
        assert np.all(np.diff(s) > 0)
        lo, hi = np.percentile(pca[:, j - 1], [1, 99])
        assert s[0] < lo + 0.25 * (hi - lo) and s[-1] > hi - 0.25 * (hi - lo)
    for png in ("pca_scatter", "pca_density", "pca_variance"):
        assert (out / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "analysis.json").read_text())
    assert sum(summary["explained_variance_ratio"]) == pytest.approx(1.0, abs=1e-5)
    assert summary["cluster_sizes"] == np.bincount(labels).tolist() and not summary["umap"]
    assert not (out / "umap.npy").exists()


@pytest.mark.slow  # ~19 s (kernel start + imports)
def test_notebook_executes_headless(trained, analyzed):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(analyzed / "analysis.ipynb", as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(analyzed)}}).execute()
    vol, apix = read_mrc(analyzed / "notebook_vol.mrc")
    assert vol.shape == (16, 16, 16) and apix == pytest.approx(6.0, rel=1e-4)
    labels = np.load(analyzed / "labels.npy")
    rows = np.load(analyzed / "selection" / "indices.npy")
    np.testing.assert_array_equal(rows, IND[labels == 0])
    assert (analyzed / "selection" / "particles.star").exists()


def _series(out):
    meta = json.loads((out / "series.json").read_text())
    series = np.load(out / "series.npy")
    assert series.shape == (len(meta["z"]), 16, 16, 16)
    for i in range(len(series)):
        np.testing.assert_array_equal(series[i], read_mrc(out / f"vol_{i:03d}.mrc")[0])
    return meta, series


def test_traverse_graph_direct_pc(trained, tmp_path):
    from cryo_napari.analysis.runs import load_latent_run
    from cryo_napari.analysis.traversal import knn_graph

    run = load_latent_run(trained["run"])
    a, b, c = 3, 150, 77
    assert cli(["traverse", str(trained["run"]), "--graph", str(a), str(b), str(c), "-o", str(tmp_path / "g")]) == 0
    meta, _ = _series(tmp_path / "g")
    ind = meta["ind"]
    assert ind[0] == a and ind[-1] == c and b in ind and len(set(ind)) == len(ind)
    g, cut = knn_graph(run.z)
    assert cut == pytest.approx(meta["max_dist"])
    assert all(g[i, j] > 0 for i, j in zip(ind[:-1], ind[1:]))  # every step is a graph edge
    assert sum(meta["segment_lengths"]) >= sum(meta["straight_lengths"]) - 1e-6

    assert cli(["traverse", str(trained["run"]), "--direct", "5", "9", "-n", "4", "-o", str(tmp_path / "d")]) == 0
    meta, series = _series(tmp_path / "d")
    np.testing.assert_allclose(meta["z"][0], run.z[5], atol=1e-6)
    np.testing.assert_allclose(meta["z"][-1], run.z[9], atol=1e-6)
    np.testing.assert_allclose(meta["z"][1], run.z[5] + (run.z[9] - run.z[5]) / 3, atol=1e-5)
    np.testing.assert_allclose(series[-1], run.generate_volumes(run.z[9])[0], atol=1e-5)

    assert cli(["traverse", str(trained["run"]), "--pc", "1", "-n", "3", "-o", str(tmp_path / "p")]) == 0
    meta, _ = _series(tmp_path / "p")
    assert meta["kind"] == "pc" and len(meta["ind"]) == 3 and meta["voxel_size_A"] == pytest.approx(6.0)


def test_filter_rules_outputs_and_counts(trained, analyzed, tmp_path):
    from cryo_napari.analysis import filtering as flt
    from cryo_napari.analysis.runs import load_latent_run
    from cryo_napari.io.cryodrgn import read_index_pkl
    from cryo_napari.io.particles import load_particles

    run = load_latent_run(trained["run"])
    labels = np.load(analyzed / "labels.npy")
    pca = np.load(analyzed / "pca.npy")
    by_cluster = np.isin(labels, [0, 2])
    by_z = flt.latent_norm_zscore(run.z) <= 0.5
    x0, x1 = (float(v) for v in np.percentile(pca[:, 0], [10, 60]))
    y0, y1 = float(pca[:, 1].min() - 1), float(pca[:, 1].max() + 1)
    poly = tmp_path / "poly.json"
    poly.write_text(json.dumps({"space": "pca", "axes": [0, 1], "vertices": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]}))
    by_poly = (pca[:, 0] > x0) & (pca[:, 0] < x1)
    listed = np.arange(0, 200, 3)
    np.save(tmp_path / "listed.npy", listed)
    by_list = np.isin(np.arange(200), listed)

    base = ["filter", str(trained["run"]), "--labels", str(analyzed / "labels.npy"), "--clusters", "0", "2",
            "--zscore", "0.5", "--polygon", str(poly), "--ind", str(tmp_path / "listed.npy")]
    cases = {"inter": ([], by_cluster & by_z & by_poly & by_list),
             "union": (["--union"], by_cluster | by_z | by_poly | by_list),
             "uninv": (["--union", "--invert"], ~(by_cluster | by_z | by_poly | by_list))}
    for name, (extra, expected) in cases.items():
        assert 0 < expected.sum() < 200, name
        out = tmp_path / name
        assert cli([*base, *extra, "-o", str(out), "--particles", str(trained["paths"]["cs"] if name == "union"
                                                                          else trained["paths"]["star"])]) == 0
        rows = IND[expected]
        np.testing.assert_array_equal(np.load(out / "indices_in_run.npy"), np.nonzero(expected)[0])
        np.testing.assert_array_equal(np.load(out / "indices.npy"), rows)
        np.testing.assert_array_equal(read_index_pkl(out / "ind.pkl"), rows)
        report = json.loads((out / "filter.json").read_text())
        assert [r["kept"] for r in report["rules"]] == [int(m.sum()) for m in (by_cluster, by_z, by_poly, by_list)]
        assert report["kept"] == expected.sum() and report["removed"] == 200 - expected.sum()
        sub = load_particles(out / ("particles.cs" if name == "union" else "particles.star"))
        full = load_particles(trained["paths"]["star"])
        assert len(sub) == len(rows)
        np.testing.assert_allclose(sub.rotations, full.rotations[rows], atol=1e-5)
        np.testing.assert_allclose(sub.read_images(np.arange(2)), full.read_images(rows[:2]), atol=1e-6)
    # the subset works as train-vae --ind on the original file
    sel = load_particles(trained["paths"]["star"], ind=str(tmp_path / "inter" / "ind.pkl"))
    assert len(sel) == cases["inter"][1].sum()


def test_filter_gmm_clusters_and_umap_polygon_with_embedding(trained, tmp_path):
    from cryo_napari.analysis.clustering import gmm
    from cryo_napari.analysis.runs import load_latent_run

    run = load_latent_run(trained["run"])
    labels = gmm(run.z, 3, seed=0).labels
    assert cli(["filter", str(trained["run"]), "--clusters", "1", "--gmm", "--k", "3", "-o", str(tmp_path / "g")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "g" / "indices_in_run.npy"), np.nonzero(labels == 1)[0])
    emb = np.random.default_rng(1).uniform(-1, 1, (200, 2)).astype(np.float32)  # stands in for umap.npy
    np.save(tmp_path / "emb.npy", emb)
    (tmp_path / "tri.json").write_text(json.dumps({"space": "umap", "axes": [1, 0], "vertices": [[-1, -1], [1, -1], [-1, 1]]}))
    assert cli(["filter", str(trained["run"]), "--polygon", str(tmp_path / "tri.json"), "--embedding", str(tmp_path / "emb.npy"),
                "-o", str(tmp_path / "u")]) == 0
    inside = emb[:, 1] + emb[:, 0] < 0  # x = column 1, y = column 0: below the diagonal x + y = 0
    np.testing.assert_array_equal(np.load(tmp_path / "u" / "indices.npy"), IND[inside])


def _one_line_error(capsys, argv, match):
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and match in err, err


def test_bad_inputs_are_one_line_errors(trained, analyzed, tmp_path, capsys):
    run = str(trained["run"])
    _one_line_error(capsys, ["filter", run, "--zscore", "-50", "-o", str(tmp_path / "e")], "selection is empty")
    _one_line_error(capsys, ["filter", run, "-o", str(tmp_path / "e")], "no selection rule")
    np.save(tmp_path / "big.npy", np.array([1, 500]))
    _one_line_error(capsys, ["filter", run, "--ind", str(tmp_path / "big.npy"), "-o", str(tmp_path / "e")],
                    "index 500 out of range for 200 particles")
    _one_line_error(capsys, ["filter", run, "--labels", str(analyzed / "labels.npy"), "--clusters", "9",
                             "-o", str(tmp_path / "e")], "cluster 9 does not exist")
    bad = tmp_path / "bad.json"
    bad.write_text('{"space": "pca", "vertices": [[0, 0], [1, 0]')
    _one_line_error(capsys, ["filter", run, "--polygon", str(bad), "-o", str(tmp_path / "e")], "not valid JSON")
    bad.write_text('{"space": "pca", "vertices": [[0, 0], [1, 0], ["a", 1]]}')
    _one_line_error(capsys, ["filter", run, "--polygon", str(bad), "-o", str(tmp_path / "e")], "bad.json")
    _one_line_error(capsys, ["traverse", run, "--graph", "0", "999", "-o", str(tmp_path / "t")],
                    "anchor particle 999 out of range for 200 particles")
    _one_line_error(capsys, ["traverse", run, "--direct", "-1", "3", "-o", str(tmp_path / "t")], "out of range")
    _one_line_error(capsys, ["traverse", run, "--pc", "7", "-o", str(tmp_path / "t")], "PC 7 does not exist")
    _one_line_error(capsys, ["analyze", str(tmp_path / "nope"), "-o", str(tmp_path / "a")], "not found")
    assert not (tmp_path / "e" / "indices.npy").exists()


@pytest.mark.parametrize("cmd", ["analyze", "filter", "traverse", "occupancy"])
def test_cli_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        cli([cmd, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: cryo-napari " + cmd) and "-o OUTDIR" in out


def test_occupancy_finds_the_removed_chain(fixtures_dir, tmp_path):
    """Maps of 4E43 with chain B (or C) removed: that chain, and only in those maps, is empty."""
    from cryo_napari.io.mrc import write_mrc
    from cryo_napari.simulate.atoms import map_from_atoms, read_model_atoms

    model = fixtures_dir / "models" / "4E43.pdb"
    if not model.exists():
        pytest.skip("4E43.pdb not in the fixtures")
    atoms = read_model_atoms(model)
    centre = atoms["xyz"].mean(0)
    D, apix = 64, 2.0
    names = []
    for name, drop in (("full", None), ("noB", "B"), ("noC", "C"), ("full2", None)):
        m = atoms["chain"] != drop
        vol = map_from_atoms(atoms["xyz"][m], atoms["z"][m], D, apix, 1.5, centre)
        names.append(str(write_mrc(tmp_path / f"{name}.mrc", vol, apix)))
    out = tmp_path / "occ"
    assert cli(["occupancy", *names, "--model", str(model), "-o", str(out)]) == 0
    import pandas as pd

    occ = pd.read_csv(out / "occupancy.csv", index_col=0)
    assert list(occ.columns) == ["chain A", "chain B", "chain C"] and list(occ.index) == ["full", "noB", "noC", "full2"]
    # measured: 0.03 (B, 768 atoms) and 0.10 (C, 51 atoms next to A/B) against >= 0.98 where present
    assert occ.loc["noB", "chain B"] < 0.2 and occ.loc["noC", "chain C"] < 0.2
    present = occ.values[~np.array([[False, False, False], [False, True, False], [False, False, True], [False] * 3])]
    assert present.min() > 0.9, occ
    assert (out / "occupancy.png").read_bytes()[:4] == b"\x89PNG"
    # residue ranges and density mode
    ranges = tmp_path / "ranges.txt"
    ranges.write_text("# name chain start end\nA_all A -1000 100000\nC_all C -1000 100000\n")
    assert cli(["occupancy", *names, "--model", str(model), "--elements", str(ranges), "--mode", "density",
                "-o", str(tmp_path / "occ2")]) == 0
    dens = pd.read_csv(tmp_path / "occ2" / "occupancy.csv", index_col=0)
    # density mode: the neighbours' blur leaves ~0.2 at a removed small chain (measured 0.22)
    assert dens.loc["noC", "C_all"] < 0.35 and dens.loc["noB", "A_all"] > 0.8
    assert dens.loc["full", "C_all"] == dens.loc["full2", "C_all"] == 1.0


def test_occupancy_bad_ranges_file(fixtures_dir, tmp_path, capsys):
    model = fixtures_dir / "models" / "4E43.pdb"
    if not model.exists():
        pytest.skip("4E43.pdb not in the fixtures")
    from cryo_napari.io.mrc import write_mrc

    vol = write_mrc(tmp_path / "v.mrc", np.zeros((16, 16, 16), np.float32), 2.0)
    ranges = tmp_path / "r.txt"
    ranges.write_text("helix A 10\n")
    _one_line_error(capsys, ["occupancy", str(vol), "--model", str(model), "--elements", str(ranges),
                             "-o", str(tmp_path / "o")], "line 1: expected 'name chain start end'")
