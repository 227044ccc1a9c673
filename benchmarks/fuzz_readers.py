"""Fuzz the STAR / .cs / MRC readers: random mutations of valid files must give either a
loaded dataset or our one-line InputError — never another exception.

Run by hand: ``python benchmarks/fuzz_readers.py [--seconds 120]``. Uses the bundled sample data
as seeds (no shared fixtures needed). Prints counts per outcome and any crash with its input
saved under /tmp/cryo_napari_fuzz/.
"""

from __future__ import annotations

import argparse
import random
import shutil
import time
import traceback
import warnings
from pathlib import Path

from cryo_napari.errors import InputError
from cryo_napari.io.particles import load_particles

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "sample_data"
WORK = Path("/tmp/cryo_napari_fuzz")


def mutate(data: bytes, rng: random.Random, text: bool) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.random()
        if not b:
            break
        i = rng.randrange(len(b))
        if op < 0.3:
            b[i] = rng.randrange(256)
        elif op < 0.5:
            del b[i : i + rng.randint(1, 64)]
        elif op < 0.6:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op < 0.75:
            del b[rng.randrange(len(b)) :]  # truncate
        elif text:
            tokens = [b"nan", b"inf", b"-1", b"0", b"1e308", b"@", b"data_", b"loop_", b"_rlnAngleRot", b"\n", b" "]
            b[i:i] = rng.choice(tokens)
        else:
            b[i : i + 4] = rng.randrange(2**32).to_bytes(4, "little")
    return bytes(b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    WORK.mkdir(exist_ok=True)
    counts = {"ok": 0, "InputError": 0, "crash": 0}
    targets = [("particles.star", True), ("particles.cs", False), ("particles.mrcs", False)]
    t_end = time.time() + args.seconds
    n = 0
    while time.time() < t_end:
        n += 1
        case = WORK / f"case_{n % 50}"
        if case.exists():
            shutil.rmtree(case)
        shutil.copytree(SEEDS, case)
        name, text = rng.choice(targets)
        p = case / name
        p.write_bytes(mutate(p.read_bytes(), rng, text))
        meta = case / ("particles.cs" if name == "particles.cs" else "particles.star")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pd_ = load_particles(meta)
                pd_.read_images([0, len(pd_) - 1])
            counts["ok"] += 1
        except InputError:
            counts["InputError"] += 1
        except Exception:
            counts["crash"] += 1
            keep = WORK / f"crash_{counts['crash']}"
            shutil.copytree(case, keep, dirs_exist_ok=True)
            print(f"CRASH ({name}) kept in {keep}:\n{traceback.format_exc(limit=3)}")
    print(f"{n} cases in {args.seconds:.0f} s: {counts}")


if __name__ == "__main__":
    main()
