"""Run directories: one directory per job, what every method writes and the GUI opens.

Layout::

    RUN/config.yaml          all parameters, input paths, versions (written once, atomically)
    RUN/metrics.jsonl        one JSON object per line (epoch/iteration metrics)
    RUN/<name>.<step>.<ext>  per-step outputs (weights.3.pt, z.3.npy, iter_003/ …)
    RUN/<name>.<step>.<ext>.ok   completeness marker: JSON with size and sha256 of the file
    RUN/final -> last complete step (a small JSON file ``final.json``; symlinks are not portable)

Writers use :mod:`cryo_napari.jobs.atomic`; a checkpoint counts only when its ``.ok`` marker
exists and matches, so a kill between the file and its marker never leaves a "complete" step
that is not.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import time
from pathlib import Path

import yaml

from cryo_napari import __version__
from cryo_napari.errors import InputError
from cryo_napari.jobs.atomic import append_jsonl, write_text_atomic

CONFIG_VERSION = 1


def sha256_of(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


class RunDir:
    """A job's output directory (created if needed)."""

    def __init__(self, path):
        self.path = Path(path)

    def create(self) -> "RunDir":
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    # -- config -------------------------------------------------------------------------------
    def write_config(self, config: dict, kind: str) -> Path:
        """Write ``config.yaml`` with the job kind, our version and the machine."""
        doc = {"kind": kind, "config_version": CONFIG_VERSION, "cryo_napari_version": __version__,
               "created": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node(), **config}
        return write_text_atomic(self.path / "config.yaml", yaml.safe_dump(_plain(doc), sort_keys=False))

    def read_config(self) -> dict:
        p = self.path / "config.yaml"
        if not p.exists():
            raise InputError(self.path, "not a run directory (no config.yaml)")
        try:
            cfg = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise InputError(p, f"unreadable YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(cfg, dict):
            raise InputError(p, "config is not a mapping")
        if int(cfg.get("config_version", 1)) > CONFIG_VERSION:
            raise InputError(p, f"written by a newer cryo_napari (config version {cfg['config_version']} > {CONFIG_VERSION}); upgrade")
        return cfg

    # -- metrics ------------------------------------------------------------------------------
    def append_metrics(self, record: dict) -> None:
        append_jsonl(self.path / "metrics.jsonl", _plain(record))

    def read_metrics(self) -> list[dict]:
        p = self.path / "metrics.jsonl"
        if not p.exists():
            return []
        out = []
        for line in p.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a torn last line after a kill
                break
        return out

    # -- completeness markers -----------------------------------------------------------------
    def mark_complete(self, path, step: int | None = None) -> None:
        """Write ``<path>.ok`` with size and checksum (after the file itself is in place)."""
        path = Path(path)
        info = {"size": path.stat().st_size, "sha256": sha256_of(path), "step": step}
        write_text_atomic(path.with_name(path.name + ".ok"), json.dumps(info))

    def is_complete(self, path) -> bool:
        path = Path(path)
        ok = path.with_name(path.name + ".ok")
        if not (path.exists() and ok.exists()):
            return False
        try:
            info = json.loads(ok.read_text())
        except json.JSONDecodeError:
            return False
        return info.get("size") == path.stat().st_size and info.get("sha256") == sha256_of(path)

    def refined_latents_path(self, step: int | None) -> Path:
        """``z.<step>.refined.npy`` (``z.final.refined.npy`` for an unnumbered final step): the latents
        ``cryo-napari refine-z`` writes beside a run's ``z.<step>`` (a suffix the step pattern of
        :meth:`complete_steps` does not match)."""
        return self.path / f"z.{step if step is not None else 'final'}.refined.npy"

    def complete_steps(self, prefix: str, ext: str) -> list[int]:
        """Steps ``N`` with a complete ``<prefix>.N.<ext>``, ascending."""
        pat = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.{re.escape(ext)}$")
        steps = []
        for p in self.path.glob(f"{prefix}.*.{ext}"):
            m = pat.match(p.name)
            if m and self.is_complete(p):
                steps.append(int(m.group(1)))
        return sorted(steps)

    def latest_step(self, prefix: str, ext: str) -> int | None:
        steps = self.complete_steps(prefix, ext)
        return steps[-1] if steps else None

    def write_final(self, step: int, **info) -> None:
        write_text_atomic(self.path / "final.json", json.dumps(_plain({"step": step, **info})))


def _plain(obj):
    """Make numpy scalars/arrays and Paths YAML/JSON-friendly."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj
