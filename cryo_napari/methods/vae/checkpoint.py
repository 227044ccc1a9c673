"""VAE run checkpoints: write one atomically, pick the one ``--load`` means, and clean what a killed
run leaves behind (``.tmp-*`` files, a torn last ``metrics.jsonl`` line)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cryo_napari.errors import InputError
from cryo_napari.jobs.atomic import atomic_path
from cryo_napari.jobs.rundir import RunDir


def save_checkpoint(path: Path, model, opt, epoch: int, np_rng: np.random.Generator, extra: dict) -> None:
    """Write weights, optimizer, epoch and RNG states (torch, numpy, CUDA) atomically to ``path``."""
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "arch": model.arch,
             "torch_rng": torch.get_rng_state(), "numpy_rng": np_rng.bit_generator.state, **extra}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def checkpoint_to_load(rd: RunDir, load) -> Path | None:
    if not load:
        return None
    if str(load) == "latest":
        # an epoch counts once all of its outputs are complete (a kill can fall between them)
        done = set(rd.complete_steps("z", "npy")) & {m.get("epoch") for m in rd.read_metrics()}
        steps = [s for s in rd.complete_steps("weights", "pt") if s in done]
        return rd.path / f"weights.{steps[-1]}.pt" if steps else None
    p = Path(load)
    if not p.exists():
        raise InputError(p, "checkpoint not found")
    return p


def clean_after_kill(rd: RunDir) -> int:
    """Remove what a killed run can leave: ``.tmp-*`` files and a torn last ``metrics.jsonl`` line.

    Returns how many leftovers were removed. Complete outputs are never touched.
    """
    import json

    from cryo_napari.jobs.atomic import write_text_atomic

    n = 0
    for p in rd.path.glob(".tmp-*"):
        if p.is_file():  # temporary files are never under a final name
            p.unlink(missing_ok=True)
            n += 1
    mpath = rd.path / "metrics.jsonl"
    if mpath.exists():
        text = mpath.read_text(errors="replace")
        good = []
        for line in text.splitlines(keepends=True):
            try:
                json.loads(line)
            except json.JSONDecodeError:
                continue
            if line.endswith("\n"):
                good.append(line)
        if "".join(good) != text:
            write_text_atomic(mpath, "".join(good))
            n += 1
    return n
