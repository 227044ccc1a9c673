"""Heterogeneous map series from one map: rigid-body motion of a masked domain, removal of a
region (compositional), and a synthetic asymmetric test map for bundled sample data; and the
domain-only FSC that scores a reconstruction's moving domain against such a series' truth.

All maps are (D, D, D) float32 ``[z, y, x]``; angles in degrees; distances in pixels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation


def synthetic_map(D: int = 32, n_blobs: int = 40, seed: int = 0) -> np.ndarray:
    """A chiral, protein-like test map: a sum of Gaussian blobs along a random 3-D walk.

    Generated from the seed, so sample data needs no external map.
    """
    rng = np.random.default_rng(seed)
    pts = [np.zeros(3)]
    for _ in range(n_blobs - 1):
        step = rng.standard_normal(3)
        pts.append(pts[-1] + 0.09 * D * step / np.linalg.norm(step))
    pts = np.array(pts)
    pts -= pts.mean(0)
    pts *= min(1.0, 0.3 * D / np.abs(pts).max())
    k = np.arange(D) - D // 2
    zz, yy, xx = np.meshgrid(k, k, k, indexing="ij")
    vol = np.zeros((D, D, D), dtype=np.float64)
    sigma = 0.045 * D
    for (x, y, z), a in zip(pts, rng.uniform(0.6, 1.0, len(pts))):
        vol += a * np.exp(-((xx - x) ** 2 + (yy - y) ** 2 + (zz - z) ** 2) / (2 * sigma**2))
    return (vol / vol.max()).astype(np.float32)


def domain_mask(vol: np.ndarray, threshold: float | None = None, radius_frac: float = 0.22,
                soft_px: float = 1.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A peripheral domain of a map: thresholded density within a sphere around the dense voxel
    farthest from the centre of mass.

    Returns (soft mask (D,D,D) in [0,1], domain centre (x,y,z) px, pivot (x,y,z) px); the pivot is
    the point on the segment from the map's centre of mass to the domain centre at the sphere's
    edge (a hinge).
    """
    D = vol.shape[-1]
    thr = np.percentile(vol, 90) if threshold is None else threshold
    dense = vol > thr
    zz, yy, xx = np.nonzero(dense)
    com = np.array([xx.mean(), yy.mean(), zz.mean()])
    d = np.sqrt((xx - com[0]) ** 2 + (yy - com[1]) ** 2 + (zz - com[2]) ** 2)
    far = np.argmax(d)
    radius = radius_frac * D
    tip = np.array([xx[far], yy[far], zz[far]], dtype=float)
    centre = tip + (com - tip) / max(np.linalg.norm(com - tip), 1e-6) * radius * 0.6
    k = np.arange(D)
    Z, Y, X = np.meshgrid(k, k, k, indexing="ij")
    r = np.sqrt((X - centre[0]) ** 2 + (Y - centre[1]) ** 2 + (Z - centre[2]) ** 2)
    sphere = r <= radius
    binary = ndimage.binary_dilation(sphere & dense, iterations=1)
    soft = ndimage.gaussian_filter(binary.astype(np.float32), soft_px)
    soft = np.clip(soft / max(soft.max(), 1e-6), 0, 1) * ndimage.binary_dilation(binary, iterations=3)
    direction = (centre - com) / max(np.linalg.norm(centre - com), 1e-6)
    pivot = centre - direction * radius * 0.9
    return soft.astype(np.float32), centre, pivot


def rotate_about(vol: np.ndarray, axis: np.ndarray, angle_deg: float, pivot_xyz: np.ndarray) -> np.ndarray:
    """Rotate a map by ``angle_deg`` about ``axis`` (x,y,z) through ``pivot_xyz`` (px), cubic spline."""
    R = Rotation.from_rotvec(np.deg2rad(angle_deg) * np.asarray(axis) / np.linalg.norm(axis)).as_matrix()
    # output voxel r (x,y,z) takes input at R^T (r - p) + p; convert to [z,y,x] index order
    P = np.eye(3)[::-1]  # xyz <-> zyx permutation
    M = P @ R.T @ P
    p_zyx = np.asarray(pivot_xyz)[::-1]
    offset = p_zyx - M @ p_zyx
    return ndimage.affine_transform(vol, M, offset=offset, order=3, mode="constant").astype(np.float32)


def rigid_domain_motion(vol: np.ndarray, mask: np.ndarray, pivot_xyz: np.ndarray, axis: np.ndarray,
                        angles_deg) -> np.ndarray:
    """Series (K, D, D, D): the masked domain swung about ``axis`` through ``pivot`` by each angle.

    ``V_k = V·(1 − M) + rot_k(V·M)``; the rest of the map stays put.
    """
    body = vol * (1 - mask)
    dom = vol * mask
    return np.stack([body + rotate_about(dom, axis, a, pivot_xyz) for a in angles_deg]).astype(np.float32)


def remove_region(vol: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The map without the masked region (compositional heterogeneity)."""
    return (vol * (1 - mask)).astype(np.float32)


def hinge_axis(centre_xyz: np.ndarray, pivot_xyz: np.ndarray) -> np.ndarray:
    """An axis through the pivot perpendicular to the pivot→domain direction (and to z when
    possible), so the domain swings sideways."""
    d = np.asarray(centre_xyz) - np.asarray(pivot_xyz)
    a = np.cross(d, [0.0, 0.0, 1.0])
    if np.linalg.norm(a) < 1e-6 * np.linalg.norm(d):
        a = np.cross(d, [0.0, 1.0, 0.0])
    return a / np.linalg.norm(a)


def domain_from_maps(domain_map: np.ndarray, rest_map: np.ndarray, level: float = 0.05,
                     soft_px: float = 1.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A domain given by its own density (e.g. one chain's map from an atomic model), in the form
    :func:`domain_mask` returns: (soft mask (D,D,D) in [0,1], domain centre (x,y,z) px, pivot (x,y,z) px).

    The mask is where ``domain_map`` is above ``level`` × its maximum and above ``rest_map`` (at an
    interface each voxel goes to the denser side), softened by ``soft_px``; the centre is the
    domain's density-weighted centre of mass; the pivot is the centre of the interface, the domain
    voxels within 2 voxels of the rest's density (above the same level), or the point of the domain
    nearest the rest's centre of mass where they do not touch.
    """
    dom = domain_map > level * domain_map.max()
    rest = rest_map > level * rest_map.max()
    binary = dom & (domain_map >= rest_map)
    soft = ndimage.gaussian_filter(binary.astype(np.float32), soft_px)
    soft = np.clip(soft / max(soft.max(), 1e-6), 0, 1) * ndimage.binary_dilation(binary, iterations=3)
    w = np.clip(domain_map, 0, None)
    zyx = np.stack(np.meshgrid(*[np.arange(n) for n in domain_map.shape], indexing="ij"), -1).reshape(-1, 3)
    centre = (zyx * w.reshape(-1, 1)).sum(0)[::-1] / max(w.sum(), 1e-12)
    contact = dom & ndimage.binary_dilation(rest, iterations=2)
    if contact.any():
        pivot = np.argwhere(contact).mean(0)[::-1]
    else:
        rw = np.clip(rest_map, 0, None).reshape(-1, 1)
        rest_com = (zyx * rw).sum(0)[::-1] / max(rw.sum(), 1e-12)
        pts = np.argwhere(dom)[:, ::-1]
        pivot = pts[np.argmin(np.linalg.norm(pts - rest_com, axis=1))].astype(float)
    return soft.astype(np.float32), centre.astype(float), pivot.astype(float)


def _domain(vol, radius_frac, domain):
    return domain_mask(vol, radius_frac=radius_frac) if domain is None else domain


def domain_motion_series(vol: np.ndarray, n_frames: int = 20, max_angle_deg: float = 15.0,
                         radius_frac: float = 0.22, domain=None):
    """Continuous series: a peripheral domain swung from 0 to ``max_angle_deg``.

    ``radius_frac``: the domain sphere's radius as a fraction of the box (:func:`domain_mask`);
    ``domain``: an explicit (mask, centre, pivot) instead (:func:`domain_from_maps`).
    Returns (maps (K,D,D,D), angles (K,), mask).
    """
    mask, centre, pivot = _domain(vol, radius_frac, domain)
    angles = np.linspace(0.0, max_angle_deg, n_frames)
    return rigid_domain_motion(vol, mask, pivot, hinge_axis(centre, pivot), angles), angles, mask


def domain_mask_series(vol: np.ndarray, angles_deg, radius_frac: float = 0.22, domain=None) -> np.ndarray:
    """The domain mask of :func:`domain_motion_series` moved with the domain to each angle (K, D, D, D)."""
    mask, centre, pivot = _domain(vol, radius_frac, domain)
    axis = hinge_axis(centre, pivot)
    return np.stack([rotate_about(mask, axis, a, pivot) for a in angles_deg])


def domain_truth_parts(vol: np.ndarray, angles_deg, radius_frac: float = 0.22,
                       domain=None) -> tuple[np.ndarray, np.ndarray]:
    """The two parts of :func:`domain_motion_series`'s maps at ``angles_deg`` (K angles): the domain
    alone where it is at each angle (K, D, D, D) and the static rest (D, D, D), float32; domain k
    plus the rest is the map at angle k."""
    mask, centre, pivot = _domain(vol, radius_frac, domain)
    axis = hinge_axis(centre, pivot)
    domain_k = np.stack([rotate_about(vol * mask, axis, a, pivot) for a in angles_deg])
    return domain_k, (vol * (1 - mask)).astype(np.float32)


def remove_static_part(m: np.ndarray, static_truth: np.ndarray, static_mask: np.ndarray) -> np.ndarray:
    """``m`` (D, D, D) minus the true static part as ``m`` holds it: ``static_truth`` filtered by the
    per-shell gain ``g_k = Re⟨M̂, Ŝ⟩_k / |Ŝ|²_k`` fitted with both multiplied by ``static_mask`` (a
    region where only the static part has density). What is left is the moving part plus ``m``'s
    errors, its errors on the static density included."""
    from cryo_napari.geometry.fsc import shell_index_3d

    shell = np.fft.ifftshift(shell_index_3d(m.shape[-1]).numpy())  # the shells of an uncentred transform
    fm, fs = np.fft.fftn(m * static_mask), np.fft.fftn(static_truth * static_mask)
    num = np.bincount(shell.ravel(), (fm * fs.conj()).real.ravel())
    den = np.bincount(shell.ravel(), (np.abs(fs) ** 2).ravel())
    gain = num / np.maximum(den, 1e-12 * den.max())
    return (m - np.fft.ifftn(np.fft.fftn(static_truth) * gain[shell]).real).astype(np.float32)


def domain_only_fsc(m: np.ndarray, static_truth: np.ndarray, domain_truth: np.ndarray, mask: np.ndarray,
                    static_mask: np.ndarray) -> np.ndarray:
    """FSC (D/2 + 1 shells) inside ``mask`` of ``m`` without its static part
    (:func:`remove_static_part`) against the moving domain alone (``domain_truth``, e.g. from
    :func:`domain_truth_parts`). The plain FSC of ``m`` and the true map inside a domain mask also
    scores the static density the mask takes in where the domain meets the rest; at high resolution
    that dominates it (the average over all frames scores like the right frame; docs/flex.md)."""
    from cryo_napari.geometry.fsc import fsc

    return fsc(remove_static_part(m, static_truth, static_mask) * mask, domain_truth * mask)


def discrete_states(vol: np.ndarray, angle_deg: float = 25.0, radius_frac: float = 0.22):
    """Three states: the map, the domain swung by ``angle_deg``, and the map without the domain
    (``radius_frac``: the domain sphere's radius as a fraction of the box, :func:`domain_mask`).

    Returns (maps (3,D,D,D), names, mask).
    """
    mask, centre, pivot = domain_mask(vol, radius_frac=radius_frac)
    moved = rigid_domain_motion(vol, mask, pivot, hinge_axis(centre, pivot), [angle_deg])[0]
    maps = np.stack([vol.astype(np.float32), moved, remove_region(vol, mask)])
    return maps, ["full", f"domain_{angle_deg:g}deg", "domain_removed"], mask
