"""Open a run written by cryoDRGN itself (``train_vae`` / ``train_nn``) without cryoDRGN installed.

A cryoDRGN run directory holds ``config.yaml`` (``dataset_args``, ``lattice_args``,
``model_args``), ``weights[.N].pkl`` (a torch checkpoint with ``model_state_dict``) and, for
heterogeneous runs, ``z[.N].pkl`` (N, zdim). The decoder is rebuilt here in plain torch from the
state dict, reproducing cryoDRGN 4.x's ``eval_volume`` (checked against ``cryodrgn eval_vol``
4.3.1 in ``tests/test_analysis_cryodrgn.py``):

* the lattice is cryoDRGN's odd ``(D+1)``-point grid of frequencies in ``[-extent, extent]``
  (``extent`` = 0.5 cycles/px);
* coordinates are expanded by cryoDRGN's positional encoding (``gaussian``: sin/cos of the dot
  product with ``rand_freqs · D2``; ``linear_lowf`` / ``geom_*``: per-axis frequencies);
  the latent is appended;
* the ``ResidLinearMLP`` (``ResidLinear`` layers add their input when in = out) gives the Hartley
  value directly (``domain: hartley``, ``PositionalDecoder``) or (re, im) pairs combined as
  ``re - im`` with the conjugate symmetry ``F(-k) = F(k)*`` (``domain: fourier``,
  ``FTPositionalDecoder``: only ``kz ≤ 0`` is evaluated, the central slice is symmetrised, and
  frequencies outside the sphere of radius ``extent`` are zero);
* values are de-normalised (``· norm[1] + norm[0]``), the last +k plane of each axis is dropped,
  and cryoDRGN's centred inverse Hartley transform gives the (D, D, D) real-space map, indexed
  [z, y, x] as cryoDRGN writes it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryo_napari.errors import InputError

log = logging.getLogger("cryo_napari")

CRYODRGN_KEYS = ("dataset_args", "lattice_args", "model_args")


def is_cryodrgn_run(path) -> bool:
    """True when ``path`` is a directory with a cryoDRGN config.yaml and some weights*.pkl."""
    path = Path(path)
    cfg = path / "config.yaml"
    if not (path.is_dir() and cfg.exists() and any(path.glob("weights*.pkl"))):
        return False
    try:
        import yaml

        doc = yaml.safe_load(cfg.read_text())
    except Exception:
        return False
    return isinstance(doc, dict) and all(k in doc for k in ("lattice_args", "model_args"))


class CryoDRGNDecoder:
    """cryoDRGN's positional decoder as plain torch tensors (evaluation only).

    Parameters
    ----------
    state : the decoder's state dict (keys ``main.<i>.weight`` / ``main.<i>.linear.weight``,
        optionally ``rand_freqs`` (3·enc_dim, 3)).
    D_lattice : odd lattice size (training box + 1).
    zdim : latent size; ``domain`` 'hartley' or 'fourier'; ``enc_type`` cryoDRGN's ``pe_type``;
    ``enc_dim`` its ``pe_dim`` (None: D//2); ``activation`` 'relu' or 'leaky_relu'.
    """

    def __init__(self, state: dict, D_lattice: int, zdim: int, domain: str, enc_type: str,
                 enc_dim: int | None, activation: str = "relu"):
        import torch

        self.D = int(D_lattice)
        self.D2 = self.D // 2
        self.DD = 2 * (self.D // 2)
        self.zdim = int(zdim)
        self.domain = domain
        self.enc_type = enc_type
        self.enc_dim = self.D2 if enc_dim is None else int(enc_dim)
        self.activation = activation
        mp = "decoder.main." if any(k.startswith("decoder.main.") for k in state) else "main."
        idx = sorted({int(m.group(1)) for k in state for m in [re.match(re.escape(mp) + r"(\d+)\.", k)] if m})
        self.layers = []  # (weight (out, in), bias (out,), residual)
        for i in idx:
            if f"{mp}{i}.linear.weight" in state:
                self.layers.append((state[f"{mp}{i}.linear.weight"].float(), state[f"{mp}{i}.linear.bias"].float(), True))
            else:
                self.layers.append((state[f"{mp}{i}.weight"].float(), state[f"{mp}{i}.bias"].float(), False))
        if not self.layers:
            raise ValueError("no decoder layers (main.<i>.weight) in the state dict")
        self.rand_freqs = state.get("rand_freqs")
        self.out_dim = self.layers[-1][0].shape[0]
        want = 1 if domain == "hartley" else 2
        if self.out_dim != want:
            raise ValueError(f"decoder gives {self.out_dim} values per point; domain {domain!r} needs {want}")
        in_dim = self.layers[0][0].shape[1]
        if enc_type == "none":
            expect = 3 + self.zdim
        else:
            expect = 3 * self.enc_dim * 2 + self.zdim
        if in_dim != expect:
            raise ValueError(f"first layer takes {in_dim} inputs, the config implies {expect}")
        if enc_type == "gaussian" and self.rand_freqs is None:
            raise ValueError("gaussian positional encoding but no rand_freqs in the weights")
        self._torch = torch

    # -- network ---------------------------------------------------------------------------
    def mlp(self, x):
        """ResidLinearMLP: (..., in_dim) → (..., out_dim)."""
        F = self._torch.nn.functional
        n = len(self.layers)
        for i, (w, b, resid) in enumerate(self.layers):
            y = F.linear(x, w, b)
            x = y + x if resid else y
            if i < n - 1:
                x = F.relu(x) if self.activation == "relu" else F.leaky_relu(x)
        return x

    def encode(self, coords):
        """cryoDRGN's ``positional_encoding_geom``: (..., 3 + zdim) → (..., in_dim)."""
        torch = self._torch
        if self.enc_type == "none":
            return coords
        if self.enc_type == "gaussian":
            freqs = self.rand_freqs.float().view(*[1] * (coords.ndim - 1), -1, 3) * self.D2
            k = (coords[..., None, 0:3] * freqs).sum(-1)
            x = torch.cat([torch.sin(k), torch.cos(k)], -1)
        else:
            if self.enc_type == "linear_lowf":
                freqs = torch.arange(1, self.D2 + 1, dtype=torch.float)
            else:
                f = torch.arange(self.enc_dim, dtype=torch.float)
                e = f / (self.enc_dim - 1)
                if self.enc_type == "geom_ft":
                    freqs = self.DD * np.pi * (2.0 / self.DD) ** e
                elif self.enc_type == "geom_full":
                    freqs = self.DD * np.pi * (1.0 / self.DD / np.pi) ** e
                elif self.enc_type == "geom_lowf":
                    freqs = self.D2 * (1.0 / self.D2) ** e
                elif self.enc_type == "geom_nohighf":
                    freqs = self.D2 * (2.0 * np.pi / self.D2) ** e
                else:
                    raise ValueError(f"positional encoding {self.enc_type!r} not supported")
            k = coords[..., 0:3, None] * freqs.view(*[1] * coords.ndim, -1)  # (..., 3, F)
            x = torch.cat([torch.sin(k), torch.cos(k)], -1).reshape(*coords.shape[:-1], -1)
        if self.zdim > 0:
            x = torch.cat([x, coords[..., 3:]], -1)
        return x

    def _decode_ft(self, lattice):
        """FTPositionalDecoder.decode: evaluate at kz ≤ 0, conjugate back; → (..., 2)."""
        w = lattice[..., 2] > 0.0
        lat = lattice.clone()
        lat[..., 0:3][w] *= -1
        out = self.mlp(self.encode(lat))
        out[..., 1][w] *= -1
        return out

    def _forward_ft_slice(self, lattice):
        """FTPositionalDecoder.forward on the central slice (conjugate symmetric); → (P,)."""
        torch = self._torch
        c = lattice.shape[-2] // 2
        cc = c + 1 if lattice.shape[-2] % 2 == 1 else c
        image = torch.empty(lattice.shape[:-1])
        top = self._decode_ft(lattice[..., 0:cc, :])
        image[..., 0:cc] = top[..., 0] - top[..., 1]
        image[..., cc:] = (top[..., 0] + top[..., 1])[..., np.arange(c - 1, -1, -1)]
        return image

    # -- volumes ---------------------------------------------------------------------------
    def eval_volume(self, z, D_out: int | None = None, norm=(0.0, 1.0), extent0: float = 0.5):
        """Real-space map (D_out, D_out, D_out) float32 (torch) at latent ``z`` (zdim,).

        ``D_out`` (even, ≤ D_lattice - 1) below the training box evaluates the central
        ``D_out + 1`` lattice points, as ``cryodrgn eval_vol --downsample``.
        """
        torch = self._torch
        Dtr = self.D - 1
        d = Dtr if D_out is None else int(D_out)
        n = d + 1
        extent = extent0 * (d / Dtr)
        lin = np.linspace(-extent, extent, n, endpoint=True)
        x0, x1 = np.meshgrid(lin, lin)
        coords = torch.tensor(np.stack([x0.ravel(), x1.ravel(), np.zeros(n * n)], 1).astype(np.float32))
        zt = torch.as_tensor(np.asarray(z, dtype=np.float32)).reshape(-1)
        vol_f = torch.zeros((n, n, n), dtype=torch.float32)
        with torch.no_grad():
            for i, dz in enumerate(np.linspace(-extent, extent, n, endpoint=True, dtype=np.float32)):
                x = coords + torch.tensor([0, 0, dz])
                if self.domain == "hartley":
                    if self.zdim:
                        x = torch.cat((x, zt.expand(x.shape[0], self.zdim)), -1)
                    vol_f[i] = self.mlp(self.encode(x)).view(n, n)
                    continue
                keep = x.pow(2).sum(dim=1) <= extent ** 2
                x = x[keep]
                if self.zdim:
                    x = torch.cat((x, zt.expand(x.shape[0], self.zdim)), -1)
                if dz == 0.0:
                    y = self._forward_ft_slice(x)
                else:
                    y = self._decode_ft(x)
                    y = y[..., 0] - y[..., 1]
                sl = torch.zeros(n * n)
                sl[keep] = y
                vol_f[i] = sl.view(n, n)
        vol_f = vol_f * float(norm[1]) + float(norm[0])
        return inverse_hartley_centered(vol_f[:-1, :-1, :-1])


def inverse_hartley_centered(ht):
    """cryoDRGN's ``ihtn_center``: centred inverse Hartley transform of a (D, D, D) tensor."""
    import torch

    f = torch.fft.fftshift(torch.fft.fftn(torch.fft.fftshift(ht)))
    f = f / float(np.prod(ht.shape))
    return f.real - f.imag


@dataclass
class CryoDRGNRun:
    """A cryoDRGN run at one epoch (same attributes as our VAE runs).

    Attributes
    ----------
    path : run directory; ``epoch`` the epoch number of the files loaded (None: the final
    ``weights.pkl``); ``z`` (N, zdim) float32 latents (empty (0, zdim) when no z file);
    ``zdim``; ``D`` training box (px, even); ``apix`` pixel size (Å; cryoDRGN does not record it:
    1.0 unless given); ``config`` the config.yaml; ``particles`` / ``ind`` from dataset_args;
    ``latents`` "encoder" (its z.N.pkl) or "refined" (``z.N.refined.npy`` from ``cryo-napari refine-z``).
    """

    path: Path
    epoch: int | None
    z: np.ndarray
    zdim: int
    D: int
    apix: float
    config: dict
    particles: str | None
    ind: str | None
    decoder: CryoDRGNDecoder = field(repr=False)
    norm: tuple = (0.0, 1.0)
    kind: str = "cryodrgn"
    latents: str = "encoder"

    def generate_volumes(self, z, D: int | None = None, flip: bool = False) -> np.ndarray:
        """Maps (M, D, D, D) float32 at latents ``z`` (M, zdim) or (zdim,); ``D`` (even, ≤ the
        training box) gives previews at pixel size ``apix · D_train / D``; ``flip`` mirrors z
        about voxel D//2 (cryo_napari's handedness flip)."""
        from cryo_napari.geometry.rotations import flip_map_handedness

        D = int(D or self.D)
        if D % 2 or D > self.D or D < 4:
            raise InputError(self.path, f"volume box {D} must be even and between 4 and the training box {self.D}")
        z = np.atleast_2d(np.asarray(z, dtype=np.float32)) if self.zdim else np.zeros((1, 0), np.float32)
        if z.shape[1] != self.zdim:
            raise InputError(self.path, f"latent points have {z.shape[1]} values, the model has zdim {self.zdim}")
        out = np.empty((len(z), D, D, D), dtype=np.float32)
        for i, zi in enumerate(z):
            vol = self.decoder.eval_volume(zi, D, self.norm, float(self.config["lattice_args"].get("extent", 0.5))).numpy()
            out[i] = flip_map_handedness(vol) if flip else vol
        return out

    def apix_at(self, D: int | None = None) -> float:
        """Pixel size (Å) of maps generated at box ``D``."""
        return float(self.apix * self.D / (D or self.D))


def _epoch_files(path: Path, epoch):
    """(weights file, z file or None, epoch number or None)."""
    numbered = {int(m.group(1)): p for p in path.glob("weights.*.pkl") if (m := re.fullmatch(r"weights\.(\d+)\.pkl", p.name))}
    if epoch is None or epoch == -1:
        if (path / "weights.pkl").exists():
            zf = path / "z.pkl"
            return path / "weights.pkl", (zf if zf.exists() else None), None
        if not numbered:
            raise InputError(path, "no weights.pkl or weights.N.pkl")
        epoch = max(e for e in numbered if (path / f"z.{e}.pkl").exists()) if any(
            (path / f"z.{e}.pkl").exists() for e in numbered) else max(numbered)
    epoch = int(epoch)
    if epoch not in numbered:
        have = ", ".join(map(str, sorted(numbered))) or "none"
        raise InputError(path, f"no weights.{epoch}.pkl (numbered epochs present: {have})")
    zf = path / f"z.{epoch}.pkl"
    return numbered[epoch], (zf if zf.exists() else None), epoch


def load_cryodrgn_run(path, epoch: int | None = None, apix: float | None = None) -> CryoDRGNRun:
    """Load a cryoDRGN run directory at ``epoch`` (default: the final ``weights.pkl``/``z.pkl``,
    else the latest numbered epoch)."""
    import torch
    import yaml

    from cryo_napari.io.cryodrgn import read_z_pkl

    path = Path(path)
    cfg_path = path / "config.yaml"
    if not cfg_path.exists():
        raise InputError(path, "not a cryoDRGN run (no config.yaml)")
    try:
        cfg = yaml.safe_load(cfg_path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(cfg_path, f"unreadable YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(cfg, dict) or "lattice_args" not in cfg or "model_args" not in cfg:
        raise InputError(cfg_path, "not a cryoDRGN config (needs lattice_args and model_args)")
    if "data_norm_mean" in cfg:
        raise InputError(cfg_path, "cryoDRGN ab-initio (drgnai) runs are not supported yet")
    wfile, zfile, ep = _epoch_files(path, epoch)
    try:
        ck = torch.load(wfile, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise InputError(wfile, f"not a readable torch checkpoint ({exc})") from None
    sd = ck.get("model_state_dict") if isinstance(ck, dict) else None
    if not isinstance(sd, dict):
        raise InputError(wfile, "no model_state_dict in the checkpoint")
    # HetOnlyVAE: encoder.* and decoder.*; train_nn saves the decoder itself
    het = any(k.startswith(("encoder.", "decoder.decoder.")) or k == "decoder.rand_freqs" for k in sd)
    state = {k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")} if het else dict(sd)
    ma, la, da = cfg["model_args"], cfg["lattice_args"], cfg.get("dataset_args") or {}
    zdim = int(ma.get("zdim", 0) or 0)
    norm = da.get("norm", cfg.get("norm"))
    if norm is None or len(norm) != 2:
        raise InputError(cfg_path, "no dataset_args.norm (mean, std) in the config")
    try:
        dec = CryoDRGNDecoder(state, int(la["D"]), zdim, ma.get("domain", "fourier"), ma.get("pe_type", "geom_lowf"),
                              ma.get("pe_dim"), ma.get("activation", "relu"))
    except (ValueError, KeyError) as exc:
        raise InputError(wfile, f"cannot rebuild the cryoDRGN decoder: {exc}") from None
    if zfile is not None:
        z = read_z_pkl(zfile)
        if z.shape[1] != zdim:
            raise InputError(zfile, f"latents have {z.shape[1]} dimensions, the model has zdim {zdim}")
    else:
        z = np.zeros((0, zdim), np.float32)
    if apix is None:
        apix = float(cfg.get("Apix", da.get("Apix", 1.0)) or 1.0)
    return CryoDRGNRun(path, ep, z, zdim, int(la["D"]) - 1, float(apix), cfg, da.get("particles"), da.get("ind"),
                       dec, (float(norm[0]), float(norm[1])))
