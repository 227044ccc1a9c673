"""Job protocol, atomic writes and run directories."""

import json

import numpy as np
import pytest

from cryo_napari.errors import InputError
from cryo_napari.jobs.atomic import atomic_path, save_npy_atomic
from cryo_napari.jobs.protocol import Log, Progress, run_in_terminal, run_to_end
from cryo_napari.jobs.rundir import RunDir


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.npy"
    save_npy_atomic(target, np.arange(3))
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("disk full")
    assert np.load(target).tolist() == [0, 1, 2]  # the previous complete file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["out.npy"]  # no temp file left


def test_markers_and_latest_step(tmp_path):
    run = RunDir(tmp_path).create()
    for step in (1, 2, 3):
        p = save_npy_atomic(tmp_path / f"z.{step}.npy", np.full(4, step))
        if step < 3:
            run.mark_complete(p, step)  # step 3 is written but its marker is missing (killed)
    assert run.latest_step("z", "npy") == 2
    (tmp_path / "z.2.npy").write_bytes(b"corrupted")  # changed after its marker: not complete
    assert run.latest_step("z", "npy") == 1


def test_config_round_trip_and_newer_version_refused(tmp_path):
    run = RunDir(tmp_path).create()
    run.write_config({"zdim": 8, "path": tmp_path, "arr": np.arange(2)}, kind="vae")
    cfg = run.read_config()
    assert cfg["kind"] == "vae" and cfg["zdim"] == 8 and cfg["arr"] == [0, 1]
    (tmp_path / "config.yaml").write_text("kind: vae\nconfig_version: 99\n")
    with pytest.raises(InputError, match="newer"):
        run.read_config()


def test_metrics_survive_a_torn_last_line(tmp_path):
    run = RunDir(tmp_path).create()
    run.append_metrics({"epoch": 1, "loss": np.float32(0.5)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "lo')
    assert run.read_metrics() == [{"epoch": 1, "loss": 0.5}]
    json.dumps(run.read_metrics())


def test_interrupt_closes_the_generator_and_runs_finally():
    state = {"closed": False, "steps": 0}

    def job():
        try:
            for i in range(100):
                state["steps"] = i
                yield Progress(i, 100)
                if i == 3:
                    raise KeyboardInterrupt
        finally:
            state["closed"] = True

    with pytest.raises(KeyboardInterrupt):
        run_in_terminal(job(), quiet=True)
    assert state["closed"] and state["steps"] == 3


def test_run_to_end_returns_value():
    def job():
        yield Log("info", "hi")
        return 42

    assert run_to_end(job()) == 42
