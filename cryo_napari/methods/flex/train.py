"""3DFlex "Training" as a job: ``flex_train_job(config)`` yields Progress/Metric/Artifact/Log events.

Per batch of particles (images Y, poses R, CTF, latents z)::

    loss = mean_i [ Σ_{|k|<k_max} |CTF·FT(I_i) − Ŷ_i|² / (2 D² σ²) + center_lam·Σ_k |z_ik|⁴ ]
           + rigidity · mean_i Σ_j w_j Σ (σ(F_ij) − 1)²

with latent noise ``z + noise·ε`` during training. Latents come from an image encoder
(``latent="encoder"``, the default; Adam, ``lr_enc``) or are auto-decoded (``latent="autodecode"``;
SparseAdam, ``lr_z``). Adam for the generator (``lr``) and for the canonical map (``lr_map`` × std
of the initial map, per step). Defaults (``noise`` 0.05, ``center_lam`` 1, ``rigidity`` 0.1, ``lr`` 5e-3,
encoder) were chosen by measurement on simulated hinges (docs/flex.md); cryoSPARC's 0.15 / 20 / 2
kept the latent from learning the motion there (the rigidity sum grows with the number of
tetrahedra, and our data term is a per-particle Gaussian log-likelihood). Over ``epochs`` the learning rates anneal
(cosine to 10 %) and the loss band ``k_max`` grows linearly from ``k_start`` (0.5) to 0.8 ×
Nyquist of the training box; ``extra_epochs`` continue at the final settings. With many particles
the ramp is capped at ``ramp_visits`` particle visits (30,000 by default; 0 turns the cap off): it
then advances every batch and finishes inside the first few epochs (or the first epoch, for sets
over 30,000), and the rest of ``epochs`` runs at the final settings. A 10-epoch ramp over 10,000
particles (100,000 visits) left the latent without the motion in two seeds, while ramps of
20,000–60,000 visits learned it (docs/flex.md "10,000 particles: the ramp must be short").

Each epoch ``E`` (1-based) writes ``weights.E.pt`` and ``z.E.npy`` (N × K latents in PREP
particle order), each atomically and then marked complete, plus a line of ``metrics.jsonl``.
``load="latest"`` resumes from the latest complete checkpoint.

After the last epoch (``refine_z``, on by default) the latents are refined by the trained model's
own likelihood, as ``cryo-napari refine-z RUN --box refine_box --centres refine_centres`` does:
``z.E.refined.npy``. The encoder's one-pass latent trails the posterior over the trained
generator's maps; on the 4E43 benchmark (docs/flex.md) this took |ρ| from 0.39–0.80 to 0.79–0.82,
in about the time of one training epoch (37 s and 61 s after 10 and 20 epochs of 47 s and 42 s).
If it cannot run (e.g. the latents collapsed to one point) training still succeeds and a warning
says why.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from cryo_napari.errors import InputError
from cryo_napari.geometry.ctf import calculate_ctf_2d
from cryo_napari.geometry.fourier import fft_centered, phase_shift_2d
from cryo_napari.io.mrc import read_mrc
from cryo_napari.io.particles import load_particles
from cryo_napari.jobs.atomic import atomic_path, save_npy_atomic
from cryo_napari.jobs.protocol import Artifact, Job, Log, Metric, Progress
from cryo_napari.jobs.rundir import RunDir
from cryo_napari.methods.flex.mesh import TetraMesh
from cryo_napari.methods.flex.model import FlexModel, cosine, fourier_loss_mask, latent_prior
from cryo_napari.methods.flex.prep import read_prep

KIND = "flex-train"
DEFAULTS = dict(prep=None, mesh=None, outdir=None, K=2, epochs=20, extra_epochs=0, batch_size=32, lr=5e-3,
                lr_map=0.02, lr_z=0.1, hidden=64, layers=6, noise=0.05, center_lam=1.0, rigidity=0.1,
                k_start=0.5, k_final=0.8, ramp_visits=30_000, load=None, seed=0, latent="encoder", lr_enc=3e-3,
                enc_hidden=128, enc_box=0, refine_z=True, refine_box=None, refine_centres=64)
LATENT_MODES = ("encoder", "autodecode")
# particle visits over an uncapped ramp (``ramp_visits=0``) above which `flex train` warns: a 10,000-particle
# benchmark left the latent without the motion at 100,000 (twice) and learned it at 20,000 (10,000 × 2 in a
# 3-epoch ramp) and at 3,000 × 10 and × 20 (docs/flex.md "10,000 particles: the ramp must be short")
RAMP_VISITS_WARN = 60_000


def load_mesh(mesh) -> TetraMesh:
    """A mesh from a pickle path, a cryoSPARC-schema dict or a TetraMesh."""
    if isinstance(mesh, TetraMesh):
        return mesh
    if isinstance(mesh, dict):
        return TetraMesh.from_dict(mesh)
    return TetraMesh.from_pickle(mesh)


def check_mesh_box(mesh: TetraMesh, D: int, apix: float, source="--mesh") -> None:
    """Raise InputError unless the mesh covers the particles' box: ``N·psize_A ≈ D·apix`` (1 %).

    The mesh may be made at another sampling (e.g. the full-box consensus) but must span the same
    physical box in Å, or the deformation would be applied to the wrong place.
    """
    side_mesh, side_data = mesh.N * mesh.psize_A, D * apix
    if abs(side_mesh - side_data) > 0.01 * side_data:
        raise InputError(source, f"mesh box {mesh.N} px × {mesh.psize_A:.3f} Å = {side_mesh:.1f} Å differs from the "
                                 f"particles' box {D} px × {apix:.3f} Å = {side_data:.1f} Å; make the mesh from "
                                 "this dataset's consensus map")


class FlexData:
    """Cropped particles of a PREP directory in memory (float32 images, poses, shifts, CTF)."""

    def __init__(self, prep):
        self.info = read_prep(prep)
        pdata = load_particles(Path(prep) / "particles.star", require_poses=True)
        self.pdata = pdata
        self.images = torch.as_tensor(pdata.read_images())
        self.rot = torch.as_tensor(pdata.rotations, dtype=torch.float32)
        self.shifts = torch.as_tensor(pdata.shifts_px, dtype=torch.float32)
        self.ctf = None if pdata.ctf is None else pdata.ctf.as_tensor()
        self.apix = float(np.median(pdata.apix))
        self.D = pdata.D
        self.half = pdata.half if pdata.half is not None else np.zeros(len(pdata), int)
        self.sigma = float(self.info.get("noise_sigma") or self.images.std())
        self.consensus, _ = read_mrc(Path(prep) / "consensus.mrc")

    def __len__(self):
        return len(self.images)

    def batch(self, ii: torch.Tensor):
        """Centred data transforms (B, D, D), poses (B, 3, 3), CTF (B, D, D)."""
        y = phase_shift_2d(fft_centered(self.images[ii].to(torch.complex64), 2), self.shifts[ii])
        ctf = (calculate_ctf_2d(self.ctf[ii], self.D, self.apix) if self.ctf is not None
               else torch.ones(len(ii), self.D, self.D))
        return y, self.rot[ii], ctf


def image_loss(model: FlexModel, y, R, ctf, disp, sigma: float, kmask) -> torch.Tensor:
    """Per-image data term (B,): Σ_{k in kmask} |CTF·FT(I) − Ŷ|² / (2 D² σ²)."""
    D = model.D
    flow = model.flow_field(disp)
    proj = model.project(flow, R)
    pred = fft_centered(proj.to(torch.complex64), 2) * ctf
    r = (pred - y)[:, kmask]
    return r.abs().square().sum(-1) / (2 * D * D * sigma**2)


def build_model(cfg: dict, data: FlexData, mesh: TetraMesh) -> FlexModel:
    box = int(cfg.get("enc_box") or 0)
    if box and (box % 2 or box > data.D):
        raise InputError("--enc-box", f"must be an even box ≤ the training box {data.D}, got {box}")
    if box and box < data.D:
        from cryo_napari.geometry.fourier import fourier_crop_2d

        scale = float(fourier_crop_2d(data.images[:2000], box).std())
    else:
        scale = float(data.images.std())
    return FlexModel(mesh, data.D, len(data), cfg["K"], cfg["hidden"], cfg["layers"], data.consensus, cfg["seed"],
                     cfg["latent"], cfg["enc_hidden"], scale or 1.0, box or None)


def _z_lr(cfg: dict) -> float:
    return cfg["lr_enc"] if cfg["latent"] == "encoder" else cfg["lr_z"]


def _optimizers(model: FlexModel, cfg: dict, v_scale: float):
    zopt = (torch.optim.Adam(model.encoder.parameters(), lr=cfg["lr_enc"]) if model.encoder is not None
            else torch.optim.SparseAdam(list(model.latent.parameters()), lr=cfg["lr_z"]))
    return {
        "gen": torch.optim.Adam(model.generator.parameters(), lr=cfg["lr"]),
        "map": torch.optim.Adam([model.V], lr=cfg["lr_map"] * v_scale),
        "z": zopt,
    }


def ramp_visits(cfg: dict, n: int) -> int:
    """Particle visits of a capped ramp for ``n`` particles, or 0 when the ramp runs over all ``epochs``.

    The per-epoch ramp reaches its final settings at the start of epoch ``epochs`` (after
    ``(epochs − 1) × n`` visits); the cap applies only when ``cfg["ramp_visits"]`` is shorter.
    """
    cap = int(cfg.get("ramp_visits") or 0)
    return cap if 0 < cap < max(cfg["epochs"] - 1, 1) * n else 0


def schedule(cfg: dict, epoch: int, D: int, visits: int = 0, ramp: int = 0) -> tuple[float, float]:
    """(learning-rate factor, k_max in cycles/box) for 0-based ``epoch``, or with a capped ``ramp``
    (see ``ramp_visits``) after ``visits`` particle visits."""
    if ramp > 0:
        t = min(visits / ramp, 1.0)
    else:
        E = max(cfg["epochs"], 1)
        t = min(epoch / max(E - 1, 1), 1.0)
    k0, k1 = cfg["k_start"] * D / 2, cfg["k_final"] * D / 2
    return cosine(1.0, 0.1, t), k0 + (k1 - k0) * t


def ramp_message(n: int, cfg: dict) -> Log | None:
    """What the schedule does with ``n`` particles: an info line for a capped ramp, a warning for an
    uncapped one longer than ``RAMP_VISITS_WARN``, else None."""
    ramp, E = ramp_visits(cfg, n), cfg["epochs"]
    if ramp:
        rest = E + cfg["extra_epochs"] - ramp / n
        return Log("info", f"learning rates and loss band ramp over the first {ramp:,} particle visits "
                           f"({ramp / n:.2g} epoch{'' if ramp == n else 's'} of {n:,} particles), then {rest:.3g} "
                           f"epochs at the final settings (--ramp-visits)")
    if n * E > RAMP_VISITS_WARN and not cfg.get("ramp_visits"):
        return Log("warning", f"{n:,} particles × {E} ramp epochs = {n * E:,} particle visits while the learning "
                              f"rates and the loss band ramp (--ramp-visits 0); on a 10,000-particle benchmark "
                              f"100,000 left the latent without the motion and 30,000 learned it (docs/flex.md). "
                              f"Consider --ramp-visits {DEFAULTS['ramp_visits']}")
    return None


def flex_train_job(config: dict) -> Job:
    """Train (or resume) a flex model; returns {"epoch", "run", "z"}."""
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if v is not None or k not in DEFAULTS}}
    for k in ("prep", "mesh", "outdir"):
        if cfg.get(k) is None:
            raise InputError(None, f"flex train needs '{k}'")
    torch.manual_seed(cfg["seed"])
    run = RunDir(cfg["outdir"]).create()
    if cfg["load"] and (run.path / "config.yaml").exists():  # resume in the latent mode the run was made with
        saved = run.read_config()
        cfg["latent"] = saved.get("latent", "autodecode")
        cfg["ramp_visits"] = saved.get("ramp_visits", 0)  # runs made before the cap ramped over all epochs
    if cfg["latent"] not in LATENT_MODES:
        raise InputError("--latent", f"must be one of {', '.join(LATENT_MODES)}, got {cfg['latent']!r}")
    data = FlexData(cfg["prep"])
    mesh = load_mesh(cfg["mesh"])
    check_mesh_box(mesh, data.D, data.apix, cfg["mesh"] if isinstance(cfg["mesh"], (str, Path)) else "--mesh")
    mesh_path = run.path / "mesh.pkl"
    model = build_model(cfg, data, mesh)
    v_scale = float(np.std(data.consensus)) or 1.0
    opts = _optimizers(model, cfg, v_scale)
    start = 0
    if cfg["load"]:
        ck = _resolve_load(run, cfg["load"])
        state = torch.load(ck, weights_only=False)
        model.load_state_dict(state["model"])
        for k, o in opts.items():
            o.load_state_dict(state["opt"][k])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["epoch"])
        stale = [p for p in run.path.glob(".tmp-*") if p.is_file()]
        for p in stale:  # temporary files of a killed run (never under a final name)
            p.unlink(missing_ok=True)
        yield Log("info", f"resumed from {ck.name} (epoch {start})"
                          + (f"; removed {len(stale)} temporary file(s) of the interrupted run" if stale else ""))
    else:
        mesh.to_pickle(mesh_path)
        cfg_out = {k: v for k, v in cfg.items() if k != "mesh"}
        cfg_out["mesh"] = str(mesh_path.resolve())
        cfg_out["prep"] = str(Path(cfg["prep"]).resolve())
        run.write_config(cfg_out, KIND)
    total = cfg["epochs"] + cfg["extra_epochs"]
    n, B = len(data), cfg["batch_size"]
    ramp = ramp_visits(cfg, n)
    msg = ramp_message(n, cfg)
    if msg is not None and (start == 0 or msg.level == "info"):
        yield msg
    g = torch.Generator().manual_seed(cfg["seed"] + start)
    yield Progress(start, total, "training")
    for epoch in range(start, total):
        t0 = time.time()
        perm = torch.randperm(n, generator=g)
        sums = np.zeros(4)
        kmax = None
        for b in range(0, n, B):
            if b == 0 or ramp:
                fac, k_new = schedule(cfg, epoch, data.D, epoch * n + b, ramp)
                _set_learning_rates(opts, cfg, v_scale, fac)
                if k_new != kmax:
                    kmax, kmask = k_new, fourier_loss_mask(data.D, k_new)
            ii = perm[b : b + B]
            y, R, ctf = data.batch(ii)
            z = model.z_of(ii, data.images[ii])
            zn = (z + cfg["noise"] * torch.randn(z.shape, generator=g)).clamp(-1.5, 1.5)
            disp = model.displacements(zn)
            ldata = image_loss(model, y, R, ctf, disp, data.sigma, kmask)
            lprior = latent_prior(z, cfg["center_lam"])
            lrig = model.rigidity_penalty(disp)
            loss = (ldata + lprior).mean() + cfg["rigidity"] * lrig.mean()
            for o in opts.values():
                o.zero_grad()
            loss.backward()
            for o in opts.values():
                o.step()
            sums += np.array([ldata.sum().item(), lprior.sum().item(), lrig.sum().item(), len(ii)])
        step = epoch + 1
        zs = model.all_z(data.images)
        zpath = run.path / f"z.{step}.npy"
        save_npy_atomic(zpath, zs.astype(np.float32))
        run.mark_complete(zpath, step)
        wpath = run.path / f"weights.{step}.pt"
        with atomic_path(wpath) as tmp:
            torch.save({"model": model.state_dict(), "opt": {k: o.state_dict() for k, o in opts.items()},
                        "epoch": step, "torch_rng": torch.get_rng_state(), "D": data.D, "n": n, "K": cfg["K"]}, tmp)
        run.mark_complete(wpath, step)
        dt = time.time() - t0
        rec = {"epoch": step, "loss_data": sums[0] / sums[3], "loss_prior": sums[1] / sums[3],
               "rigidity": sums[2] / sums[3], "k_max": kmax, "lr_factor": fac, "z_std": zs.std(0).tolist(),
               "epoch_s": dt}
        run.append_metrics(rec)
        run.write_final(step)
        yield Metric("loss_data", rec["loss_data"], step)
        yield Metric("rigidity", rec["rigidity"], step)
        yield Artifact("checkpoint", wpath)
        yield Artifact("latent", zpath)
        yield Progress(step, total, f"epoch {step}: data {rec['loss_data']:.3f} rig {rec['rigidity']:.3g} ({dt:.1f}s)")
    last = run.latest_step("weights", "pt")
    out = {"epoch": last, "run": run.path, "z": run.path / f"z.{last}.npy" if last else None, "z_refined": None}
    if last and cfg["refine_z"]:
        out["z_refined"] = yield from _refine_final_latents(run.path, last, data.D, cfg)
    return out


def _set_learning_rates(opts: dict, cfg: dict, v_scale: float, fac: float) -> None:
    for k, o in opts.items():
        base = {"gen": cfg["lr"], "map": cfg["lr_map"] * v_scale, "z": _z_lr(cfg)}[k]
        for grp in o.param_groups:
            grp["lr"] = base * fac


def default_refine_box(D: int) -> int:
    """Working box of the final latent refinement: half the training box (even), at least 16 (or D)."""
    return max(2 * (D // 4), min(16, D))


def _refine_final_latents(run_path: Path, step: int, D: int, cfg: dict) -> Job:
    """Job: ``refine-z`` on epoch ``step``; returns the refined latents' path, or None with a
    warning when it cannot run (training's own outputs are complete either way)."""
    from cryo_napari.methods.refine_run import refine_run_latents_job

    box = int(cfg["refine_box"] or default_refine_box(D))
    yield Log("info", f"refining the latents of epoch {step} by the trained model (box {box}, "
                      f"{cfg['refine_centres']} centres; --no-refine-z skips)")
    try:
        res = yield from refine_run_latents_job(run_path, step, "maps", centres=int(cfg["refine_centres"]), box=box,
                                                seed=int(cfg["seed"]))
    except InputError as exc:
        yield Log("warning", f"latent refinement skipped: {exc}")
        return None
    return Path(res["z_path"])


def _resolve_load(run: RunDir, load) -> Path:
    if str(load) == "latest":
        step = run.latest_step("weights", "pt")
        if step is None:
            raise InputError(run.path, "no complete checkpoint to resume from (--load latest)")
        return run.path / f"weights.{step}.pt"
    p = Path(load)
    if not p.exists():
        raise InputError(p, "checkpoint not found")
    return p


def load_trained(run, epoch: int | None = None):
    """(model, config, epoch) from the latest (or given) complete checkpoint of a run directory.

    Works while training still runs: only checkpoints with a valid ``.ok`` marker are used.
    """
    run = RunDir(run)
    cfg = run.read_config()
    step = run.latest_step("weights", "pt") if epoch is None else epoch
    path = run.path / f"weights.{step}.pt"
    if step is None or not run.is_complete(path):
        raise InputError(run.path, "no complete checkpoint (weights.N.pt with its .ok marker)")
    state = torch.load(path, weights_only=False)
    mesh = TetraMesh.from_pickle(cfg["mesh"])
    cons, _ = read_mrc(Path(cfg["prep"]) / "consensus.mrc")
    model = FlexModel(mesh, int(state["D"]), int(state["n"]), int(state["K"]), cfg["hidden"], cfg["layers"], cons,
                      latent=cfg.get("latent", "autodecode"), enc_hidden=cfg.get("enc_hidden", 128),
                      enc_box=cfg.get("enc_box") or None)
    model.load_state_dict(state["model"])
    model.eval()
    return model, cfg, step


def load_latents(run, step: int, refined: bool = False) -> np.ndarray:
    """Latents (N, K) of epoch ``step`` in PREP particle order: the encoder's ``z.N.npy``, or with
    ``refined`` the ``z.N.refined.npy`` that ``cryo-napari refine-z`` wrote. Only complete files."""
    rd = RunDir(run)
    path = rd.refined_latents_path(step) if refined else rd.path / f"z.{step}.npy"
    if not rd.is_complete(path):
        hint = f": run `cryo-napari refine-z {rd.path} --epoch {step}` first" if refined else ""
        raise InputError(path, f"no complete {'refined ' if refined else ''}latents for epoch {step}{hint}")
    return np.load(path)
