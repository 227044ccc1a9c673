"""A short, seeded run of the reader fuzzer (the long run is benchmarks/fuzz_readers.py)."""

import random
import shutil
import warnings
from pathlib import Path

import pytest

from cryo_napari.errors import InputError
from cryo_napari.io.particles import load_particles

pytestmark = pytest.mark.reliability
SEEDS = Path(__file__).resolve().parents[1] / "sample_data"


def test_mutated_files_give_only_clear_errors(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("fuzz", Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz_readers.py")
    fuzz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz)
    rng = random.Random(1234)
    outcomes = {"ok": 0, "error": 0}
    for i in range(150):
        case = tmp_path / f"c{i}"
        shutil.copytree(SEEDS, case)
        name, text = rng.choice([("particles.star", True), ("particles.cs", False), ("particles.mrcs", False)])
        p = case / name
        p.write_bytes(fuzz.mutate(p.read_bytes(), rng, text))
        meta = case / ("particles.cs" if name == "particles.cs" else "particles.star")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                d = load_particles(meta)
                d.read_images([0, len(d) - 1])
            outcomes["ok"] += 1
        except InputError as err:
            assert "\n" not in str(err)
            outcomes["error"] += 1
        shutil.rmtree(case)
    assert outcomes["error"] > 50 and outcomes["ok"] > 5
