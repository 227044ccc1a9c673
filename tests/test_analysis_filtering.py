"""Filtering rules, polygons, and the filtered .star/.cs outputs."""

import json

import numpy as np
import pytest

from cryo_napari.analysis import filtering as flt
from cryo_napari.analysis.clustering import kmeans
from cryo_napari.analysis.polygon import Polygon, points_in_polygon, read_polygon, write_polygon
from cryo_napari.errors import InputError


def junk_latents(n_good=1800, n_junk=200, zdim=8, seed=0, scattered=True):
    """3 Gaussian clusters near the origin + 10% junk of large latent norm; → z, is_junk.

    ``scattered``: each junk point alone on a shell |z| ∈ [6, 10] (the hardest case for the z-score,
    impossible for clustering: k-means puts the 10-13% of them nearest a good centre into that
    good cluster). Otherwise the junk is one broad population (σ 1 vs 0.3 for good particles)
    around a point at |z| = 7, as noise-only / ice images that share no structure encode.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.0, (3, zdim))
    good = centres[rng.integers(0, 3, n_good)] + rng.normal(0, 0.3, (n_good, zdim))
    d = rng.normal(size=(n_junk, zdim))
    if scattered:
        junk = d / np.linalg.norm(d, axis=1, keepdims=True) * rng.uniform(6, 10, (n_junk, 1))
    else:
        c = rng.normal(size=zdim)
        junk = c / np.linalg.norm(c) * 7 + d
    z = np.concatenate([good, junk]).astype(np.float32)
    perm = rng.permutation(len(z))
    return z[perm], (np.arange(len(z)) >= n_good)[perm]


def rates(keep, junk):
    return (~keep[junk]).mean(), keep[~junk].mean()


@pytest.mark.parametrize("scattered", [True, False])
@pytest.mark.parametrize("seed", range(5))
def test_zscore_removes_junk_keeps_good(seed, scattered):
    z, junk = junk_latents(seed=seed, scattered=scattered)
    keep = flt.keep_zscore(z, 2.0)
    removed_junk, kept_good = rates(keep, junk)
    assert removed_junk >= 0.90 and kept_good >= 0.95, (removed_junk, kept_good)


def test_zscore_is_the_plain_zscore_without_gross_outliers():
    z = np.random.default_rng(0).normal(size=(5000, 8))
    r = np.linalg.norm(z, axis=1)
    plain = (r - r.mean()) / r.std()
    np.testing.assert_allclose(flt.latent_norm_zscore(z), plain, atol=0.02)
    # with 10% gross junk the plain z-score is masked (sigma inflated), the bulk one is not
    zj, junk = junk_latents(seed=0)
    rj = np.linalg.norm(zj, axis=1)
    assert ((rj - rj.mean()) / rj.std())[junk].min() < 2 < flt.latent_norm_zscore(zj)[junk].min()


@pytest.mark.parametrize("seed", range(3))
def test_cluster_filter_removes_junk_keeps_good(seed):
    """k-means (k=20) on a junk population; clusters dropped without ground truth: those whose
    members' median latent-norm z-score exceeds 2."""
    z, junk = junk_latents(seed=seed, scattered=False)
    km = kmeans(z, 20, seed=0)
    zs = flt.latent_norm_zscore(z)
    med = np.array([np.median(zs[km.labels == k]) for k in range(len(km.counts))])
    good_clusters = np.nonzero(med <= 2)[0]
    assert 0 < len(good_clusters) < 20
    keep = flt.keep_clusters(km.labels, good_clusters)
    removed_junk, kept_good = rates(keep, junk)
    assert removed_junk >= 0.90 and kept_good >= 0.95, (removed_junk, kept_good)


def test_combine_union_intersection_inversion_and_counts():
    a = flt.RuleResult("a", np.array([1, 1, 0, 0], bool))
    b = flt.RuleResult("b", np.array([1, 0, 1, 0], bool))
    assert flt.combine([a, b], "intersect").tolist() == [True, False, False, False]
    assert flt.combine([a, b], "union").tolist() == [True, True, True, False]
    assert flt.combine([a, b], "union", invert=True).tolist() == [False, False, False, True]
    lines = flt.summary_lines([a, b], flt.combine([a, b]), "intersect", False)
    assert lines[0] == "a: keeps 2 / 4, removes 2" and "kept 1, removed 3 of 4" in lines[-1]


def test_keep_clusters_rejects_missing_cluster():
    with pytest.raises(InputError, match="cluster 5 does not exist"):
        flt.keep_clusters(np.array([0, 1, 2]), [5])


def test_polygon_selection_exact_on_square(tmp_path):
    g = np.stack(np.meshgrid(np.arange(10), np.arange(10)), -1).reshape(-1, 2).astype(float) + 0.5
    square = [[2, 2], [6, 2], [6, 6], [2, 6]]
    sel = points_in_polygon(g, square)
    expected = (g[:, 0] > 2) & (g[:, 0] < 6) & (g[:, 1] > 2) & (g[:, 1] < 6)
    assert sel.sum() == 16 and np.array_equal(sel, expected)
    path = write_polygon(tmp_path / "poly.json", Polygon(np.array(square, float), "pca", (1, 0), "run", 3))
    doc = json.loads(path.read_text())
    assert doc == {"space": "pca", "axes": [1, 0], "vertices": square, "run": "run", "epoch": 3}
    poly = read_polygon(path)
    coords = np.c_[g[:, 1], g[:, 0], np.zeros(len(g))]  # axes (1, 0): x is column 1
    assert np.array_equal(poly.select(coords), expected)


def test_polygon_file_errors(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"space": "tsne", "vertices": [[0,0],[1,0],[0,1]]}')
    with pytest.raises(InputError, match="space must be one of"):
        read_polygon(p)
    p.write_text('{"vertices": [[0,0],[1,0]]}')
    with pytest.raises(InputError, match="at least 3"):
        read_polygon(p)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from cryo_napari.simulate.heterogeneity import synthetic_map
    from cryo_napari.simulate.particles import SimulationParams, simulate_dataset

    out = tmp_path_factory.mktemp("sim")
    paths = simulate_dataset(synthetic_map(16, seed=1), out, SimulationParams(n_particles=120, apix=4.0, seed=2))
    return paths


def test_filtered_star_and_cs_reimport(tiny_dataset, tmp_path):
    from cryo_napari.io.cryosparc import read_cs
    from cryo_napari.io.particles import load_particles
    from cryo_napari.io.star import read_star_tables

    rng = np.random.default_rng(0)
    keep = rng.random(120) < 0.4
    for src in ("star", "cs"):
        out = tmp_path / src
        written = dict((p.name, p) for kind, p in flt.write_selection(keep, out, None, tiny_dataset[src]) if kind != "log")
        rows = np.load(out / "indices.npy")
        assert np.array_equal(rows, np.nonzero(keep)[0])
        from cryo_napari.io.cryodrgn import read_index_pkl

        assert np.array_equal(read_index_pkl(out / "ind.pkl"), rows)
        sub = load_particles(written[f"particles.{src}"])
        full = load_particles(tiny_dataset[src])
        assert len(sub) == keep.sum()
        np.testing.assert_allclose(sub.rotations, full.rotations[rows], atol=1e-5)
        np.testing.assert_allclose(sub.read_images(np.arange(3)), full.read_images(rows[:3]))
        if src == "star":
            p_full, o_full = read_star_tables(tiny_dataset["star"])
            p_sub, o_sub = read_star_tables(written["particles.star"])
            assert list(p_sub.columns) == list(p_full.columns)
            assert o_sub.equals(o_full)
        else:
            d_sub, d_full = read_cs(written["particles.cs"]).dtype, read_cs(tiny_dataset["cs"]).dtype
            assert d_sub.names == d_full.names
            assert all(d_sub[f] == d_full[f] for f in d_full.names if f != "blob/path")


def test_selection_count_mismatch_is_an_input_error(tiny_dataset, tmp_path):
    with pytest.raises(InputError, match="120 particles in the file but 50 latents"):
        list(flt.write_selection(np.ones(50, bool), tmp_path, None, tiny_dataset["star"]))


def test_particle_subset_export_elsewhere(tiny_dataset, tmp_path):
    """The napari explorer's export path: rows of the file, written to another directory."""
    from cryo_napari.io.particles import load_particles
    from cryo_napari.io.star import read_star_tables

    rows = np.array([5, 0, 17, 3])
    for src in ("star", "cs"):
        dst = flt.write_particle_subset(tiny_dataset[src], tmp_path / "elsewhere" / f"sub.{src}", rows)
        sub, full = load_particles(dst), load_particles(tiny_dataset[src])
        np.testing.assert_allclose(sub.read_images(), full.read_images(rows))
    names = read_star_tables(tmp_path / "elsewhere" / "sub.star")[0]["rlnImageName"]
    assert all(n.split("@")[1].startswith("/") for n in names)  # absolute: resolves from anywhere
    same = flt.write_particle_subset(tiny_dataset["star"], tiny_dataset["star"].parent / "same_dir.star", rows)
    assert read_star_tables(same)[0]["rlnImageName"].tolist() == \
        read_star_tables(tiny_dataset["star"])[0]["rlnImageName"].iloc[rows].tolist()  # kept as written
    with pytest.raises(InputError, match="row 120 out of range for 120 particles"):
        flt.write_particle_subset(tiny_dataset["cs"], tmp_path / "x.cs", [0, 120])
