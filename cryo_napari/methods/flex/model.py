"""The 3DFlex model: canonical map, latents (encoder or auto-decoder), flow generator, convection, projection.

Image model for particle ``i`` with latent ``z_i`` (K dims) and pose ``R_i``::

    d = g_θ(z_i) − g_θ(0)                    per-vertex displacement (P, 3), voxels of the box D
    u(x) = Σ_a λ_a(x) d[cell(x)_a]           per-voxel flow by barycentric interpolation
    V_i(x) = V(x − u(x))                     convected map (backward warp, trilinear)
    I_i(r) = Σ_z V_i(Rᵀ[r, z] + c)           real-space projection (c = D//2, unit steps)
    Î_i = CTF_i · FT(I_i)                    compared with the centred particle transform

Subtracting ``g_θ(0)`` makes the zero latent the canonical map exactly (generated series have the
canonical map in the middle). Latents are either encoded (``latent="encoder"``: an MLP on the
particle image, shared by all particles, as cryoDRGN) or auto-decoded (``latent="autodecode"``: one
``nn.Embedding`` row per particle, as cryoSPARC 3DFlex), and squashed into (−1.5, 1.5) by
``1.5·tanh``. The encoder is the training default: it gets a gradient from every batch, while an
embedding row moves once per epoch, too slowly to break the symmetry between a random latent and a
random generator (docs/flex.md, "Measured").

Projection is done in real space: the flow is sampled at the rotated grid points and the map at
the displaced points, two trilinear ``grid_sample`` calls per image, differentiable in V, θ and
z. The Fourier alternative needs a padded 3-D FFT of every particle's convected map, which is
slower on a CPU at the same box (see docs/flex.md).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cryo_napari.methods.flex.mesh import TetraMesh
from cryo_napari.methods.flex.mesh_voxels import nearest_mesh_voxel, voxel_barycentrics

ZMAX = 1.5


def mesh_points_in_box(mesh: TetraMesh, D: int) -> np.ndarray:
    """Mesh points (P, 3) xyz rescaled from the mesh box N to voxel units of box D."""
    return (mesh.points - mesh.N // 2) * (D / mesh.N) + D // 2


class FlowGenerator(nn.Module):
    """MLP ``z (B, K) → displacement (B, P, 3)`` in voxels, with ``g(0)`` subtracted."""

    def __init__(self, K: int, n_points: int, hidden: int = 64, layers: int = 6, init_scale: float = 0.1):
        super().__init__()
        mods, w = [], K
        for _ in range(layers):
            lin = nn.Linear(w, hidden)
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")  # keeps activations O(1) through depth
            nn.init.normal_(lin.bias, std=0.1)
            mods += [lin, nn.ReLU()]
            w = hidden
        self.body = nn.Sequential(*mods)
        self.head = nn.Linear(w, n_points * 3)
        with torch.no_grad():
            self.head.weight.mul_(init_scale)
            self.head.bias.zero_()
        self.P = n_points

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        zz = torch.cat([z, torch.zeros_like(z[:1])])
        out = self.head(self.body(zz)).reshape(-1, self.P, 3)
        return out[:-1] - out[-1:]


class LatentEncoder(nn.Module):
    """MLP ``image (B, D, D) → raw latent (B, K)``.

    With ``box`` < D the image is first Fourier-cropped to ``box`` (a low-pass: at low SNR most
    of the input's noise power is above the frequencies a domain motion changes). Inputs are
    divided by ``scale`` (the std of the, cropped, images).
    """

    def __init__(self, D: int, K: int, hidden: int = 128, scale: float = 1.0, box: int | None = None):
        super().__init__()
        self.box = int(box) if box and box < D else None
        d = self.box or D
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(d * d, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, K))
        self.register_buffer("scale", torch.tensor(float(scale)))

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """The encoder's input (B, box, box) before scaling."""
        from cryo_napari.geometry.fourier import fourier_crop_2d

        return images if self.box is None else fourier_crop_2d(images, self.box)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.prepare(images) / self.scale)


class FlexModel(nn.Module):
    """Canonical map, latents and generator over a mesh at training box ``D``.

    Parameters
    ----------
    mesh : the tetrahedral mesh (any box; rescaled to D).
    D : training box (pixels).
    n_particles : number of latent rows.
    K : latent dimensions.
    V0 : (D, D, D) initial canonical map.
    latent : "autodecode" (embedding rows) or "encoder" (image MLP, ``enc_hidden`` wide, input
        Fourier-cropped to ``enc_box`` when given and divided by ``image_scale``).
    """

    def __init__(self, mesh: TetraMesh, D: int, n_particles: int, K: int = 2, hidden: int = 64, layers: int = 6,
                 V0: np.ndarray | None = None, seed: int = 0, latent: str = "autodecode", enc_hidden: int = 128,
                 image_scale: float = 1.0, enc_box: int | None = None):
        super().__init__()
        if latent not in ("autodecode", "encoder"):
            raise ValueError(f"latent must be 'autodecode' or 'encoder', got {latent!r}")
        g = torch.Generator().manual_seed(seed)
        self.D, self.K, self.latent_mode = D, K, latent
        pts = mesh_points_in_box(mesh, D)
        self.register_buffer("rest", torch.as_tensor(pts, dtype=torch.float32))
        self.register_buffer("cells", torch.as_tensor(mesh.cells, dtype=torch.long))
        self.register_buffer("rweights", torch.as_tensor(mesh.rweights, dtype=torch.float32))
        P = self.rest[self.cells]  # (C, 4, 3)
        Dm = (P[:, 1:] - P[:, :1]).transpose(1, 2)  # columns p_a − p_0
        self.register_buffer("Dm_inv", torch.linalg.inv(Dm.double()).float())
        idx, cell, bary = voxel_barycentrics(mesh, D)
        self.register_buffer("vox_idx", torch.as_tensor(idx))
        self.register_buffer("vox_verts", self.cells[torch.as_tensor(cell)])
        self.register_buffer("vox_bary", torch.as_tensor(bary, dtype=torch.float32))
        # not persistent: rebuilt from the mesh, so checkpoints stay independent of the sampling
        support = support_mask(mesh, D)
        for name, t in zip(("support", "cull", "grid_r", "grid_pix"), projection_setup(support)):
            self.register_buffer(name, t, persistent=False)
        V0 = np.zeros((D, D, D), np.float32) if V0 is None else np.asarray(V0, np.float32)
        # density outside the support never projects, so it would stay at its initial value
        self.V = nn.Parameter(torch.tensor(np.array(V0)) * self.support)
        self.generator = FlowGenerator(K, len(pts), hidden, layers)
        self.latent = nn.Embedding(n_particles, K, sparse=True)
        with torch.no_grad():
            self.latent.weight.copy_(0.3 * torch.randn(n_particles, K, generator=g))
        self.encoder = LatentEncoder(D, K, enc_hidden, image_scale, enc_box) if latent == "encoder" else None

    # -- latents ------------------------------------------------------------------------------
    def z_of(self, ind: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        """Latents (B, K) in (−1.5, 1.5) of particles ``ind`` (their real-space ``images`` (B, D, D)
        are needed with the encoder)."""
        if self.encoder is not None:
            if images is None:
                raise ValueError("the encoder needs the particle images")
            return squash(self.encoder(images))
        return squash(self.latent(ind))

    def all_z(self, images: torch.Tensor | None = None, batch: int = 1024) -> np.ndarray:
        """Latents (N, K) of all particles (``images`` (N, D, D) with the encoder)."""
        if self.encoder is None:
            return squash(self.latent.weight.detach()).numpy()
        with torch.no_grad():
            return np.concatenate([squash(self.encoder(images[b : b + batch])).numpy()
                                   for b in range(0, len(images), batch)])

    # -- deformation --------------------------------------------------------------------------
    def displacements(self, z: torch.Tensor) -> torch.Tensor:
        """Per-vertex displacements (B, P, 3) in voxels of box D."""
        return self.generator(z)

    def flow_field(self, disp: torch.Tensor) -> torch.Tensor:
        """Per-voxel flow (B, 3, D, D, D) (channels x, y, z; zero outside the mesh)."""
        return flow_from_displacements(disp, self.vox_idx, self.vox_verts, self.vox_bary, self.D)

    def rigidity_penalty(self, disp: torch.Tensor) -> torch.Tensor:
        """Σ_j w_j Σ (σ − 1)² over each cell's deformation gradient, mean over the batch (B,)."""
        return rigidity_penalty(self.rest, self.cells, self.Dm_inv, self.rweights, disp)

    # -- images -------------------------------------------------------------------------------
    def project(self, flow: torch.Tensor | None, rotations: torch.Tensor, V: torch.Tensor | None = None) -> torch.Tensor:
        """Real-space projections (B, D, D) of the convected map at ``rotations`` (B, 3, 3)."""
        V = (self.V if V is None else V) * self.support
        return project_convected(V, flow, rotations, self.grid_r, self.grid_pix, self.cull)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As ``nn.Module``'s; ignores the full-box ``grid_r`` that checkpoints before 2026-11-30 saved."""
        state_dict = {k: v for k, v in state_dict.items() if k != "grid_r"}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def squash(raw: torch.Tensor) -> torch.Tensor:
    return ZMAX * torch.tanh(raw)


def unsquash(z: torch.Tensor) -> torch.Tensor:
    return torch.atanh((z / ZMAX).clamp(-0.999, 0.999))


def flow_from_displacements(disp, vox_idx, vox_verts, vox_bary, D: int) -> torch.Tensor:
    """(B, P, 3) vertex displacements → (B, 3, D, D, D) voxel flow via barycentric weights."""
    B = disp.shape[0]
    u = (disp[:, vox_verts] * vox_bary[None, :, :, None]).sum(2)  # (B, M, 3)
    flow = disp.new_zeros(B, 3, D * D * D)  # contiguous channels-first, as grid_sample wants it
    flow = flow.index_copy(2, vox_idx, u.transpose(1, 2))
    return flow.reshape(B, 3, D, D, D)


def _normalise(coords: torch.Tensor, D: int) -> torch.Tensor:
    """Voxel coordinates (xyz, 0..D−1) → grid_sample's [−1, 1] (align_corners=True)."""
    return coords * (2.0 / (D - 1)) - 1.0


def convect(V: torch.Tensor, flow: torch.Tensor | None) -> torch.Tensor:
    """Convected maps ``V(x − u(x))``: V (D, D, D), flow (B, 3, D, D, D) → (B, D, D, D)."""
    D = V.shape[-1]
    if flow is None:
        return V[None]
    B = flow.shape[0]
    k = torch.arange(D, dtype=V.dtype, device=V.device)
    zz, yy, xx = torch.meshgrid(k, k, k, indexing="ij")
    base = torch.stack([xx, yy, zz], -1)  # (D, D, D, 3)
    src = base[None] - flow.permute(0, 2, 3, 4, 1)
    out = F.grid_sample(V[None, None].expand(B, 1, D, D, D), _normalise(src, D), mode="bilinear",
                        padding_mode="zeros", align_corners=True)
    return out[:, 0]


def support_mask(mesh: TetraMesh, D: int, margin: float = 3.0) -> torch.Tensor:
    """(D, D, D) bool [z, y, x]: the voxels of box D where the convected map may be non-zero.

    The mesh's tetrahedra and its soft mask, resampled from the mesh box N to D (nearest mesh
    voxel, as :func:`voxel_barycentrics`), dilated by ``margin`` voxels of box D so that density
    moved by the flow stays inside. Solvent outside it neither projects nor is learned (cryoSPARC
    3DFlex likewise models the canonical density inside the mask).
    """
    from scipy import ndimage

    N = mesh.N
    inside = np.asarray(mesh.tetraidx_map) >= 0
    if mesh.mask_soft is not None:
        inside = inside | (np.asarray(mesh.mask_soft) > 0)
    k = nearest_mesh_voxel(np.arange(D), D, N)
    m = inside[np.ix_(k, k, k)]
    r = int(math.ceil(margin))
    if r > 0:
        g = np.arange(-r, r + 1)
        ball = (g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2) <= margin**2
        m = ndimage.binary_dilation(m, structure=ball)
    return torch.as_tensor(m)


def cull_mask(support: torch.Tensor) -> torch.Tensor:
    """``support`` (D, D, D) bool dilated by one voxel in every direction (3×3×3): a point whose
    nearest voxel is outside it has no trilinear neighbour in ``support``, so skipping it changes
    neither the projection of a map that is zero outside ``support`` nor that map's gradient."""
    from scipy import ndimage

    return torch.as_tensor(ndimage.binary_dilation(support.numpy(), structure=np.ones((3, 3, 3), bool)))


def projection_setup(support: torch.Tensor):
    """What :func:`project_convected` needs for a map modelled inside ``support`` (D, D, D) bool:
    (support, cull mask (D, D, D) bool, points r (M, 3), pixel index (M,)). Multiply the map by
    ``support`` and pass the rest; the projection is then that of the full cube."""
    cull = cull_mask(support)
    return (support, cull, *support_points(cull))


def projection_points(D: int, radius: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Image-frame grid points of the projection integral inside a sphere.

    Returns (r (M, 3) float32 xyz voxels about the centre D//2, pix (M,) int64 index y·D + x of
    the image pixel each point sums into). ``radius`` None keeps the whole D³ cube.
    """
    r = torch.arange(D, dtype=torch.float32) - D // 2
    zz, yy, xx = torch.meshgrid(r, r, r, indexing="ij")
    pts = torch.stack([xx, yy, zz], -1).reshape(-1, 3)
    pix = torch.arange(D * D).repeat(D)  # [z, y, x] order: the pixel of point p is p mod D²
    if radius is not None:
        keep = pts.square().sum(1) <= radius**2
        pts, pix = pts[keep], pix[keep]
    return pts.contiguous(), pix.contiguous()


def support_points(support: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Projection points (as :func:`projection_points`) inside the sphere about the box centre
    that holds ``support`` (D, D, D) bool under every rotation."""
    D = support.shape[-1]
    zyx = torch.nonzero(support).float()
    radius = float((zyx - D // 2).norm(dim=1).max()) + 1.0 if len(zyx) else 0.0
    return projection_points(D, radius)


def _cull(s: torch.Tensor, pix: torch.Tensor, support: torch.Tensor):
    """Keep, per particle, the points whose map-frame position ``s`` (B, M, 3) xyz lies in
    ``support``; pad to the batch's largest count with points far outside the box (they sample
    zero). Returns (s (B, M', 3), pix (B, M'))."""
    D = support.shape[-1]
    B, M, _ = s.shape
    near = s.detach().round().long().clamp_(0, D - 1)
    inside = support[near[..., 2], near[..., 1], near[..., 0]]  # (B, M)
    counts = inside.sum(1)
    keep = int(counts.max())
    # stream compaction without a sort: kept point j of a row goes to column (#kept before j)
    col = torch.where(inside, inside.cumsum(1) - 1, keep)
    dev = s.device
    order = torch.zeros(B, keep + 1, dtype=torch.long, device=dev).scatter_(
        1, col, torch.arange(M, device=dev).expand(B, M))[:, :keep]
    valid = torch.arange(keep, device=dev)[None] < counts[:, None]
    s = torch.gather(s, 1, order[..., None].expand(B, keep, 3))
    s = torch.where(valid[..., None], s, torch.full_like(s, -4.0 * D))
    return s, pix[order]


def project_convected(V: torch.Tensor, flow: torch.Tensor | None, rotations: torch.Tensor,
                      grid_r: torch.Tensor, grid_pix: torch.Tensor, support: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_z V(s − u(s)) with s = Rᵀ r + D//2 over the points r of :func:`projection_points`.

    V (D, D, D), flow (B, 3, D, D, D) voxels or None, rotations (B, 3, 3); returns (B, D, D)
    images [y, x]. ``support`` (D, D, D) bool: only points whose un-deformed position s falls in
    it are sampled (per particle), which at D = 64 skips most of the cube; exact when V is zero
    outside it by one voxel (:func:`cull_mask`) and the flow is zero there. Two trilinear samples
    per point (flow, then map), differentiable in all inputs.
    """
    D = V.shape[-1]
    B = rotations.shape[0]
    s = torch.einsum("pj,bij->bpi", grid_r, rotations.to(V.dtype).transpose(1, 2)) + D // 2  # (B, M, 3) Rᵀ r
    pix = grid_pix.expand(B, -1)
    if support is not None:
        s, pix = _cull(s, grid_pix, support)
    M = s.shape[1]
    s = s.reshape(B, 1, 1, M, 3)
    if flow is not None:
        u = F.grid_sample(flow, _normalise(s, D), mode="bilinear", padding_mode="zeros", align_corners=True)
        s = s - u.permute(0, 2, 3, 4, 1)
    # one batch of B·M points: the map's gradient is accumulated in one (D, D, D) buffer, not B
    vals = F.grid_sample(V[None, None], _normalise(s.reshape(1, 1, 1, B * M, 3), D), mode="bilinear",
                         padding_mode="zeros", align_corners=True).reshape(B, M)
    return vals.new_zeros(B, D * D).scatter_add(1, pix, vals).reshape(B, D, D)


def rigidity_penalty(rest, cells, Dm_inv, rweights, disp) -> torch.Tensor:
    """Per-sample rigidity energy (B,): Σ_j w_j Σ_i (σ_i(F_j) − 1)², F_j = Ds_j·Dm_j⁻¹."""
    q = rest[None] + disp  # (B, P, 3)
    Q = q[:, cells]  # (B, C, 4, 3)
    Ds = (Q[:, :, 1:] - Q[:, :, :1]).transpose(2, 3)
    Fm = Ds @ Dm_inv[None]
    sv = torch.linalg.svdvals(Fm)
    return ((sv - 1) ** 2).sum(-1).mul(rweights[None]).sum(-1)


def fourier_loss_mask(D: int, k_max: float) -> torch.Tensor:
    """(D, D) bool mask of 2-D frequencies |k| < k_max (cycles/box)."""
    from cryo_napari.geometry.fourier import radial_frequency_2d

    return radial_frequency_2d(D) < k_max


def nyquist_k(D: int) -> float:
    return D / 2


def latent_prior(z: torch.Tensor, lam: float, power: int = 4) -> torch.Tensor:
    """Latent-centering prior per particle (B,): ``lam · Σ_k |z_k|^power``."""
    return lam * z.abs().pow(power).sum(-1)


def cosine(a: float, b: float, t: float) -> float:
    """Cosine interpolation a → b for t in [0, 1]."""
    t = min(max(t, 0.0), 1.0)
    return b + (a - b) * 0.5 * (1 + math.cos(math.pi * t))
