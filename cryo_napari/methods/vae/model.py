"""VAE for heterogeneous reconstruction (the cryoDRGN family): image encoder + coordinate decoder.

Representation
--------------
The decoder maps a 3-D frequency ``k`` (in units of the training box, ``k / D`` ∈ [-0.5, 0.5]) and
a latent ``z`` to two numbers ``(a, b)``, read as the complex transform ``V̂(k) = a + i b`` on the
half space ``k_z > 0``. For ``k_z < 0`` it is evaluated at ``-k`` and conjugated, so the map is
real by construction (Friedel symmetry ``V̂(-k) = conj V̂(k)``). This is cryoDRGN's
``FTPositionalDecoder`` construction; cryoDRGN reads the pair as a Hartley value ``a − b`` on every
pixel of the image lattice. Both readings are offered (``repr``):

- ``"fourier"`` (default): the loss is the complex misfit on the *Friedel half* of the masked
  image lattice (the other half is redundant), so the decoder runs on half as many points.
- ``"hartley"``: the loss is the Hartley misfit ``(a − b) − H`` on the full masked lattice, as
  cryoDRGN; identical information, twice the decoder work.

Both give the same mean squared error per full-lattice pixel, and the same generated volumes.

Shapes: images ``B``; lattice points ``M``; latent ``zdim``; coordinates ``(..., 3)`` as
``(kx, ky, kz) / D``.
"""

from __future__ import annotations

import torch
from torch import nn


class ResidLinear(nn.Module):
    """``x + Linear(x)`` (cryoDRGN's ResidLinear)."""

    def __init__(self, n: int):
        super().__init__()
        self.linear = nn.Linear(n, n)

    def forward(self, x):
        return x + self.linear(x)


def resid_mlp(in_dim: int, nlayers: int, hidden: int, out_dim: int) -> nn.Sequential:
    """cryoDRGN's ResidLinearMLP: in→hidden, ``nlayers`` residual hidden layers, hidden→out."""
    layers = [nn.Linear(in_dim, hidden), nn.ReLU()]
    for _ in range(nlayers):
        layers += [ResidLinear(hidden), nn.ReLU()]
    layers.append(nn.Linear(hidden, out_dim))
    return nn.Sequential(*layers)


class PositionalEncoding(nn.Module):
    """Positional encoding of 3-D coordinates in [-0.5, 0.5] (cryoDRGN's ``--pe-type``).

    ``"gaussian"``: ``sin/cos(k·ω)`` of random projections, ``ω ~ N(0, σ²)·D/2`` (radians per unit)
    (3·pe_dim frequencies, σ = ``feat_sigma``, default 0.5, as cryoDRGN).
    ``"geom_lowf"``: per axis, geometric frequencies from D/2 down to 1 (radians per unit).
    Output width ``6·pe_dim`` in both cases.
    """

    def __init__(self, D: int, pe_type: str = "gaussian", pe_dim: int | None = None,
                 feat_sigma: float = 0.5, seed: int = 0):
        super().__init__()
        if pe_type not in ("gaussian", "geom_lowf"):
            raise ValueError(f"unknown positional encoding {pe_type!r} (gaussian, geom_lowf)")
        self.pe_type = pe_type
        self.D2 = D // 2
        self.pe_dim = pe_dim or self.D2
        g = torch.Generator().manual_seed(seed)
        if pe_type == "gaussian":
            freqs = torch.randn(3 * self.pe_dim, 3, generator=g) * feat_sigma * self.D2  # (F, 3)
        else:
            f = torch.arange(self.pe_dim, dtype=torch.float32)
            f = self.D2 * (1.0 / self.D2) ** (f / max(self.pe_dim - 1, 1))  # (pe_dim,)
            freqs = torch.zeros(3 * self.pe_dim, 3)
            for ax in range(3):
                freqs[ax * self.pe_dim:(ax + 1) * self.pe_dim, ax] = f
        self.register_buffer("freqs", freqs)

    @property
    def out_dim(self) -> int:
        return 6 * self.pe_dim

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """(..., 3) coordinates → (..., 6·pe_dim) features."""
        k = coords @ self.freqs.T
        return torch.cat([torch.sin(k), torch.cos(k)], dim=-1)


class Decoder(nn.Module):
    """Coordinate MLP ``(PE(k), z) → (a, b)`` with Friedel symmetry (see the module docstring).

    The first layer is split into its coordinate and latent parts, so the latent term is
    computed once per image and broadcast over the lattice.
    """

    def __init__(self, D: int, zdim: int, nlayers: int = 3, hidden: int = 256, pe_type: str = "gaussian",
                 pe_dim: int | None = None, feat_sigma: float = 0.5, seed: int = 0):
        super().__init__()
        self.pe = PositionalEncoding(D, pe_type, pe_dim, feat_sigma, seed)
        self.first_pe = nn.Linear(self.pe.out_dim, hidden)
        self.first_z = nn.Linear(zdim, hidden, bias=False) if zdim > 0 else None
        layers = [nn.ReLU()]
        for _ in range(nlayers):
            layers += [ResidLinear(hidden), nn.ReLU()]
        layers.append(nn.Linear(hidden, 2))
        self.rest = nn.Sequential(*layers)
        self._init_first_layer_as_one(self.pe.out_dim + zdim)

    @torch.no_grad()
    def _init_first_layer_as_one(self, fan_in: int) -> None:
        """Initialise ``first_pe`` and ``first_z`` as the one ``Linear(pe + zdim, hidden)`` they
        replace (cryoDRGN's first layer): uniform in ±1/√fan_in. Left at PyTorch's per-module
        default, the latent weights would start √((pe + zdim)/zdim) ≈ 3× larger, so the random z
        of early epochs perturbs every slice and the map is learned ~2× more slowly (measured)."""
        bound = fan_in ** -0.5
        for lin in (self.first_pe, self.first_z):
            if lin is not None:
                nn.init.uniform_(lin.weight, -bound, bound)
                if lin.bias is not None:
                    nn.init.uniform_(lin.bias, -bound, bound)

    def half_space(self, coords: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """Raw output (a, b) at coordinates (B, M, 3) or (M, 3) for latents (B, zdim) → (B, M, 2)."""
        h = self.first_pe(self.pe(coords))
        if self.first_z is not None and z is not None:
            h = h + self.first_z(z)[:, None, :]
        return self.rest(h)

    def forward(self, coords: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """Complex transform values at coordinates (B, M, 3) as (B, M, 2) = (Re, Im), Friedel-symmetric."""
        x, y, zc = coords[..., 0:1], coords[..., 1:2], coords[..., 2:3]
        neg = (zc < 0) | ((zc == 0) & ((y < 0) | ((y == 0) & (x < 0))))  # lower half space, ties broken
        sign = 1.0 - 2.0 * neg.to(coords.dtype)  # (B, M, 1)
        ab = self.half_space(coords * sign, z)
        return torch.cat([ab[..., :1], ab[..., 1:] * sign], dim=-1)


class Encoder(nn.Module):
    """ResidLinearMLP from the flattened encoder input (B, in_dim) to (mu, logvar), each (B, zdim)."""

    def __init__(self, in_dim: int, zdim: int, nlayers: int = 3, hidden: int = 256):
        super().__init__()
        self.zdim = zdim
        self.net = resid_mlp(in_dim, nlayers, hidden, 2 * zdim)

    def forward(self, x: torch.Tensor):
        out = self.net(x)
        return out[:, : self.zdim], out[:, self.zdim:]


class VAE(nn.Module):
    """Encoder + decoder. ``arch`` is the dict stored in ``config.yaml`` (see :func:`build_vae`)."""

    def __init__(self, arch: dict):
        super().__init__()
        self.arch = dict(arch)
        self.encoder = Encoder(arch["enc_in"], arch["zdim"], arch["enc_layers"], arch["enc_dim"])
        if arch.get("decoder", "mlp") == "basis":
            from cryo_napari.methods.vae.basis import BasisDecoder

            self.decoder = BasisDecoder(arch["D"], arch["zdim"], arch.get("n_basis", 8), arch["dec_layers"],
                                        arch["dec_dim"], arch.get("basis_pad", 1), arch.get("basis_smooth", 1.0))
        else:
            self.decoder = Decoder(arch["D"], arch["zdim"], arch["dec_layers"], arch["dec_dim"], arch["pe_type"],
                                   arch.get("pe_dim"), arch.get("feat_sigma", 0.5), arch.get("seed", 0))

    @property
    def zdim(self) -> int:
        return self.arch["zdim"]

    def encode(self, x):
        return self.encoder(x)

    def slice_coords(self, rotations: torch.Tensor, k2: torch.Tensor) -> torch.Tensor:
        """2-D lattice points ``k2`` (M, 2) in cycles/box rotated by (B, 3, 3) → (B, M, 3) in k/D."""
        k3 = torch.cat([k2, torch.zeros_like(k2[:, :1])], dim=-1) / self.arch["D"]
        return torch.einsum("mi,bij->bmj", k3, rotations)

    def decode_slices(self, rotations, k2, z):
        """Complex central-slice values (B, M, 2) at image lattice points ``k2`` (M, 2)."""
        return self.decoder(self.slice_coords(rotations, k2), z)


def build_vae(D: int, enc_in: int, zdim: int = 8, enc_layers: int = 3, enc_dim: int = 256, dec_layers: int = 3,
              dec_dim: int = 256, pe_type: str = "gaussian", pe_dim: int | None = None, feat_sigma: float = 0.5,
              seed: int = 0, decoder: str = "mlp", n_basis: int = 8, basis_pad: int = 1,
              basis_smooth: float = 1.0) -> VAE:
    """A :class:`VAE` for training box ``D`` and encoder input width ``enc_in``; ``decoder`` is
    ``"mlp"`` (coordinate MLP, cryoDRGN's) or ``"basis"`` (:mod:`~.basis`, ``n_basis`` volumes)."""
    if decoder not in ("mlp", "basis"):
        raise ValueError(f"unknown decoder {decoder!r} (mlp, basis)")
    arch = dict(D=D, enc_in=enc_in, zdim=zdim, enc_layers=enc_layers, enc_dim=enc_dim, dec_layers=dec_layers,
                dec_dim=dec_dim, pe_type=pe_type, pe_dim=pe_dim, feat_sigma=feat_sigma, seed=seed)
    if decoder == "basis":
        arch.update(decoder="basis", n_basis=n_basis, basis_pad=basis_pad, basis_smooth=basis_smooth)
    torch.manual_seed(seed)
    return VAE(arch)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of KL(N(mu, σ²) ‖ N(0, 1)) summed over latent dimensions."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)).mean()


def reparameterize(mu, logvar):
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


@torch.no_grad()
def generate_volume_ft(model: VAE, z: torch.Tensor | None, D_out: int, chunk: int = 1 << 15) -> torch.Tensor:
    """Centred complex transform (D_out,)³ of the map at latent ``z`` (zdim,), on the training grid.

    Voxel ``k`` (cycles per box of ``D_out``) is evaluated at ``k / D_train``; with ``D_out <
    D_train`` this is a Fourier crop (low-resolution preview). Values beyond radius ``D_train/2``
    are zero.
    """
    if hasattr(model.decoder, "volume_ft"):
        return model.decoder.volume_ft(z, D_out)
    D = model.arch["D"]
    k = torch.arange(D_out, dtype=torch.float32) - D_out // 2
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    coords = torch.stack([kx, ky, kz], dim=-1).reshape(-1, 3) / D
    inside = coords.norm(dim=-1) <= 0.5
    pts = coords[inside]
    zz = None if z is None else z.reshape(1, -1).to(torch.float32)
    vals = torch.cat([model.decoder(pts[i:i + chunk][None], zz)[0] for i in range(0, len(pts), chunk)])
    out = torch.zeros(D_out**3, dtype=torch.complex64)
    out[inside] = torch.complex(vals[:, 0].float(), vals[:, 1].float())
    return out.reshape(D_out, D_out, D_out)


def flops_per_image(arch: dict, n_points: int) -> float:
    """Approximate multiply-add FLOPs (×2) of one image through encoder and decoder (forward only)."""
    e, d, z = arch["enc_dim"], arch["dec_dim"], arch["zdim"]
    enc = arch["enc_in"] * e + arch["enc_layers"] * e * e + e * 2 * z
    if arch.get("decoder") == "basis":  # slice sampling + mixing; the per-batch FFTs are not counted
        from cryo_napari.methods.vae.basis import basis_flops_per_point

        nb = arch.get("n_basis", 8)
        return 2.0 * (enc + n_points * basis_flops_per_point(nb) + z * d + arch["dec_layers"] * d * d + d * nb)
    pe_w = 6 * (arch.get("pe_dim") or arch["D"] // 2)
    dec = n_points * (3 * pe_w / 2 + pe_w * d + arch["dec_layers"] * d * d + d * 2) + z * d
    return 2.0 * (enc + dec)


__all__ = ["VAE", "build_vae", "Decoder", "Encoder", "PositionalEncoding", "kl_divergence", "reparameterize",
           "generate_volume_ft", "flops_per_image"]
