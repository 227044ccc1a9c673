"""Flex mesh prep: regular tetrahedral mesh, barycentrics, pickle schema, segments and fusing."""

import pickle

import numpy as np
import pytest
import torch

from cryo_napari.errors import InputError
from cryo_napari.methods.flex.mesh import TetraMesh, make_tetramesh, parse_fuse
from cryo_napari.methods.flex.mesh_voxels import voxel_barycentrics
from cryo_napari.methods.flex.model import flow_from_displacements
from cryo_napari.simulate.heterogeneity import synthetic_map

SCHEMA = {"tm_points", "tm_cells", "tm_tetraidx_map", "tm_rweights", "mask", "mask_soft", "N", "psize_A",
          "tm_segments", "tm_fuse"}


@pytest.fixture(scope="module")
def vol():
    return synthetic_map(32)


@pytest.fixture(scope="module")
def mesh(vol):
    return make_tetramesh(vol, 3.0, cells=8)


def _halves_labels(D=32):
    seg = np.zeros((D, D, D), int)
    seg[:, :, D // 2:] = 1  # x >= 16 is segment 1
    return seg


def test_every_masked_voxel_has_a_tetra_and_barycentrics_reproduce_positions(mesh):
    m = mesh.mask > 0.5
    assert m.sum() > 100
    assert ((mesh.tetraidx_map >= 0) == m).all()
    idx, cell, bary = voxel_barycentrics(mesh)
    assert len(idx) == m.sum()
    np.testing.assert_allclose(bary.sum(1), 1, atol=1e-12)
    assert bary.min() > -1e-9  # each voxel lies inside its own tetra
    pos = np.einsum("ma,mac->mc", bary, mesh.points[mesh.cells[cell]])
    k = np.arange(32)
    zz, yy, xx = np.meshgrid(k, k, k, indexing="ij")
    true = np.stack([xx, yy, zz], -1).reshape(-1, 3)[idx]
    np.testing.assert_allclose(pos, true, atol=1e-9)
    # the mask covers the map's density and the soft mask contains the binary one
    assert (mesh.mask_soft >= mesh.mask - 1e-6).all()
    assert mesh.rweights.min() >= 0.5 - 1e-9 and mesh.rweights.max() <= 3.0 + 1e-9


def test_cells_are_non_degenerate_and_fill_the_cubes(mesh):
    P = mesh.points[mesh.cells]
    vols = np.abs(np.linalg.det(P[:, 1:] - P[:, :1])) / 6
    s = 32 / 8
    np.testing.assert_allclose(vols, s**3 / 6, rtol=1e-9)


def test_pickle_round_trip_and_plain_pickle_schema(mesh, tmp_path):
    path = mesh.to_pickle(tmp_path / "mesh.pkl")
    with open(path, "rb") as f:
        d = pickle.load(f)
    assert SCHEMA <= set(d)
    assert isinstance(d["N"], int) and isinstance(d["psize_A"], float)
    assert d["tm_points"].shape == mesh.points.shape and d["tm_cells"].shape == mesh.cells.shape
    assert d["tm_tetraidx_map"].shape == (32, 32, 32)
    back = TetraMesh.from_pickle(path)
    np.testing.assert_allclose(back.points, mesh.points, atol=1e-5)
    np.testing.assert_array_equal(back.cells, mesh.cells)
    np.testing.assert_array_equal(back.tetraidx_map, mesh.tetraidx_map)
    np.testing.assert_allclose(back.rweights, mesh.rweights, rtol=1e-6)


def test_bad_mesh_pickle_is_one_line_input_error(tmp_path):
    p = tmp_path / "bad.pkl"
    p.write_bytes(b"not a pickle")
    with pytest.raises(InputError, match="bad.pkl"):
        TetraMesh.from_pickle(p)
    with open(p, "wb") as f:
        pickle.dump({"tm_points": np.zeros((3, 3))}, f)
    with pytest.raises(InputError, match="tm_cells"):
        TetraMesh.from_pickle(p)


def _flow_of_segment(m, seg_label, d=(1.5, 0.0, 0.0)):
    moving = np.unique(m.cells[m.cell_segment == seg_label])
    disp = torch.zeros(1, len(m.points), 3)
    disp[0, moving] = torch.tensor(d)
    idx, cell, bary = voxel_barycentrics(m)
    flow = flow_from_displacements(disp, torch.as_tensor(idx), torch.as_tensor(m.cells[cell]),
                                   torch.as_tensor(bary, dtype=torch.float32), m.N)[0]
    ux = flow[0].reshape(-1)[idx].numpy()
    return ux, m.cell_segment[cell]


def test_unfused_segments_get_their_own_vertices_and_slide_apart(vol, mesh):
    m = make_tetramesh(vol, 3.0, cells=8, segments=_halves_labels())
    assert set(np.unique(m.cell_segment)) == {0, 1}
    assert len(m.points) > len(mesh.points)  # boundary vertices duplicated
    shared = np.intersect1d(m.cells[m.cell_segment == 0], m.cells[m.cell_segment == 1])
    assert len(shared) == 0
    ux, seg = _flow_of_segment(m, 1)
    np.testing.assert_allclose(ux[seg == 0], 0, atol=1e-7)  # the other segment stays put
    np.testing.assert_allclose(ux[seg == 1], 1.5, atol=1e-5)  # the whole segment moves rigidly
    assert (seg == 0).sum() > 20 and (seg == 1).sum() > 20


def test_fused_segments_share_boundary_vertices(vol, mesh):
    m = make_tetramesh(vol, 3.0, cells=8, segments=_halves_labels(), fuse="0>1")
    assert len(m.points) == len(mesh.points)
    ux, seg = _flow_of_segment(m, 1)
    assert (np.abs(ux[seg == 0]) > 1e-3).any()  # the fused neighbour is dragged along
    np.testing.assert_array_equal(m.fuse, [[0, 1]])


@pytest.mark.parametrize("spec,msg", [("0>1,1>0", "cycle"), ("0>1,1>2,2>0", "cycle"), ("0>2,1>2", "more than one parent"),
                                      ("0>1,2>3", "not one tree"), ("0>7", "does not exist"), ("0-1", "PARENT>CHILD")])
def test_fuse_spec_must_be_a_tree_of_known_segments(spec, msg):
    with pytest.raises(InputError, match=msg) as err:
        parse_fuse(spec, [0, 1, 2, 3])
    assert "\n" not in str(err.value)


def test_fuse_tree_breadth_first_accepts_trees():
    np.testing.assert_array_equal(parse_fuse("0>3,0>4,3>2", [0, 2, 3, 4]), [[0, 3], [0, 4], [3, 2]])
    assert parse_fuse(None, [0, 1]).shape == (0, 2)


def test_rigid_segment_and_periphery_weights(vol):
    m = make_tetramesh(vol, 3.0, cells=8, segments=_halves_labels(), rigid=(1,), stiffen_periphery=3.0)
    assert (m.rweights[m.cell_segment == 1] == 20).all()
    assert m.rweights[m.cell_segment == 0].max() <= 3.0
    with pytest.raises(InputError, match="segment 5"):
        make_tetramesh(vol, 3.0, cells=8, segments=_halves_labels(), rigid=(5,))


def test_surface_and_previews(mesh, tmp_path):
    v, f, vals = mesh.surface_for_napari()
    assert v.shape[1] == 3 and f.shape[1] == 3 and len(vals) == len(v)
    assert f.max() < len(v)
    # every boundary edge of a closed surface is used by an even number of triangles
    e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), 1)
    _, counts = np.unique(e, axis=0, return_counts=True)
    assert (counts % 2 == 0).all()
    ply = mesh.write_preview(tmp_path / "m.ply").read_text().splitlines()
    assert ply[0] == "ply" and f"element face {len(f)}" in ply
    vtk = mesh.write_preview(tmp_path / "m.vtk").read_text()
    assert f"CELLS {len(mesh.cells)} {5 * len(mesh.cells)}" in vtk


def test_generated_series_lets_unfused_segments_slide_apart(vol):
    """Through the generator: segment 1 moves 3 px along x with the latent, segment 0 is untouched,
    and the unfused boundary carries the full jump (a fused mesh drags its neighbour along)."""
    from cryo_napari.methods.flex.generate import generate_series
    from cryo_napari.methods.flex.model import FlexModel

    class SlideSegment(torch.nn.Module):
        def __init__(self, moving, P):
            super().__init__()
            self.register_buffer("d", torch.zeros(P, 3))
            self.d[moving, 0] = 3.0

        def forward(self, z):
            return z[:, :1, None] * self.d[None]

    frames = {}
    for fuse in (None, "0>1"):
        m = make_tetramesh(vol, 3.0, cells=8, segments=_halves_labels(), fuse=fuse)
        model = FlexModel(m, 32, 1, K=1, hidden=4, layers=1, V0=vol)
        model.generator = SlideSegment(np.unique(m.cells[m.cell_segment == 1]), len(m.points))
        frames[fuse] = (m, generate_series(model, m, np.array([[0.0], [1.0]], np.float32)))
    # the canonical map is the input map inside the model's support (solvent outside it is zeroed)
    assert np.abs(model.V.detach().numpy() - vol).sum() < 1e-3 * np.abs(vol).sum()
    vol = model.V.detach().numpy()
    m, series = frames[None]
    np.testing.assert_allclose(series[0], vol, atol=1e-5)  # zero latent: the canonical map
    seg = m.cell_segment[np.maximum(m.tetraidx_map, 0)] * (m.tetraidx_map >= 0) + (m.tetraidx_map < 0) * -1
    left = seg == 0
    np.testing.assert_allclose(series[1][left], vol[left], atol=1e-5)  # segment 0 stays put
    right = (seg == 1) & (np.arange(32)[None, None, :] >= 19)
    shifted = np.roll(vol, 3, axis=2)  # V(x − 3)
    np.testing.assert_allclose(series[1][right], shifted[right], atol=1e-4)  # segment 1 slid by 3 px
    mf, fused = frames["0>1"]
    segf = mf.cell_segment[np.maximum(mf.tetraidx_map, 0)] * (mf.tetraidx_map >= 0) + (mf.tetraidx_map < 0) * -1
    dragged = np.abs(fused[1] - vol)[segf == 0].max()
    assert dragged > 10 * np.abs(series[1] - vol)[left].max() + 1e-3  # fused: segment 0 deforms too


def test_segment_motions_report_each_segments_rigid_swing(vol):
    """segment_motions: a segment whose vertices the flow turns rigidly by 12° about z reads 12°, axis
    ±z, no non-rigid part; the still segment reads 0; a shear reads as a non-rigid rest."""
    from scipy.spatial.transform import Rotation

    from cryo_napari.methods.flex.generate import segment_motions
    from cryo_napari.methods.flex.model import FlexModel, mesh_points_in_box

    m = make_tetramesh(vol, 3.0, cells=8, segments=_halves_labels())
    model = FlexModel(m, 32, 1, K=1, hidden=4, layers=1, V0=vol)
    P = mesh_points_in_box(m, 32)
    moving = np.unique(m.cells[m.cell_segment == 1])
    pivot = np.array([16.0, 16.0, 16.0])
    R = Rotation.from_rotvec(np.deg2rad(12.0) * np.array([0.0, 0.0, 1.0])).as_matrix()
    d = np.zeros_like(P)
    # content at q moves to R(q − pivot) + pivot; the vertex at p shows the content from p − u(p)
    d[moving] = P[moving] - ((P[moving] - pivot) @ R + pivot)
    sheared = np.zeros_like(P)
    sheared[moving, 0] = 0.2 * (P[moving, 1] - 16.0)

    class Fixed(torch.nn.Module):
        def __init__(self, disp):
            super().__init__()
            self.register_buffer("d", torch.as_tensor(disp, dtype=torch.float32))

        def forward(self, z):
            return z[:, :1, None] * self.d[None]

    model.generator = Fixed(d)
    rows = segment_motions(model, m, np.array([[0.0], [1.0], [0.5]], np.float32), apix=3.0)
    assert [r["segment"] for r in rows[1]["segments"]] == [0, 1]
    still, moved = rows[1]["segments"]
    assert still["rotation_deg"] < 1e-3 and still["max_shift_A"] == 0.0
    assert abs(moved["rotation_deg"] - 12.0) < 1e-3 and abs(abs(moved["axis"][2]) - 1.0) < 1e-4
    assert moved["nonrigid_rms_A"] < 1e-3 and moved["centroid_shift_A"] > 1.0
    assert rows[0]["segments"][1]["rotation_deg"] < 1e-6  # zero latent: the canonical map
    assert 5.0 < rows[2]["segments"][1]["rotation_deg"] < 7.0  # half the displacement, about half the angle
    model.generator = Fixed(sheared)
    assert segment_motions(model, m, np.array([[1.0]], np.float32), apix=3.0)[0]["segments"][1]["nonrigid_rms_A"] > 1.0
