"""Flex training with the latents fixed at the truth: how far the generator turns the domain when
latent inference is perfect.

Splits the generator's under-turning (``domain_rotation_amplitude`` of ``flex_hinge.py``) into what
the latent's scatter costs (``latent_dilution``) and what the model itself loses. Takes an OUT of
``flex_hinge.py`` (its simulation, prep and mesh; same map arguments), trains ``flex train``'s job
in auto-decode mode with every particle's latent fixed at ``scale · (angle − angle[f0]) / half
range`` (f0: the middle frame, so the zero latent is the middle state, as the centring prior makes
it in a normal run), and optionally with the canonical map frozen at the true map of frame f0
(``--true-map``). The job's model builder is wrapped for this; nothing else differs from
``flex train``. Example (docs/flex.md, "How far the generator turns the domain")::

    OMP_NUM_THREADS=1 python benchmarks/flex_oracle_latents.py /tmp/f4e43_30c20 -o /tmp/oracle_run \\
        -D 64 --apix 2 --map ../shared/fixtures/models/4E43.pdb --domain-chain B --angle 30 [--true-map]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", help="an OUT directory of flex_hinge.py (sim/, prep/, mesh.pkl)")
    ap.add_argument("-o", "--out", required=True, help="run directory to write")
    ap.add_argument("-D", type=int, default=64)
    ap.add_argument("--apix", type=float, default=2.0)
    ap.add_argument("--map", required=True)
    ap.add_argument("--domain-chain", default=None)
    ap.add_argument("--angle", type=float, default=30.0)
    ap.add_argument("--domain-radius", type=float, default=0.22)
    ap.add_argument("--scale", type=float, default=0.5, help="latent at the end frames (default ±0.5)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--rigidity", type=float, default=0.1)
    ap.add_argument("--true-map", action="store_true", help="freeze the canonical map at the true frame f0")
    a = ap.parse_args(argv)

    import torch

    import cryo_napari.methods.flex.train as T
    from cryo_napari.jobs.protocol import run_to_end
    from cryo_napari.methods.flex.mesh import TetraMesh
    from cryo_napari.methods.flex.model import unsquash
    from cryo_napari.simulate.heterogeneity import domain_mask_series, domain_motion_series
    from flex_hinge import bench_map, fitted_domain_rotation

    bench = Path(a.bench)
    truth = np.load(bench / "sim" / "ground_truth.npz")
    traj = truth["trajectory_angle_deg"]
    states = truth["states"]
    f0 = len(traj) // 2 - 1
    z = (a.scale * (traj - traj[f0]) / (0.5 * (traj.max() - traj.min()))).astype(np.float32)[:, None]
    build = T.build_model

    def build_with_true_latents(cfg, data, mesh):
        model = build(cfg, data, mesh)
        with torch.no_grad():
            model.latent.weight.copy_(unsquash(torch.as_tensor(z[states])))
            if a.true_map:
                true = torch.as_tensor(truth["maps"][f0], dtype=torch.float32) * model.support
                scale = float((model.V * true).sum() / (true * true).sum())  # the consensus's scale
                model.V.copy_(scale * true)
                model.V.requires_grad_(False)
        model.latent.weight.requires_grad_(False)
        return model

    T.build_model = build_with_true_latents
    t = time.time()
    run_to_end(T.flex_train_job(dict(prep=bench / "prep", mesh=bench / "mesh.pkl", outdir=a.out, K=1,
                                     epochs=a.epochs, rigidity=a.rigidity, latent="autodecode", refine_z=False)))
    train_s = time.time() - t
    T.build_model = build

    vol, domain = bench_map(a.map, a.D, a.apix, a.domain_chain)
    maps, angles, _ = domain_motion_series(vol, len(traj), a.angle, a.domain_radius, domain)
    moved = domain_mask_series(vol, angles, a.domain_radius, domain)
    model, cfg, ep = T.load_trained(a.out)
    mesh = TetraMesh.from_pickle(cfg["mesh"])
    ok = np.ones(len(traj), bool)
    rot = fitted_domain_rotation(model, mesh, z, ok, angles, moved, vol, a.domain_radius, domain)
    rep = {"args": vars(a), "train_s": train_s, "epoch": ep, "frame_of_zero_latent": f0,
           "domain_rotation_amplitude": rot["amplitude"], "domain_rotation_per_frame": rot["frames"],
           "metrics_last": json.loads((Path(a.out) / "metrics.jsonl").read_text().splitlines()[-1])}
    (Path(a.out) / "oracle_report.json").write_text(json.dumps(rep, indent=1))
    print(json.dumps({k: rep[k] for k in ("domain_rotation_amplitude", "train_s", "epoch")}))


if __name__ == "__main__":
    main()
