"""The VAE's encoder applied to particle images: one batch, or every particle of a dataset."""

from __future__ import annotations

import numpy as np
import torch

from cryo_napari.methods.vae.data import VAEData, encoder_input, encoder_points
from cryo_napari.methods.vae.model import VAE


def encode_images(model: VAE, y: torch.Tensor, ctf: torch.Tensor | None, repr: str):
    """(mu, logvar), each (B, zdim), of images ``y`` (B, M, 2) with ``ctf`` (B, M) or None: the encoder
    reads the leading lattice points its input width was built for (``--enc-radius``)."""
    me = encoder_points(model.arch["enc_in"], repr)
    return model.encode(encoder_input(y[:, :me], None if ctf is None else ctf[:, :me], repr))


def encode_all(model: VAE, data: VAEData, ind: np.ndarray, repr: str, device, autocast,
               batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Latent means (len(ind), zdim) float32 of particles ``ind`` from the current encoder, in eval
    mode without sampling (cryoDRGN's end-of-epoch ``eval_z``); returns (z, ind in batch order)."""
    was_training = model.training
    model.eval()
    zs, order = [], []
    with torch.no_grad():
        for batch in data.iter_batches(np.asarray(ind), batch_size):
            b = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
            with autocast:
                mu, _ = encode_images(model, b["y"], b["ctf"], repr)
            zs.append(mu.float().cpu().numpy())
            order.append(np.asarray(batch["ind"]))
    model.train(was_training)
    return np.concatenate(zs).astype(np.float32), np.concatenate(order)
