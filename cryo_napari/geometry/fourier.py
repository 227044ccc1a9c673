"""Fourier conventions, written once, and central-slice projection / back-projection.

Conventions
-----------
- Transforms are *centred*: ``fft_centered`` = ``fftshift(fftn(ifftshift(x)))`` over the last
  2 (images) or 3 (volumes) axes, so the DC component sits at index ``D // 2`` and the real-space
  origin (rotation centre) is at pixel ``D // 2`` as in RELION and cryoDRGN. ``D`` must be even.
- Frequencies are integer indices ``k ∈ [-D/2, D/2)`` in cycles per box; ``k / (D·apix)`` is Å⁻¹.
- Arrays are ``[..., z, y, x]``; frequency vectors are ``(kx, ky, kz)``.
- Projection: slice frequency ``k3 = k2 @ R`` (see :mod:`cryo_napari.geometry.rotations`).
- Shifts: an image shifted by ``t = (tx, ty)`` pixels, ``I'(r) = I(r - t)``, has
  ``Î'(k) = Î(k) · exp(-2πi k·t / D)`` (:func:`phase_shift_2d`).

Slice extraction uses trilinear interpolation of the volume transform computed on a
zero-padded (``pad``×) box; back-projection uses trilinear splatting at box ``D`` with
the matching ``sinc²`` gridding correction.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def fft_centered(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Centred FFT over the last ``ndim`` axes (DC at ``D // 2``)."""
    dims = tuple(range(-ndim, 0))
    return torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(x, dim=dims), dim=dims), dim=dims)


def ifft_centered(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Inverse of :func:`fft_centered` (complex output)."""
    dims = tuple(range(-ndim, 0))
    return torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(x, dim=dims), dim=dims), dim=dims)


def frequency_grid_2d(D: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Integer frequency grid of a centred ``D×D`` transform, shape (D, D, 2) as (kx, ky)."""
    k = torch.arange(D, device=device, dtype=dtype) - D // 2
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    return torch.stack([kx, ky], dim=-1)


def radial_frequency_2d(D: int, device=None) -> torch.Tensor:
    """|k| in cycles/box for a centred (D, D) transform."""
    return frequency_grid_2d(D, device).norm(dim=-1)


def pad_volume(vol: torch.Tensor, factor: int) -> torch.Tensor:
    """Zero-pad a (D, D, D) volume to (factor·D)³ keeping the origin at the centre."""
    if factor == 1:
        return vol
    D = vol.shape[-1]
    P = factor * D
    p0 = P // 2 - D // 2
    out = vol.new_zeros(vol.shape[:-3] + (P, P, P))
    out[..., p0 : p0 + D, p0 : p0 + D, p0 : p0 + D] = vol
    return out


def volume_to_fourier(vol: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """Centred 3-D transform of a (D, D, D) real volume, zero-padded by ``pad`` first.

    Returns a complex (pad·D)³ tensor; use it with :func:`project_fourier_slices` and the same
    ``pad``.
    """
    return fft_centered(pad_volume(vol.to(torch.float32), pad).to(torch.complex64), 3)


def _sample_trilinear(vol_ft: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of a centred complex (P, P, P) transform at (..., 3) index coords (x,y,z)
    given in frequency units of the P-box; zero outside."""
    P = vol_ft.shape[-1]
    grid = (coords + P // 2) / (P - 1) * 2 - 1  # align_corners=True normalisation
    shape = grid.shape[:-1]
    grid = grid.reshape(1, 1, 1, -1, 3)
    planes = torch.stack([vol_ft.real, vol_ft.imag])[None]  # (1, 2, P, P, P)
    out = F.grid_sample(planes, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    out = out.reshape(2, *shape)
    return torch.complex(out[0], out[1])


def project_fourier_slices(vol_ft: torch.Tensor, rotations: torch.Tensor, D: int,
                           pad: int = 2) -> torch.Tensor:
    """Central slices of a padded volume transform → centred 2-D transforms of the projections.

    Parameters
    ----------
    vol_ft : complex (pad·D)³ tensor from :func:`volume_to_fourier`.
    rotations : (N, 3, 3) tensor, internal convention.
    D : output box (pixels).

    Returns
    -------
    complex (N, D, D) tensor, equal to ``fft_centered(projection, 2)`` of the real-space
    projections at box D.
    """
    k2 = frequency_grid_2d(D, rotations.device)  # (D, D, 2)
    k3 = torch.cat([k2, torch.zeros_like(k2[..., :1])], dim=-1).reshape(-1, 3)
    coords = torch.einsum("pi,nij->npj", k3, rotations.to(torch.float32)) * pad
    return _sample_trilinear(vol_ft, coords).reshape(-1, D, D)


def project_3d_to_2d(vol: torch.Tensor, rotations: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """Real-space projections (N, D, D) of a real (D, D, D) volume at the given poses."""
    D = vol.shape[-1]
    slices = project_fourier_slices(volume_to_fourier(vol, pad), rotations, D, pad)
    return ifft_centered(slices, 2).real


def phase_shift_2d(images_ft: torch.Tensor, shifts_px: torch.Tensor) -> torch.Tensor:
    """Translate centred 2-D transforms (N, D, D) by ``shifts_px`` (N, 2) pixels (x, y).

    ``I'(r) = I(r - t)``: positive ``t`` moves the content towards +x / +y.
    """
    D = images_ft.shape[-1]
    k = frequency_grid_2d(D, images_ft.device)  # (D, D, 2)
    phase = -2 * math.pi / D * torch.einsum("yxc,nc->nyx", k, shifts_px.to(torch.float32))
    return images_ft * torch.polar(torch.ones_like(phase), phase)


def insert_fourier_slices(slices: torch.Tensor, weights: torch.Tensor, rotations: torch.Tensor,
                          data: torch.Tensor, weight_vol: torch.Tensor) -> None:
    """Splat (N, D, D) complex slices and real weights into (D, D, D) accumulators, in place.

    ``data`` (complex) and ``weight_vol`` (real) are indexed ``[z, y, x]`` in centred frequency
    order. Trilinear splatting: the adjoint of trilinear slice extraction at ``pad = 1``.
    """
    D = data.shape[-1]
    k2 = frequency_grid_2d(D, slices.device)
    k3 = torch.cat([k2, torch.zeros_like(k2[..., :1])], dim=-1).reshape(-1, 3)
    coords = torch.einsum("pi,nij->npj", k3, rotations.to(torch.float32)).reshape(-1, 3) + D // 2
    vals = slices.reshape(-1)
    w = weights.reshape(-1).to(torch.float32)
    # Keep points whose 8 neighbours lie inside the box.
    inside = ((coords >= 0) & (coords <= D - 1.0001)).all(dim=-1)
    coords, vals, w = coords[inside], vals[inside], w[inside]
    c0 = coords.floor()
    frac = coords - c0
    c0 = c0.long()
    flat_data = data.view(-1)
    flat_w = weight_vol.view(-1)
    for dx in (0, 1):
        fx = frac[:, 0] if dx else 1 - frac[:, 0]
        for dy in (0, 1):
            fy = frac[:, 1] if dy else 1 - frac[:, 1]
            for dz in (0, 1):
                fz = frac[:, 2] if dz else 1 - frac[:, 2]
                f = fx * fy * fz
                idx = ((c0[:, 2] + dz) * D + (c0[:, 1] + dy)) * D + (c0[:, 0] + dx)
                flat_data.index_add_(0, idx, vals * f)
                flat_w.index_add_(0, idx, w * f)


def trilinear_gridding_correction(D: int, device=None) -> torch.Tensor:
    """sinc² of the trilinear kernel in real space, (D, D, D); divide a map by it after splatting."""
    r = (torch.arange(D, device=device, dtype=torch.float32) - D // 2) / D
    s = torch.sinc(r) ** 2
    corr = s[:, None, None] * s[None, :, None] * s[None, None, :]
    return corr.clamp_min(1e-3)


def fourier_crop_2d(images: torch.Tensor, D_out: int) -> torch.Tensor:
    """Downsample real images (N, D, D) → (N, D_out, D_out) by cropping their transform.

    The pixel size grows by ``D / D_out``; the mean value per pixel is preserved.
    """
    D = images.shape[-1]
    if D_out == D:
        return images
    if D_out > D or D_out % 2:
        raise ValueError(f"Fourier crop needs an even box smaller than {D}, got {D_out}")
    ft = fft_centered(images.to(torch.float32), 2)
    s = D // 2 - D_out // 2
    ft = ft[..., s : s + D_out, s : s + D_out]
    return ifft_centered(ft, 2).real * (D_out / D) ** 2


def fourier_crop_3d(vol: torch.Tensor, D_out: int) -> torch.Tensor:
    """Downsample a real (D, D, D) volume to (D_out,)³ by cropping its transform."""
    D = vol.shape[-1]
    if D_out == D:
        return vol
    if D_out > D or D_out % 2:
        raise ValueError(f"Fourier crop needs an even box smaller than {D}, got {D_out}")
    ft = fft_centered(vol.to(torch.float32), 3)
    s = D // 2 - D_out // 2
    ft = ft[..., s : s + D_out, s : s + D_out, s : s + D_out]
    return ifft_centered(ft, 3).real * (D_out / D) ** 3


def fourier_crop_3d_for_projection(vol: torch.Tensor, D_out: int) -> torch.Tensor:
    """Downsample a (D, D, D) map to (D_out,)³ so that its projections match images of it
    downsampled with :func:`fourier_crop_2d`.

    Projections here are sums over voxels (line integrals in voxel units), and both crops keep
    the mean value per voxel/pixel, so a map cropped by :func:`fourier_crop_3d` projects
    ``D_out / D`` times weaker than the cropped images. This multiplies by ``D / D_out``. Use it
    wherever a user's map meets particles cropped to a smaller working box (initial class maps,
    the flex canonical map).
    """
    D = vol.shape[-1]
    return fourier_crop_3d(vol, D_out) * (D / D_out)


def lowpass_3d(vol: torch.Tensor, resolution_A: float, apix: float, soft_px: float = 2.0) -> torch.Tensor:
    """Low-pass a (D, D, D) map to ``resolution_A`` Å with a raised-cosine edge of ``soft_px``."""
    D = vol.shape[-1]
    k = torch.arange(D, dtype=torch.float32, device=vol.device) - D // 2
    kr = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    k_cut = D * apix / resolution_A
    filt = 0.5 * (1 + torch.cos(math.pi * ((kr - k_cut) / soft_px).clamp(0, 1)))
    return ifft_centered(fft_centered(vol.to(torch.complex64), 3) * filt, 3).real
