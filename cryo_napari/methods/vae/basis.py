"""A cheaper VAE decoder: basis volumes mixed by an MLP of z (``train-vae --decoder basis``).

The map at latent ``z`` is

    V(z) = s · mask · (P₀ + Σ_b w_b(z) P_b),    b = 1 … n_basis,

with ``P_b`` learnable real-space volumes (D, D, D) at the training box, ``mask`` a soft sphere of
radius D/2, ``w = MLP(z)`` (cryoDRGN's ResidLinearMLP, ``dec_layers`` × ``dec_dim``) and ``s`` a
fixed scale set from the data (so that the volumes hold numbers of order one, which suits Adam).
The decoder returns the same thing as the coordinate MLP (:class:`~.model.Decoder`): complex
transform values at rotated slice points, in the units of the normalised images. They come from
one real FFT of every basis volume per batch (zero-padded by ``pad``) and trilinear sampling at
the slice points, so the work per image is ~8·2·(n_basis + 1) multiply-adds per lattice point
instead of the MLP's ~2·10⁵ (``dec_dim`` 256): the training cost moves to the encoder and the
per-batch FFTs.

Why a basis: for a few discrete states a linear mix of volumes is exact, and a continuous motion
is a curve in the span of a few volumes (as cryoSPARC's 3D variability analysis assumes, here with
a non-linear map from z to the weights). A map is still generated for any ``z``.

``P₀`` starts as the data's Wiener-filtered back-projection (:func:`init_mean_from_data`), the
others as small noise, so the mean map is right from the first step and the encoder only has to
learn the differences.

Shapes: coordinates (B, M, 3) as (kx, ky, kz) / D (cycles/px); volumes indexed [z, y, x].
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cryo_napari.geometry.fourier import fft_centered, insert_fourier_slices
from cryo_napari.geometry.masks import soft_spherical_mask_3d


class BasisDecoder(nn.Module):
    """``(coords, z) → (Re, Im)`` of ``V(z)``'s transform from mixed basis volumes (module docstring).

    Parameters
    ----------
    D : training box (px, even).
    zdim : latent size.
    n_basis : number of volumes mixed by ``w(z)`` (besides the mean ``P₀``).
    nlayers, hidden : the mixing MLP.
    pad : zero-padding factor of the volumes before their FFT (default 1: 2 costs ~20x more per batch,
        measured; the trilinear loss of accuracy is corrected on output, see :meth:`volume`).
    smooth : Gaussian blur (σ, px of the training box) of the difference volumes ``P_b`` (b ≥ 1),
        applied to their transforms; 0 = none. The mean ``P₀`` is never blurred. Free voxels fit
        the noise, and noisy differences make a poorer latent: on a 3-state D = 32 set, σ = 1 raised
        k-means ARI from 0.27 to 0.38 (docs/vae.md).
    """

    def __init__(self, D: int, zdim: int, n_basis: int = 8, nlayers: int = 3, hidden: int = 256, pad: int = 1,
                 smooth: float = 1.0):
        super().__init__()
        from cryo_napari.methods.vae.model import resid_mlp

        self.D, self.n_basis, self.pad, self.smooth = D, n_basis, pad, float(smooth)
        self.volumes = nn.Parameter(torch.randn(n_basis + 1, D, D, D) * 1e-2)
        self.mix = resid_mlp(zdim, nlayers, hidden, n_basis)
        with torch.no_grad():
            self.mix[-1].weight.mul_(0.1)
            self.mix[-1].bias.zero_()
        self.register_buffer("mask", torch.as_tensor(soft_spherical_mask_3d(D, D / 2 - 2, 2.0), dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(1.0))
        P = pad * D
        kzy = torch.arange(P + 1, dtype=torch.float32) - P // 2
        kx = torch.arange(P // 2 + 1, dtype=torch.float32)
        f2 = (kzy[:, None, None] ** 2 + kzy[None, :, None] ** 2 + kx[None, None, :] ** 2) / P**2  # (cycles/px)²
        self.register_buffer("diff_filter", torch.exp(-2 * torch.pi**2 * self.smooth**2 * f2), persistent=False)

    def _blur(self, vol: torch.Tensor) -> torch.Tensor:
        """The difference-volume blur on a (D, D, D) volume, computed as the decoder does (at the
        padded box, then cropped)."""
        if self.smooth <= 0:
            return vol
        P, D = self.pad * self.D, self.D
        p0 = P // 2 - D // 2
        big = F.pad(vol, (p0, P - D - p0) * 3)
        ft = torch.fft.rfftn(torch.fft.ifftshift(big), dim=(-3, -2, -1))
        filt = torch.fft.ifftshift(self.diff_filter[:P, :P], dim=(0, 1))
        big = torch.fft.fftshift(torch.fft.irfftn(ft * filt, s=(P, P, P), dim=(-3, -2, -1)))
        return big[p0:p0 + D, p0:p0 + D, p0:p0 + D]

    def weights(self, z: torch.Tensor | None) -> torch.Tensor:
        """Mixing weights (B, n_basis + 1): 1 for the mean volume, ``w(z)`` for the others."""
        if z is None:
            return torch.cat([torch.ones(1, 1), torch.zeros(1, self.n_basis)], dim=1).to(self.volumes)
        w = self.mix(z.to(self.volumes.dtype))
        return torch.cat([torch.ones_like(w[:, :1]), w], dim=1)

    def half_transforms(self) -> torch.Tensor:
        """Real FFTs of the padded, masked volumes as (2·(n_basis+1), P+1, P+1, P/2+1) real channels
        (Re, Im per volume), ``P = pad·D``; axes [kz, ky, kx] centred in kz, ky (index k + P/2, with
        the +P/2 plane repeated from −P/2 so interpolation wraps), kx = 0 … P/2."""
        P = self.pad * self.D
        vol = self.volumes * (self.mask * self.scale)
        p0 = P // 2 - self.D // 2
        p1 = P - self.D - p0
        vol = F.pad(vol, (p0, p1, p0, p1, p0, p1))
        ft = torch.fft.rfftn(torch.fft.ifftshift(vol, dim=(-3, -2, -1)), dim=(-3, -2, -1))
        ft = torch.fft.fftshift(ft, dim=(-3, -2))
        ft = torch.cat([ft, ft[:, :1]], dim=1)
        ft = torch.cat([ft, ft[:, :, :1]], dim=2)
        if self.smooth > 0:
            ft = torch.cat([ft[:1], ft[1:] * self.diff_filter], dim=0)
        return torch.view_as_real(ft).permute(0, 4, 1, 2, 3).reshape(-1, P + 1, P + 1, P // 2 + 1)

    def basis_slices(self, coords: torch.Tensor, planes: torch.Tensor | None = None) -> torch.Tensor:
        """Transform values of every (masked, scaled) basis volume at ``coords`` (B, M, 3) (or (M, 3)):
        real (n_basis + 1, 2, B, M) as (volume, Re/Im, image, point); ``V(z)``'s values are their
        mix with :meth:`weights`. ``planes``: :meth:`half_transforms` computed once by a caller
        that slices many batches with fixed volumes (default: computed here)."""
        if coords.dim() == 2:
            coords = coords[None]
        P = self.pad * self.D
        c = coords * P  # frequency in cycles per padded box
        sign = torch.where(c[..., :1] < 0, -1.0, 1.0).to(c.dtype)  # Friedel: read −k where kx < 0
        c = c * sign
        grid = torch.stack([c[..., 0] / (P // 2), (c[..., 1] + P // 2) / P, (c[..., 2] + P // 2) / P], dim=-1) * 2 - 1
        B, M = grid.shape[:2]
        planes = (self.half_transforms() if planes is None else planes)[None]  # (1, C, P+1, P+1, P/2+1)
        out = F.grid_sample(planes, grid.reshape(1, B, M, 1, 3), mode="bilinear", padding_mode="zeros",
                            align_corners=True)  # (1, C, B, M, 1)
        out = out.reshape(self.n_basis + 1, 2, B, M)
        return torch.stack([out[:, 0], out[:, 1] * sign[..., 0]], dim=1)

    def forward(self, coords: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """Complex transform values (B, M, 2) at coordinates (B, M, 3) (or (M, 3)) for latents (B, zdim)."""
        out = self.basis_slices(coords)
        B = out.shape[2]
        w = self.weights(z)
        if w.shape[0] != B:
            w = w.expand(B, -1)
        return torch.einsum("nrbm,bn->bmr", out, w)

    @torch.no_grad()
    def volume(self, z: torch.Tensor | None) -> torch.Tensor:
        """The map (D, D, D) at latent ``z`` (zdim,) in decoder units (the images' normalised units),
        corrected for the trilinear interpolation the slices go through (sinc² at the padded box)."""
        w = self.weights(None if z is None else z.reshape(1, -1))[0]
        diff = torch.einsum("n,nzyx->zyx", w[1:], self.volumes[1:]) * self.mask * self.scale
        vol = self.volumes[0] * self.mask * self.scale + self._blur(diff)
        D, P = self.D, self.pad * self.D
        r = (torch.arange(D, dtype=torch.float32, device=vol.device) - D // 2) / P
        s = torch.sinc(r) ** 2
        return vol * (s[:, None, None] * s[None, :, None] * s[None, None, :])

    def volume_ft(self, z: torch.Tensor | None, D_out: int) -> torch.Tensor:
        """Centred complex transform (D_out,)³ of :meth:`volume` (a central crop when ``D_out < D``),
        zero beyond radius D/2, as :func:`~.model.generate_volume_ft` returns."""
        ft = fft_centered(self.volume(z).to(torch.complex64), 3)
        a = self.D // 2 - D_out // 2
        ft = ft[a:a + D_out, a:a + D_out, a:a + D_out]
        k = torch.arange(D_out, dtype=torch.float32, device=ft.device) - D_out // 2
        r = (k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2).sqrt()
        return torch.where(r <= self.D / 2, ft, torch.zeros((), dtype=ft.dtype, device=ft.device)).cpu()


@torch.no_grad()
def init_mean_from_data(decoder: BasisDecoder, data, n_max: int = 4000, batch_size: int = 256) -> dict:
    """Set ``P₀`` to the Wiener-filtered back-projection of up to ``n_max`` particles of ``data``
    (a :class:`~.data.VAEData`, normalised half-lattice values), and the scale ``s`` to its RMS
    inside the mask. Deterministic (the first ``n_max`` particles), so every DDP rank agrees.
    Returns {"n": particles used, "scale": s}."""
    from cryo_napari.geometry.backproject import Backprojector

    D = data.D
    lat = data.lattice
    dev = decoder.volumes.device
    bp = Backprojector(D)  # its accumulators take the data's (already centred, CTF'd) half lattices
    n = min(data.N, n_max)
    flat = lat.flat
    k = lat.k.round().long()
    mate = ((-k[:, 1] + D // 2) % D) * D + ((-k[:, 0] + D // 2) % D)  # flat index of −k in the centred grid
    for b in range(0, n, batch_size):
        ind = np.arange(b, min(n, b + batch_size))
        batch = data.batch(ind)
        y = torch.complex(batch["y"][..., 0], batch["y"][..., 1])  # (B, M)
        c = batch["ctf"] if batch["ctf"] is not None else torch.ones(y.shape)
        full = torch.zeros((len(ind), D * D), dtype=torch.complex64)
        cfull = torch.zeros((len(ind), D * D), dtype=torch.float32)
        full[:, mate] = (y * c).conj()
        cfull[:, mate] = c * c
        full[:, flat] = y * c
        cfull[:, flat] = c * c
        insert_fourier_slices(full.reshape(-1, D, D), cfull.reshape(-1, D, D), batch["rot"], bp.data, bp.weight)
    wts = bp.weight
    vol = bp.reconstruct(wiener=0.05 * float(wts[wts > 0].mean()) if (wts > 0).any() else 1.0)
    mask = decoder.mask.cpu()
    scale = float((vol * mask).square().sum().div(mask.square().sum()).sqrt()) or 1.0
    decoder.scale.fill_(scale)
    decoder.volumes[0].copy_((vol / scale).to(dev))
    return {"n": n, "scale": scale}


def basis_flops_per_point(n_basis: int) -> float:
    """Multiply-adds per lattice point and image of slice sampling and mixing (forward)."""
    return 8 * 2 * (n_basis + 1) + 2 * (n_basis + 1)


__all__ = ["BasisDecoder", "init_mean_from_data", "basis_flops_per_point"]
