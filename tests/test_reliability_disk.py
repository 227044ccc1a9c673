"""A full disk (or a file-size limit) during a job: one clear line, non-zero exit, previous
outputs intact, no temporary files left behind."""

import os
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest

from cryo_napari.cli.main import main as cli

pytestmark = pytest.mark.reliability


def _limit_file_size(limit_bytes):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return preexec


@pytest.fixture
def sim(tmp_path):
    out = tmp_path / "sim"
    assert cli(["simulate", "--synthetic", "32", "-n", "200", "-o", str(out)]) == 0
    return out


def _snapshot(d):
    return {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}


def test_file_size_limit_keeps_previous_outputs(tmp_path, sim):
    bp = tmp_path / "bp"
    assert cli(["backproject", str(sim / "particles.star"), "-o", str(bp)]) == 0
    before = _snapshot(bp)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "cryo_napari.cli.main", "backproject", str(sim / "particles.star"),
                          "-o", str(bp), "--first", "100"], capture_output=True, text=True, env=env,
                         preexec_fn=_limit_file_size(50_000))
    assert res.returncode != 0
    err_lines = [ln for ln in res.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(err_lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "map.mrc" in err_lines[0] and "File too large" in err_lines[0]
    after = _snapshot(bp)
    assert after == before  # every previous complete file is untouched
    assert not [p for p in bp.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.skipif(os.geteuid() != 0 or sys.platform != "linux", reason="needs root to mount a tiny tmpfs")
def test_real_enospc_on_a_tiny_tmpfs(tmp_path, sim):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("mount not permitted here")
    try:
        res = subprocess.run([sys.executable, "-m", "cryo_napari.cli.main", "backproject", str(sim / "particles.star"),
                              "-o", str(mnt / "bp")], capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert res.returncode != 0
        assert "No space left" in res.stderr and "Traceback" not in res.stderr, res.stderr
        left = list((mnt / "bp").iterdir()) if (mnt / "bp").exists() else []
        assert not [p for p in left if p.name.startswith(".tmp-")]
        for p in left:  # whatever is there under a final name is complete
            if p.suffix == ".mrc":
                from cryo_napari.io.mrc import read_mrc

                assert read_mrc(p)[0].shape == (32, 32, 32)
    finally:
        subprocess.run(["umount", str(mnt)])
