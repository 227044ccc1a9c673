"""VAE training as a job: ``train_vae_job(config)`` yields Progress/Metric/Artifact/Log events.

Every epoch ``E`` (1-based) writes into the run directory, each atomically and then marked
complete (``.ok``): ``weights.E.pt`` (model, optimizer, epoch, torch and numpy RNG states),
``z.E.npy`` (N×zdim float32 latent means from that epoch's pass, in input particle order), and one
line of ``metrics.jsonl``. ``config.yaml`` (written once) holds everything needed to rebuild the
model and reread the data. ``load="latest"`` resumes from the latest complete checkpoint exactly.

Loss per image: mean squared error over the full circular lattice of ``CTF·V̂(k R) − Ŷ`` (Ŷ the
centred, normalised image transform) + ``β · KL / n_points`` (cryoDRGN's scaling).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from cryo_napari.errors import InputError
from cryo_napari.io.particles import load_particles
from cryo_napari.jobs.atomic import save_npy_atomic
from cryo_napari.jobs.protocol import Artifact, Job, Log, Metric, Progress, run_to_end
from cryo_napari.jobs.rundir import RunDir
from cryo_napari.methods.vae import distributed as dist_
from cryo_napari.methods.vae.checkpoint import checkpoint_to_load, clean_after_kill, save_checkpoint
from cryo_napari.methods.vae.data import VAEData, encoder_width, hartley_full
from cryo_napari.methods.vae.encode import encode_all, encode_images
from cryo_napari.methods.vae.model import VAE, build_vae, flops_per_image, kl_divergence, reparameterize

DEFAULTS = dict(
    particles=None, poses=None, ctf=None, datadir=None, ind=None, outdir=None, epochs=20, zdim=8, D=None,
    lazy=False, uninvert=False, load=None, batch_size=None, lr=None, wd=0.0, beta=None, beta_schedule="constant",
    lr_schedule=None,
    enc_layers=3, enc_dim=256, dec_layers=3, dec_dim=256, pe_type="gaussian", pe_dim=None, feat_sigma=0.5,
    repr="fourier", march=0, seed=0, amp=None, device=None, use_ctf=True, convergence_every=5, enc_radius=None,
    convergence_embedding="umap", decoder="mlp", n_basis=8, basis_pad=1, basis_smooth=1.0,
)
KIND = "train-vae"


def default_batch_size(device) -> int:
    """8 on CPU (measured fastest per image: larger batches overflow the caches, docs/vae.md), 64 on GPU."""
    return 64 if torch.device(device).type == "cuda" else 8


def default_lr(batch_size: int) -> float:
    """cryoDRGN's lr 1e-4 at its batch size 8, scaled by √(batch/8) for larger batches (≤ 1e-3)."""
    return float(min(1e-3, 1e-4 * np.sqrt(max(batch_size, 8) / 8)))


def beta_at(cfg: dict, epoch_float: float) -> float:
    """β at a (fractional, 0-based) epoch: ``constant`` or ``warmup:E`` (linear 0→β over E epochs)."""
    beta = cfg["beta"] if cfg["beta"] is not None else 1.0 / cfg["zdim"]
    sched = str(cfg.get("beta_schedule") or "constant")
    if sched == "constant":
        return beta
    if sched.startswith("warmup:"):
        e = float(sched.split(":", 1)[1])
        return beta * min(1.0, epoch_float / e) if e > 0 else beta
    raise InputError(None, f"unknown --beta-schedule {sched!r} (constant, warmup:E)")


def lr_at(cfg: dict, lr: float, epoch_float: float) -> float:
    """Learning rate at a (fractional, 0-based) epoch of a run of ``cfg["epochs"]`` epochs.

    ``constant`` keeps ``lr``; ``cosine:E0`` keeps ``lr`` until epoch E0 and then follows a half cosine down to
    ``lr / 100`` at the last epoch (``cosine`` = ``cosine:0``). A function of the epoch only, so a resumed run
    (``--load latest``, possibly with a larger ``-n``) continues the schedule of its new length.
    """
    sched = str(cfg.get("lr_schedule") or "constant")
    if sched == "constant":
        return lr
    if sched == "cosine" or sched.startswith("cosine:"):
        try:
            e0 = float(sched.split(":", 1)[1]) if ":" in sched else 0.0
        except ValueError:
            e0 = -1.0
        if e0 < 0:
            raise InputError(None, f"--lr-schedule {sched!r}: cosine:E0 needs a start epoch E0 ≥ 0")
        span = cfg["epochs"] - e0
        if epoch_float <= e0 or span <= 0:
            return lr
        t = min(1.0, (epoch_float - e0) / span)
        return lr * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * t)))
    raise InputError(None, f"unknown --lr-schedule {sched!r} (constant, cosine, cosine:E0)")


def march_radius(cfg: dict, epoch: int, D: int) -> float:
    """Lattice radius (cycles/box) used by the loss in 0-based ``epoch`` (frequency marching).

    With ``march = E > 0`` the radius grows linearly from D/4 at epoch 0 to D/2 at epoch E.
    """
    E = int(cfg.get("march") or 0)
    if E <= 0 or epoch >= E:
        return D / 2
    return D / 4 + (D / 4) * epoch / E


def slice_loss(model: VAE, y: torch.Tensor, ctf: torch.Tensor | None, rot: torch.Tensor, z: torch.Tensor,
               m: int, repr: str) -> torch.Tensor:
    """Mean squared error per full-lattice point and image on the first ``m`` half-lattice points.

    ``y`` (B, M, 2) normalised image values, ``ctf`` (B, M) or None, ``rot`` (B, 3, 3), ``z``
    (B, zdim). ``"fourier"`` evaluates the decoder on the ``m`` half points and weights each by its
    Friedel multiplicity; ``"hartley"`` evaluates it on all ``2m − 1`` points as cryoDRGN. Both
    give the same number for the same decoder except at DC, where the Fourier loss compares the
    real part only (the map's mean) and Hartley compares ``a − b``.
    """
    y = y[:, :m]
    ctf = None if ctf is None else ctf[:, :m]
    k = model.lattice_k[:m]
    if repr == "hartley":
        pred = model.decode_slices(rot, torch.cat([k, -k[1:]]), z).float()
        h = pred[..., 0] - pred[..., 1]
        if ctf is not None:
            h = h * torch.cat([ctf, ctf[:, 1:]], dim=1)
        return (h - hartley_full(y)).square().sum(-1).mean() / (2 * m - 1)
    pred = model.decode_slices(rot, k, z).float()
    if ctf is not None:
        pred = pred * ctf[..., None]
    w = model.lattice_w[:m]
    err = (pred - y).square()
    err = torch.cat([err[:, :1, :1], err[:, 1:].sum(-1, keepdim=True)], dim=1)[..., 0]  # DC: real part only
    return (err * w).sum(-1).mean() / w.sum()


def step_loss(model: VAE, batch: dict, m: int, repr: str, z_sample: bool = True):
    """Loss terms of one batch: (mse per full-lattice point and image, KL per image, mu)."""
    mu, logvar = encode_images(model, batch["y"], batch["ctf"], repr)
    z = reparameterize(mu, logvar) if z_sample else mu
    mse = slice_loss(model, batch["y"], batch["ctf"], batch["rot"], z, m, repr)
    return mse, kl_divergence(mu.float(), logvar.float()), mu


def _resolve_device(cfg):
    dev = cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    amp = cfg.get("amp")
    amp = (dev.startswith("cuda")) if amp is None else bool(amp)
    return torch.device(dev), amp and dev.startswith("cuda")


def _to(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def load_data_for(cfg: dict) -> VAEData:
    pdata = load_particles(cfg["particles"], datadir=cfg.get("datadir"), poses=cfg.get("poses"),
                           ctf=cfg.get("ctf"), ind=cfg.get("ind"), require_poses=True)
    return VAEData(pdata, cfg.get("D"), cfg.get("uninvert", False), cfg.get("lazy", False), cfg.get("use_ctf", True))


def train_vae_job(config: dict) -> Job:
    """Train a VAE (see the module docstring). Returns a summary dict (run dir, epochs, final loss)."""
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if v is not None or k not in DEFAULTS}}
    if cfg["outdir"] is None or cfg["particles"] is None:
        raise InputError(None, "train-vae needs particles and an output directory")
    if cfg["decoder"] not in ("mlp", "basis"):
        raise InputError(None, f"unknown decoder {cfg['decoder']!r} (mlp, basis)")
    if cfg["repr"] not in ("fourier", "hartley"):
        raise InputError(None, f"unknown representation {cfg['repr']!r} (fourier, hartley)")
    device, amp = _resolve_device(cfg)
    rank, world, ddp_device, ddp_here = dist_.init_distributed(cfg.get("device"))
    if world > 1:
        device, amp = ddp_device, amp and ddp_device.type == "cuda"
    try:
        result = yield from _train(cfg, device, amp, rank, world)
    finally:
        dist_.finish(ddp_here)
    return result


def _train(cfg: dict, device, amp: bool, rank: int, world: int) -> Job:
    lead = rank == 0
    if cfg["batch_size"] is None:
        cfg["batch_size"] = default_batch_size(device)
    if cfg["epochs"] < 1 or cfg["batch_size"] < 1 or cfg["zdim"] < 1:
        raise InputError(None, "epochs, batch size and zdim must be ≥ 1")
    beta_at(cfg, 0.0)  # validates the schedules before the data are read
    if cfg.get("lr_schedule"):
        lr_at(cfg, 1.0, 0.0)
    rd = RunDir(cfg["outdir"]).create()
    ckpt_path = checkpoint_to_load(rd, cfg["load"])
    if ckpt_path is None and not cfg["load"] and rd.complete_steps("weights", "pt"):
        raise InputError(rd.path, "already holds trained epochs: resume with --load latest or use a new directory")
    if world > 1:
        dist_.barrier()  # every rank has checked the directory before rank 0 writes into it

    yield Log("info", f"reading {cfg['particles']}")
    data = load_data_for(cfg)
    yield from data.prepare()
    lat = data.lattice
    lr = cfg["lr"] or default_lr(cfg["batch_size"])
    m_enc = lat.count_within(cfg["enc_radius"]) if cfg.get("enc_radius") else len(lat)
    if m_enc < 2:
        raise InputError("--enc-radius", f"{cfg['enc_radius']} cycles/box leaves the encoder {m_enc} lattice point(s)")
    model = build_vae(data.D, encoder_width(m_enc, cfg["repr"]), cfg["zdim"], cfg["enc_layers"], cfg["enc_dim"],
                      cfg["dec_layers"], cfg["dec_dim"], cfg["pe_type"], cfg["pe_dim"], cfg["feat_sigma"], cfg["seed"],
                      cfg["decoder"], cfg["n_basis"], cfg["basis_pad"], cfg["basis_smooth"])
    model.to(device)
    model.lattice_k = lat.k.to(device)
    model.lattice_w = lat.weight.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=cfg["wd"])
    np_rng = np.random.default_rng(cfg["seed"])
    torch.manual_seed(cfg["seed"])
    start = 0
    if ckpt_path is not None:
        try:
            ck = torch.load(ckpt_path, map_location=device, weights_only=False)
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
        except (RuntimeError, KeyError, EOFError, OSError) as exc:
            raise InputError(ckpt_path, f"cannot resume from this checkpoint ({str(exc).splitlines()[0][:120]})") from None
        start = int(ck["epoch"])
        # a resumed run keeps its learning rate and schedule unless new ones are given (older checkpoints hold
        # only the optimizer's lr, which was constant then)
        if cfg["lr"] is None:
            lr = float(ck.get("lr", opt.param_groups[0]["lr"]))
        if cfg.get("lr_schedule") is None:
            cfg["lr_schedule"] = ck.get("lr_schedule", "constant")
        torch.set_rng_state(ck["torch_rng"])
        if "cuda_rng" in ck and device.type == "cuda":
            torch.cuda.set_rng_state_all(ck["cuda_rng"])
        np_rng.bit_generator.state = ck["numpy_rng"]
        yield Log("info", f"resuming from {ckpt_path.name} (epoch {start})")
    elif cfg["load"] == "latest":
        yield Log("info", "no complete checkpoint in the run directory; starting from scratch")
    if ckpt_path is None and cfg["decoder"] == "basis":
        from cryo_napari.methods.vae.basis import init_mean_from_data

        info = init_mean_from_data(model.decoder, data)
        yield Log("info", f"basis decoder: mean volume from the back-projection of {info['n']} particles")
    cfg["lr_schedule"] = cfg.get("lr_schedule") or "constant"
    if cfg["load"] and lead:
        cleaned = clean_after_kill(rd)
        if cleaned:
            yield Log("info", f"removed {cleaned} leftover(s) of the interrupted run (temporary files, torn "
                              "metrics line)")

    if lead and (not (rd.path / "config.yaml").exists() or ckpt_path is None):
        saved = {k: cfg[k] for k in DEFAULTS if k not in ("load",)}
        saved.update(D=data.D, D_input=data.D0, apix=float(np.median(data.apix)), n_particles=data.N, lr=lr,
                     norm=data.norm, arch=model.arch, device=str(device), amp=amp, world_size=world,
                     particles=str(Path(cfg["particles"]).resolve()))
        for key in ("poses", "ctf", "datadir"):
            if cfg.get(key):
                saved[key] = str(Path(cfg[key]).resolve())
        if cfg.get("ind") is not None and not isinstance(cfg["ind"], (str, Path)):
            save_npy_atomic(rd.path / "ind.npy", np.asarray(cfg["ind"]))
            saved["ind"] = str((rd.path / "ind.npy").resolve())
        elif cfg.get("ind"):
            saved["ind"] = str(Path(cfg["ind"]).resolve())
        rd.write_config(saved, KIND)

    n, B, E = data.N, cfg["batch_size"], cfg["epochs"]
    n_rank = len(dist_.shard(np.arange(n), rank, world))
    steps_per_epoch = (n_rank + B - 1) // B
    total = steps_per_epoch * E
    if start >= E:
        yield Log("info", f"already trained for {start} epochs (asked for {E})")
        return {"run": rd.path, "epochs": start}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp else _null()
    yield Log("info", f"{n} particles, box {data.D}, {len(lat)} half-lattice points, batch {B}, lr {lr:.2g} "
                      f"({cfg['lr_schedule']}), "
                      f"{device}{' AMP' if amp else ''}{f', {world} processes' if world > 1 else ''}")
    stepper = dist_.wrap(model, cfg["repr"], world, device)
    last = {}
    for epoch in range(start, E):
        model.train()
        t0 = time.perf_counter()
        m = lat.count_within(march_radius(cfg, epoch, data.D))
        order = dist_.shard(np_rng.permutation(n), rank, world)
        sums = np.zeros(4)
        for s, batch in enumerate(data.iter_batches(order, B)):
            b = _to(batch, device)
            beta = beta_at(cfg, epoch + s / steps_per_epoch)
            lr_now = lr_at(cfg, lr, epoch + s / steps_per_epoch)
            for group in opt.param_groups:
                group["lr"] = lr_now
            with autocast:
                mse, kl, _ = stepper(b["y"], b["ctf"], b["rot"], m)
            loss = mse + beta * kl / (2 * m - 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            nb = len(batch["ind"])
            sums += np.array([loss.item() * nb, mse.item() * nb, kl.item() * nb, nb])
            step = epoch * steps_per_epoch + s + 1
            yield Metric("loss", float(loss.item()), step)
            yield Progress(step, total, f"epoch {epoch + 1}/{E} loss {sums[0] / max(1, (s * B + nb)):.4g}")
        # latents of this epoch: every particle through the end-of-epoch encoder (not the means seen
        # during the epoch, which come from as many encoders as there were steps)
        z_mu = np.zeros((n, cfg["zdim"]), dtype=np.float32)
        z_count = np.zeros(n, dtype=np.float32)
        z_part, z_ind = encode_all(model, data, np.unique(order), cfg["repr"], device, autocast, max(B, 256))
        z_mu[z_ind] = z_part
        z_count[z_ind] = 1
        if world > 1:
            z_mu, z_count = dist_.all_sum(z_mu, device), dist_.all_sum(z_count, device)
            sums = dist_.all_sum(sums, device)
        z_mu = (z_mu / np.maximum(z_count, 1)[:, None]).astype(np.float32)  # shards may overlap when padded
        dt = time.perf_counter() - t0
        n_seen = sums[3]
        last = {"epoch": epoch + 1, "loss": sums[0] / n_seen, "mse": sums[1] / n_seen, "kl": sums[2] / n_seen, "beta": beta,
                "lr": lr_now, "time_s": dt, "images_per_s": n / dt, "lattice_points": 2 * m - 1,
                "gflops_per_s": 3 * flops_per_image(model.arch, m if cfg["repr"] == "fourier" else 2 * m - 1) * n / dt / 1e9}
        wpath = rd.path / f"weights.{epoch + 1}.pt"
        zpath = rd.path / f"z.{epoch + 1}.npy"
        if not lead:
            dist_.barrier()  # rank 0 writes the epoch
            continue
        save_checkpoint(wpath, model, opt, epoch + 1, np_rng, {"norm": data.norm, "lr": lr,
                                                                  "lr_schedule": cfg["lr_schedule"]})
        rd.mark_complete(wpath, epoch + 1)
        save_npy_atomic(zpath, z_mu)
        rd.mark_complete(zpath, epoch + 1)
        rd.append_metrics(last)
        if world > 1:
            dist_.barrier()
        yield Artifact("checkpoint", wpath)
        yield Artifact("latent", zpath)
        for key in ("loss", "mse", "kl", "images_per_s"):
            yield Metric(f"epoch_{key}", float(last[key]), epoch + 1)
        yield Log("info", f"epoch {epoch + 1}/{E}: loss {last['loss']:.5g} (mse {last['mse']:.5g}, kl {last['kl']:.4g}), "
                          f"{dt:.1f} s, {last['images_per_s']:.0f} images/s")
        every = int(cfg.get("convergence_every") or 0)
        if every > 0 and (epoch + 1) % every == 0 and epoch + 1 >= 2:
            yield from _convergence_check(rd.path, every, cfg.get("convergence_embedding") or "umap")
    if lead:
        rd.write_final(E, weights=f"weights.{E}.pt", z=f"z.{E}.npy")
    return {"run": rd.path, "epochs": E, **last}


def _convergence_check(run_path, every: int, embedding: str):
    """Convergence diagnostics (``cryo-napari convergence``) on the epochs written so far, into
    RUN/convergence; its verdict is logged. A failure here is logged and never stops training.
    Runs under a forked torch RNG (loading models draws initial weights), so training after a
    check is the same with or without it and after ``--load``."""
    from cryo_napari.methods.vae.convergence import convergence_job

    artifacts = []
    try:
        with torch.random.fork_rng(devices=[]):
            res = run_to_end(convergence_job(run_path, every=every, embedding=embedding),
                             lambda ev: artifacts.append(ev) if isinstance(ev, Artifact) else None)
    except Exception as exc:  # diagnostics must not end a training run
        yield Log("warning", f"convergence check failed: {exc}")
        return
    yield from artifacts
    yield Log("info", f"convergence (RUN/convergence/convergence.json): {res['reasoning']}")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
