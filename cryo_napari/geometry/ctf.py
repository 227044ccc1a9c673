"""Contrast transfer function, batched in torch.

Sign convention: RELION's. ``CTF(0) = +w`` (amplitude contrast) so that images extracted with
inverted contrast (white particles, as RELION and cryoSPARC write them) equal
``projection ⊗ CTF``. cryoDRGN's ``compute_ctf`` is the negative of this and it inverts the data
by default, so its default pipeline and ours agree; ``--uninvert`` here means the same as
cryoDRGN's ``--uninvert-data`` (the stack has dark particles).

Units: defocus in Å (underfocus positive), astigmatism angle in radians, voltage in kV,
spherical aberration in mm, phase shift in radians, B-factor in Å², pixel size in Å.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch

from cryo_napari.geometry.fourier import frequency_grid_2d


@dataclass
class CTFParams:
    """Per-particle CTF parameters, arrays of shape (N,)."""

    defocus_u_A: np.ndarray
    defocus_v_A: np.ndarray
    astig_angle_rad: np.ndarray
    voltage_kV: np.ndarray
    cs_mm: np.ndarray
    amp_contrast: np.ndarray
    phase_shift_rad: np.ndarray
    bfactor_A2: np.ndarray

    def __post_init__(self):
        n = len(np.atleast_1d(self.defocus_u_A))
        for f in fields(self):
            v = np.asarray(getattr(self, f.name), dtype=np.float64)
            if v.ndim == 0:
                v = np.full(n, float(v))
            setattr(self, f.name, v)

    def __len__(self) -> int:
        return len(self.defocus_u_A)

    def subset(self, ind) -> "CTFParams":
        """The parameters of particles ``ind`` (an index array or mask)."""
        return CTFParams(**{f.name: getattr(self, f.name)[ind] for f in fields(self)})

    def as_tensor(self, ind=None, device=None) -> torch.Tensor:
        """(N, 8) float32 tensor in field order (for fast batched evaluation)."""
        cols = [getattr(self, f.name) if ind is None else getattr(self, f.name)[ind] for f in fields(self)]
        return torch.as_tensor(np.stack(cols, axis=-1), dtype=torch.float32, device=device)


def electron_wavelength_A(voltage_kV):
    """Relativistic electron wavelength in Å for an accelerating voltage in kV."""
    v = voltage_kV * 1e3
    return 12.2643247 / (v + 0.978466e-6 * v**2) ** 0.5


def calculate_ctf_2d(params: torch.Tensor, D: int, apix, device=None) -> torch.Tensor:
    """CTF on a centred (D, D) frequency grid for each particle.

    Parameters
    ----------
    params : (N, 8) tensor from :meth:`CTFParams.as_tensor`.
    D : box in pixels.
    apix : float or (N,) tensor, pixel size in Å.

    Returns
    -------
    (N, D, D) float32 tensor.
    """
    params = params.to(device=device, dtype=torch.float32)
    dfu, dfv, ang, kv, cs, w, phase, bfac = params.unbind(-1)
    apix = torch.as_tensor(apix, dtype=torch.float32, device=params.device).reshape(-1, 1, 1)
    k = frequency_grid_2d(D, params.device) / (D * apix[..., None])  # (N|1, D, D, 2) in 1/Å
    kx, ky = k[..., 0], k[..., 1]
    s2 = kx**2 + ky**2
    theta = torch.atan2(ky, kx)
    lam = electron_wavelength_A(kv)[:, None, None]
    df = 0.5 * (dfu + dfv)[:, None, None] + 0.5 * (dfu - dfv)[:, None, None] * torch.cos(
        2 * (theta - ang[:, None, None])
    )
    cs_A = (cs * 1e7)[:, None, None]
    gamma = 2 * math.pi * (-0.5 * df * lam * s2 + 0.25 * cs_A * lam**3 * s2**2) - phase[:, None, None]
    w = w[:, None, None]
    ctf = w * torch.cos(gamma) - torch.sqrt(1 - w**2) * torch.sin(gamma)
    ctf = ctf * torch.exp(-bfac[:, None, None] / 4 * s2)
    return ctf
