"""Make the cryoDRGN reference volumes that tests/test_analysis_cryodrgn.py compares against.

Runs cryoDRGN's own ``cryodrgn eval_vol`` on the fixture run ``../shared/fixtures/cryodrgn-run``
(weights.pkl, config.yaml) at three latent points taken from its z.pkl (rows 0, 1000, 3000) and
stores the results in ``tests/data/cryodrgn_eval_vol_ref.npz``:

* ``rows`` (3,): the z.pkl rows (the latents themselves are not stored: they are fixture data,
  and the test reads them from the fixture's z.pkl);
* ``vol16`` (3, 16, 16, 16): ``eval_vol --downsample 16``;
* ``vol32`` (1, 32, 32, 32): ``eval_vol --downsample 32`` at the first point.

It also checks the ``domain: fourier`` decoder (``FTPositionalDecoder``, conjugate symmetry),
which the fixture (``domain: hartley``) does not use: cryoDRGN itself builds a small HetOnlyVAE
(zdim 4, 2 layers of 16, ``pe_type geom_lowf``, D 17, seeded random weights) in the cryoDRGN venv;
its weights (the whole small model, as eval_vol loads it) and config go to ``tests/data/cryodrgn_ft_run/`` (a few KB) and ``eval_vol``
outputs at two latent points to ``tests/data/cryodrgn_ft_run/ref.npz``.

With ``--full FILE`` it also writes the full-size (64³) volumes to FILE (.npz, ~3 MB; not kept in
the repository) and prints how our decoder compares at full size.

How the reference in the repository was made (cryoDRGN is not a dependency of cryo_napari)::

    python3 -m venv /tmp/cdrgn
    /tmp/cdrgn/bin/pip install torch==2.13.0
    /tmp/cdrgn/bin/pip install cryodrgn==4.3.1
    OMP_NUM_THREADS=1 python benchmarks/make_cryodrgn_reference.py --cryodrgn /tmp/cdrgn/bin/cryodrgn \
        --full /tmp/cdrgn_full.npz

Checked again on 2026-11-30 without a full install (cryoDRGN 4.3.1 wheel unpacked on PYTHONPATH
next to this project's torch, its unused ``igraph`` import stubbed, ``eval_vol`` driven through
``cryodrgn.commands.eval_vol.main``): fresh ``eval_vol`` maps equal the stored ``vol16`` and the
Fourier-domain ``ref.npz`` exactly, and ``load_cryodrgn_run(...).generate_volumes`` equals
``eval_vol`` at full size (64³) exactly (max abs error 0.0).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT.parent / "shared" / "fixtures" / "cryodrgn-run"
OUT = ROOT / "tests" / "data" / "cryodrgn_eval_vol_ref.npz"
ROWS = [0, 1000, 3000]


def eval_vol(cryodrgn: str, zfile: Path, outdir: Path, downsample: int | None) -> np.ndarray:
    """Run ``cryodrgn eval_vol`` for every row of ``zfile``; → (M, D, D, D) float32."""
    import mrcfile

    cmd = [cryodrgn, "eval_vol", str(RUN / "weights.pkl"), "-c", str(RUN / "config.yaml"),
           "--zfile", str(zfile), "-o", str(outdir)]
    if downsample:
        cmd += ["--downsample", str(downsample)]
    subprocess.run(cmd, check=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    files = sorted(outdir.glob("vol_*.mrc"))
    return np.stack([mrcfile.read(f).astype(np.float32) for f in files])


FT_CONFIG = {
    "dataset_args": {"ctf": None, "datadir": None, "ind": None, "invert_data": True, "keepreal": False,
                     "norm": [0.1, 3.0], "particles": "none.mrcs", "window": True, "window_r": 0.85},
    "lattice_args": {"D": 17, "extent": 0.5, "ignore_DC": True},
    "model_args": {"activation": "relu", "domain": "fourier", "enc_mask": -1, "encode_mode": "resid",
                   "feat_sigma": 0.5, "pdim": 16, "pe_dim": None, "pe_type": "geom_lowf", "players": 2,
                   "qdim": 16, "qlayers": 1, "zdim": 4},
    "seed": 1,
}

BUILD_FT = """
import sys, pickle, torch, yaml
torch.manual_seed(1)
from cryodrgn.models import HetOnlyVAE
out = sys.argv[1]
cfg = yaml.safe_load(open(out + "/config.yaml"))
model, lat = HetOnlyVAE.load(cfg)
for p in model.decoder.parameters():  # larger weights than the default init: a non-trivial map
    if p.requires_grad:
        p.data.normal_(0, 0.4)
sd = model.state_dict()
torch.save({"epoch": 0, "model_state_dict": sd}, out + "/weights.pkl")
"""


def make_ft_reference(cryodrgn: str, td: Path) -> None:
    """Fourier-domain decoder reference: tests/data/cryodrgn_ft_run/{config.yaml,weights.pkl,ref.npz}."""
    import yaml

    out = ROOT / "tests" / "data" / "cryodrgn_ft_run"
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(FT_CONFIG))
    py = str(Path(cryodrgn).parent / "python")
    subprocess.run([py, "-c", BUILD_FT, str(out)], check=True, env={"OMP_NUM_THREADS": "1"})
    z = np.array([[0.5, -1.0, 0.2, 1.5], [-1.2, 0.3, 0.8, -0.4]], dtype=np.float32)
    np.savetxt(td / "zft.txt", z)
    cmd = [cryodrgn, "eval_vol", str(out / "weights.pkl"), "-c", str(out / "config.yaml"),
           "--zfile", str(td / "zft.txt"), "-o", str(td / "ft")]
    subprocess.run(cmd, check=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    import mrcfile

    vols = np.stack([mrcfile.read(f).astype(np.float32) for f in sorted((td / "ft").glob("vol_*.mrc"))])
    np.savez_compressed(out / "ref.npz", z=z, vol=vols)
    print(f"wrote {out} (fourier-domain reference, maps {vols.shape})")


def corr(a, b) -> float:
    a, b = np.ravel(a) - np.mean(a), np.ravel(b) - np.mean(b)
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cryodrgn", default="/tmp/cdrgn/bin/cryodrgn", help="the cryodrgn executable")
    p.add_argument("--full", help="also write full-size reference volumes to this .npz and compare")
    args = p.parse_args(argv)
    from cryo_napari.io.cryodrgn import read_z_pkl

    z = read_z_pkl(RUN / "z.pkl")[ROWS]
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        zf = td / "z.txt"
        np.savetxt(zf, z)
        v16 = eval_vol(args.cryodrgn, zf, td / "d16", 16)
        np.savetxt(td / "z1.txt", z[:1])
        v32 = eval_vol(args.cryodrgn, td / "z1.txt", td / "d32", 32)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(OUT, rows=np.array(ROWS), vol16=v16, vol32=v32)
        print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
        make_ft_reference(args.cryodrgn, td)
        if args.full:
            full = eval_vol(args.cryodrgn, zf, td / "full", None)
            np.savez_compressed(args.full, rows=np.array(ROWS), vol=full)
            from cryo_napari.analysis.cryodrgn_run import load_cryodrgn_run

            ours = load_cryodrgn_run(RUN).generate_volumes(z)
            for i in range(len(z)):
                err = np.abs(ours[i] - full[i]).max() / np.abs(full[i]).max()
                print(f"z row {ROWS[i]}: full-size correlation {corr(ours[i], full[i]):.7f}, max rel. error {err:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
