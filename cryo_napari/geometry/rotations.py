"""Rotation conventions, written once.

Internal convention
-------------------
A pose is a 3x3 matrix ``R`` (float, shape ``(..., 3, 3)``) equal to RELION's Euler matrix
``A(rot, tilt, psi)`` (Euler_angles2matrix in RELION, ``R_from_relion`` in cryoDRGN; cryoDRGN's
``poses.pkl`` stores exactly these matrices). Coordinates are ``(x, y, z)`` with x the fastest
array axis; arrays are indexed ``[z, y, x]``.

The projection image of a map ``V`` at pose ``R`` is

    I(x, y) = ∫ V(Rᵀ [x, y, z]ᵀ) dz        (real space)
    Î(k)    = V̂(Rᵀ [kx, ky, 0]ᵀ)            (central-slice theorem)

so, with row vectors, the 3-D frequency of 2-D frequency ``k2`` is ``k2 @ R``.

cryoSPARC stores ``alignments3D/pose`` as an axis-angle vector (radians) whose rotation matrix is
the *transpose* of ours (cryoDRGN parse_pose_csparc: ``expmap(pose).T``).

Translations: ``shifts_px`` (N, 2) are RELION's ``rlnOriginX/Y`` in pixels (``rlnOriginX/YAngst``
divided by the pixel size), cryoSPARC's ``alignments3D/shift`` and cryoDRGN's ``trans × D``: the
image translated by ``+shift`` (content moved towards +x/+y) is centred, i.e. the particle centre
lies at ``image centre − shift`` (cryoDRGN ``translate_ht(img, trans)``; RELION re-centring uses
``rlnCoordinateX − rlnOriginX``).

Handedness flip: ``flip_handedness_of_poses`` maps poses of a map to poses of its mirror image
``V'(x, y, z) = V(x, y, -z)`` (:func:`flip_map_handedness`, about the centre voxel ``D // 2``).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation


def relion_euler_to_matrix(euler_deg: np.ndarray) -> np.ndarray:
    """RELION ZYZ Euler angles (rot, tilt, psi) in **degrees** → rotation matrices.

    Parameters
    ----------
    euler_deg : (..., 3) array
        ``rlnAngleRot``, ``rlnAngleTilt``, ``rlnAnglePsi`` in degrees.

    Returns
    -------
    (..., 3, 3) float64 array, RELION's ``A`` matrix (our internal convention).
    """
    a = np.deg2rad(np.asarray(euler_deg, dtype=np.float64))
    ca, sa = np.cos(a[..., 0]), np.sin(a[..., 0])
    cb, sb = np.cos(a[..., 1]), np.sin(a[..., 1])
    cg, sg = np.cos(a[..., 2]), np.sin(a[..., 2])
    cc, cs = cb * ca, cb * sa
    sc, ss = sb * ca, sb * sa
    R = np.empty(a.shape[:-1] + (3, 3))
    R[..., 0, 0] = cg * cc - sg * sa
    R[..., 0, 1] = cg * cs + sg * ca
    R[..., 0, 2] = -cg * sb
    R[..., 1, 0] = -sg * cc - cg * sa
    R[..., 1, 1] = -sg * cs + cg * ca
    R[..., 1, 2] = sg * sb
    R[..., 2, 0] = sc
    R[..., 2, 1] = ss
    R[..., 2, 2] = cb
    return R


def matrix_to_relion_euler(R: np.ndarray) -> np.ndarray:
    """Rotation matrices → RELION (rot, tilt, psi) in **degrees** (tilt in [0, 180]).

    Inverse of :func:`relion_euler_to_matrix` (RELION's Euler_matrix2angles).
    """
    R = np.asarray(R, dtype=np.float64)
    out = np.empty(R.shape[:-2] + (3,))
    sb = np.sqrt(R[..., 0, 2] ** 2 + R[..., 1, 2] ** 2)
    regular = sb > 16 * np.finfo(np.float32).eps
    rot = np.where(regular, np.arctan2(R[..., 2, 1], R[..., 2, 0]), 0.0)
    tilt = np.arctan2(sb, R[..., 2, 2])
    # gimbal lock (tilt 0 or 180): rot is set to 0 and psi carries the in-plane angle
    psi = np.where(
        regular,
        np.arctan2(R[..., 1, 2], -R[..., 0, 2]),
        np.where(R[..., 2, 2] > 0, np.arctan2(-R[..., 1, 0], R[..., 0, 0]), np.arctan2(R[..., 1, 0], -R[..., 0, 0])),
    )
    out[..., 0], out[..., 1], out[..., 2] = rot, tilt, psi
    return np.rad2deg(out)


def cryosparc_pose_to_matrix(pose: np.ndarray) -> np.ndarray:
    """cryoSPARC ``alignments3D/pose`` (axis-angle, radians, (..., 3)) → our matrices.

    cryoSPARC's rotation is the transpose (inverse) of RELION/cryoDRGN's.
    """
    pose = np.asarray(pose, dtype=np.float64)
    flat = pose.reshape(-1, 3)
    mats = Rotation.from_rotvec(flat).as_matrix().transpose(0, 2, 1)
    return mats.reshape(pose.shape[:-1] + (3, 3))


def matrix_to_cryosparc_pose(R: np.ndarray) -> np.ndarray:
    """Our matrices (..., 3, 3) → cryoSPARC axis-angle (radians, (..., 3))."""
    R = np.asarray(R, dtype=np.float64)
    flat = R.reshape(-1, 3, 3).transpose(0, 2, 1)
    return Rotation.from_matrix(flat).as_rotvec().reshape(R.shape[:-2] + (3,))


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` rotation matrices uniform on SO(3) (Haar measure), shape (n, 3, 3)."""
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return Rotation.from_quat(q).as_matrix()


def flip_handedness_of_poses(R: np.ndarray) -> np.ndarray:
    """Poses of the mirror map ``V'(x,y,z) = V(x,y,-z)`` that give the same projections.

    With ``F = diag(1, 1, -1)``: ``I = ∫V(Rᵀr)dz`` and ``V = V'∘F`` give ``R' = R F`` up to the
    image-plane flip, which is absorbed by ``R' = F R F`` acting on ``z`` only; the projection
    along z is unchanged because z is integrated out.
    """
    F = np.diag([1.0, 1.0, -1.0])
    return F @ np.asarray(R) @ F


def flip_map_handedness(vol):
    """Mirror a (D, D, D) map about the plane z = D/2 (the rotation centre): ``V'(x,y,z) = V(x,y,-z)``.

    Works on numpy arrays and torch tensors; index ``D//2`` stays in place.
    """
    try:
        import torch

        if isinstance(vol, torch.Tensor):
            return torch.roll(torch.flip(vol, dims=(-3,)), 1, dims=-3)
    except ImportError:  # pragma: no cover
        pass
    return np.roll(np.flip(np.asarray(vol), axis=-3), 1, axis=-3).copy()


def fit_rigid_motion(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None):
    """Least-squares rigid motion ``dst ≈ src @ R.T + t`` (Kabsch; proper rotations only).

    Parameters
    ----------
    src, dst : (N, 3) points in any one unit (e.g. Å), N ≥ 3 not all on a line.
    weights : (N,) non-negative weights, or None for equal weights.

    Returns
    -------
    R : (3, 3) rotation matrix (det +1).
    t : (3,) translation, same unit as the points.
    rms : weighted RMS of ``dst − (src @ R.T + t)``: the part of the motion no rigid motion explains.
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    cs, cd = w @ src, w @ dst
    H = ((src - cs) * w[:, None]).T @ (dst - cd)
    U, _, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(Vt.T @ U.T)) or 1.0
    R = Vt.T @ np.diag([1.0, 1.0, d]) @ U.T
    t = cd - cs @ R.T
    rms = float(np.sqrt(w @ ((dst - src @ R.T - t) ** 2).sum(1)))
    return R, t, rms


def viewing_directions(R: np.ndarray) -> np.ndarray:
    """Unit projection directions in the map frame (the map-frame vector that maps to +z).

    Shape (..., 3). Used for pose-coverage summaries.
    """
    return np.asarray(R)[..., 2, :]
