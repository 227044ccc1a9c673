"""Data-parallel training with torch DDP, launched with ``torchrun``.

``torchrun --nproc-per-node G -m cryo_napari.cli.main train-vae ...`` starts G processes; each
reads the same data, draws the same epoch permutation (same seed) and trains on its shard
(``order[rank::world]``, padded to equal length by repeating the first particles, as
``DistributedSampler`` does), with gradients averaged by DDP. ``-b`` is the per-process batch.
Latent means are summed across ranks at the end of an epoch (duplicates averaged); only rank 0
writes files. Backend: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn


def world_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device_pref: str | None) -> tuple[int, int, torch.device | None, bool]:
    """(rank, world, device or None, initialised_here) from torchrun's environment."""
    world = world_from_env()
    if world <= 1:
        return 0, 1, None, False
    import torch.distributed as dist

    use_cuda = torch.cuda.is_available() and (device_pref is None or str(device_pref).startswith("cuda"))
    here = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
        here = True
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device, here


def shard(order: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This rank's particles of an epoch ``order``, all ranks the same length."""
    if world <= 1:
        return order
    pad = (-len(order)) % world
    full = np.concatenate([order, order[:pad]])
    return full[rank::world]


def all_sum(arr: np.ndarray, device) -> np.ndarray:
    """Element-wise sum of a numpy array over ranks."""
    import torch.distributed as dist

    t = torch.as_tensor(arr, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.cpu().numpy()


def barrier():
    import torch.distributed as dist

    dist.barrier()


def finish(initialised_here: bool):
    if initialised_here:
        import torch.distributed as dist

        dist.destroy_process_group()


class StepModule(nn.Module):
    """Wraps the VAE so one ``forward`` computes a batch's loss terms (what DDP synchronises)."""

    def __init__(self, model, repr: str):
        super().__init__()
        self.model = model
        self.repr = repr

    def forward(self, y, ctf, rot, m: int):
        from cryo_napari.methods.vae.train import step_loss

        return step_loss(self.model, {"y": y, "ctf": ctf, "rot": rot}, m, self.repr)


def wrap(model, repr: str, world: int, device):
    step = StepModule(model, repr)
    if world <= 1:
        return step
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(step, device_ids=[device] if device.type == "cuda" else None)
