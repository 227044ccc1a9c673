"""Flex model pieces: rigidity prior, convection, real-space projection, generator at z = 0."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cryo_napari.geometry.fourier import project_3d_to_2d
from cryo_napari.geometry.rotations import random_rotations
from cryo_napari.methods.flex.mesh import make_tetramesh
from cryo_napari.methods.flex.model import (FlexModel, convect, latent_prior, project_convected, projection_points,
                                           rigidity_penalty)
from cryo_napari.simulate.heterogeneity import synthetic_map


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    vol = synthetic_map(24, seed=1)
    mesh = make_tetramesh(vol, 3.0, cells=6)
    return vol, mesh, FlexModel(mesh, 24, 10, K=2, hidden=16, layers=2, V0=vol)


def _penalty(model, new_points):
    disp = torch.as_tensor(new_points, dtype=torch.float32)[None] - model.rest[None]
    return float(rigidity_penalty(model.rest, model.cells, model.Dm_inv, model.rweights, disp)[0])


def test_rigidity_zero_for_identity_and_rotation_positive_for_shear(setup):
    _, _, model = setup
    P = model.rest.numpy().astype(np.float64)
    c = P.mean(0)
    assert _penalty(model, P) < 1e-8
    R = Rotation.from_euler("zyx", [30, 20, -10], degrees=True).as_matrix()
    assert _penalty(model, (P - c) @ R.T + c + 2.0) < 1e-6
    shear = np.eye(3)
    shear[0, 1] = 0.3
    assert _penalty(model, (P - c) @ shear.T + c) > 1.0
    # rigidity weights scale the penalty cell by cell
    assert _penalty(model, (P - c) * 1.1 + c) == pytest.approx(float(model.rweights.sum()) * 3 * 0.01, rel=1e-3)


def test_convection_with_zero_flow_returns_the_map_and_shifts_with_uniform_flow(setup):
    vol, _, _ = setup
    V = torch.as_tensor(vol)
    flow = torch.zeros(1, 3, 24, 24, 24)
    np.testing.assert_allclose(convect(V, flow)[0].numpy(), vol, atol=1e-6)
    flow[:, 0] = 1.0  # u = +1 voxel in x: V_def(x) = V(x − 1)
    moved = convect(V, flow)[0].numpy()
    np.testing.assert_allclose(moved[:, :, 1:], vol[:, :, :-1], atol=1e-5)


def test_zero_latent_gives_zero_displacement_and_projection_matches_fourier(setup):
    vol, _, model = setup
    z = torch.tensor([[0.0, 0.0], [0.7, -0.3]])
    d = model.displacements(z).detach()
    assert float(d[0].abs().max()) == 0.0 and float(d[1].abs().max()) > 0
    R = torch.as_tensor(random_rotations(3, np.random.default_rng(2)), dtype=torch.float32)
    real = model.project(None, R).detach().numpy()
    four = project_3d_to_2d(torch.as_tensor(vol), R).numpy()
    for a, b in zip(real, four):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.995
    zero = model.project(model.flow_field(model.displacements(torch.zeros(3, 2))), R).detach().numpy()
    np.testing.assert_allclose(zero, real, atol=1e-4)


def test_projection_culled_to_the_support_equals_the_full_cube_projection(setup):
    """Sampling only the points that fall in the support (per particle) changes nothing for a map
    that is zero outside it, with and without flow; gradients for V match too."""
    _, _, model = setup
    R = torch.as_tensor(random_rotations(5, np.random.default_rng(4)), dtype=torch.float32)
    z = torch.tensor([[0.0, 0.0], [0.8, -0.5], [-1.0, 0.4], [0.3, 0.3], [1.2, -1.1]])
    with torch.no_grad():
        flow = model.flow_field(model.displacements(z) * 20)  # large moves: density leaves its cells
    full_r, full_pix = projection_points(24)
    assert len(model.grid_r) < len(full_r)  # the sphere about the support is smaller than the cube
    for f in (None, flow):
        V1 = model.V.detach().clone().requires_grad_(True)
        V2 = model.V.detach().clone().requires_grad_(True)
        culled = model.project(f, R, V1)
        full = project_convected(V2, f, R, full_r, full_pix)
        np.testing.assert_allclose(culled.detach().numpy(), full.detach().numpy(), atol=1e-4)
        w = torch.randn_like(full)
        (culled * w).sum().backward()
        (full * w).sum().backward()
        inside = model.support.numpy()
        np.testing.assert_allclose(V1.grad.numpy()[inside], V2.grad.numpy()[inside], atol=1e-4)


def test_gradients_reach_map_generator_and_latents(setup):
    _, _, model = setup
    model.zero_grad()
    ii = torch.arange(4)
    z = model.z_of(ii)
    assert float(z.abs().max()) < 1.5
    disp = model.displacements(z)
    R = torch.as_tensor(random_rotations(4, np.random.default_rng(3)), dtype=torch.float32)
    loss = model.project(model.flow_field(disp), R).square().sum() + model.rigidity_penalty(disp).sum() \
        + latent_prior(z, 20.0).sum()
    loss.backward()
    assert model.V.grad.abs().sum() > 0
    assert model.generator.head.weight.grad.abs().sum() > 0
    assert model.latent.weight.grad is not None
