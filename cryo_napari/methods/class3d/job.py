"""3D classification without alignment as a job: O-EM warm-up, then F-EM to convergence.

Poses and shifts stay fixed. See docs/class3d.md for every definition (tempering, metrics,
stopping rules) and :mod:`.outputs` for the files of each iteration.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from cryo_napari.errors import InputError
from cryo_napari.geometry.fourier import fourier_crop_3d, volume_to_fourier
from cryo_napari.io.mrc import read_mrc, write_mrc
from cryo_napari.io.particles import load_particles
from cryo_napari.jobs.protocol import Artifact, Job, Log, Metric, Progress
from cryo_napari.jobs.atomic import write_text_atomic
from cryo_napari.jobs.rundir import RunDir, _plain
from cryo_napari.methods.class3d import diagnostics as dg
from cryo_napari.methods.class3d.data import prepare_working_set
from cryo_napari.methods.class3d.em import (ClassAccumulator, e_step, fsc_weighting, noise_from_estep, project_at,
                                            tune_similarity)
from cryo_napari.methods.class3d.init import auto_solvent_mask, consensus_map, initial_maps
from cryo_napari.methods.class3d.outputs import TableWriter, complete_iterations, load_iteration, write_iteration


@dataclass
class Class3DConfig:
    """All parameters of a run (CLI names with ``-`` → ``_``). Resolutions in Å."""

    particles: str
    outdir: str
    K: int = 10
    target_res: float | None = 8.0
    init_res: float = 20.0
    init_mode: str = "pca"
    init_maps: list = field(default_factory=list)
    init_subset: int | None = None
    oem_epochs: int = 2
    oem_batch_per_class: int = 1000
    lr_init: float = 0.4
    lr_halflife: float = 50.0
    class_similarity: float = 0.5
    anneal_end: int = 10
    auto_similarity: bool = False
    target_ess_frac: float = 0.75
    hard: bool = False
    scales: str = "input"
    static_noise: bool = False
    mask: str | None = None
    focus_mask: str | None = None
    mask_threshold: float = 0.15
    mask_near: float = 2.0
    mask_far: float = 3.0
    switch_conv: float = 2.0
    rms_conv: float | None = None
    max_fem: int = 25
    hard_recon: bool = False
    no_ctf: bool = False
    uninvert: bool = False
    seed: int = 0
    batch: int = 256
    poses: str | None = None
    ctf: str | None = None
    ind: str | None = None
    datadir: str | None = None
    load: str | None = None


def similarity_at(s0: float, t: int, anneal_end: int) -> float:
    """Class similarity at F-EM iteration t (1-based): ``s0·max(0, 1 − t/anneal_end)``; 0 when
    ``anneal_end ≤ 0``."""
    return 0.0 if anneal_end <= 0 else s0 * max(0.0, 1.0 - t / anneal_end)


def learning_rate(t: int, T: int, lr_init: float, halflife_pct: float) -> float:
    """O-EM rate at batch t of T: ``lr_init·0.5^(t / (halflife_pct/100·T))`` (fixed when 0)."""
    if halflife_pct <= 0:
        return lr_init
    return lr_init * 0.5 ** (t / max(halflife_pct / 100.0 * T, 1e-9))


def _load_mask(path, ws) -> np.ndarray:
    vol, _ = read_mrc(path)
    if vol.ndim != 3 or vol.shape[-1] not in (ws.D, ws.d) or len(set(vol.shape)) != 1:
        raise InputError(path, f"mask shape {vol.shape} matches neither the particle box {ws.D} nor the working box {ws.d}")
    if vol.shape[-1] != ws.d:
        vol = fourier_crop_3d(torch.as_tensor(np.array(vol)), ws.d).numpy()
    m = np.clip(vol, 0, 1).astype(np.float32)
    if m.max() <= 0:
        raise InputError(path, "mask is empty (no voxel > 0)")
    return m


def _subtract_outside_focus(ws, consensus: torch.Tensor, focus: np.ndarray, scales: np.ndarray, batch: int) -> torch.Tensor:
    """Images minus projections of the consensus density outside the focus mask:
    ``X − s·CTF·P(C·(1 − F))`` (RELION-style partial signal subtraction), (N, d, d) complex."""
    vft = volume_to_fourier(consensus * torch.as_tensor(1 - focus), 2)
    out = torch.empty_like(ws.images_ft)
    k2 = ws.k2
    for b in range(0, len(ws), batch):
        ii = slice(b, min(len(ws), b + batch))
        P = project_at(vft, ws.rotations[ii], k2)
        s = torch.as_tensor(scales[ii], dtype=torch.float32)[:, None]
        out[ii] = ws.images_ft[ii] - s * ws.ctf[ii] * P
    return out


def _m_step(ws, post, scales, ind, mask, K):
    acc = ClassAccumulator(ws.d, K)
    acc.add(ws, post, scales, ind)
    full, halves = acc.reconstruct()
    out, res = [], []
    for k in range(K):
        m, curve = fsc_weighting(full[k], halves[k, 0], halves[k, 1], mask)
        out.append(m)
        from cryo_napari.geometry.fsc import resolution_at

        res.append(resolution_at(curve, ws.d, ws.apix))
    return torch.stack(out), res


def _resume_point(run: RunDir, cfg) -> dict:
    """The iteration to resume from (``--load latest`` or an iteration number), loaded."""
    steps = complete_iterations(run.path)
    if not steps:
        raise InputError(run.path, "--load: no complete class3d iteration to resume from (no iter_NNN/posterior.npy.ok)")
    if str(cfg.load) == "latest":
        step = steps[-1]
    else:
        try:
            step = int(str(cfg.load).removeprefix("iter_"))
        except ValueError:
            raise InputError(run.path, f"--load must be 'latest' or an iteration number, got {cfg.load!r}") from None
    if not (run.path / "mask.mrc").exists():
        raise InputError(run.path, "--load: mask.mrc of the run is missing")
    it = load_iteration(run.path, step)
    if it["metrics"] is None or "sigma2" not in it["metrics"]:
        raise InputError(it["dir"], "--load: the iteration has no metrics record (sigma2)")
    if it["posterior"].shape[1] != cfg.K:
        raise InputError(it["dir"], f"--load: the run has K={it['posterior'].shape[1]} classes, not -K {cfg.K}")
    return it


def _restore_history(run: RunDir, it: dict) -> list[dict]:
    """F-EM records 1 … step (from metrics.jsonl, the last from the iteration's own record);
    metrics.jsonl is rewritten without later or torn lines, so the resumed run appends cleanly."""
    step = it["step"]
    recs = run.read_metrics()
    keep = [r for r in recs if r.get("phase") != "fem" or r.get("iteration", 0) < step]
    history = [r for r in keep if r.get("phase") == "fem"] + [it["metrics"]]
    text = "".join(json.dumps(_plain(r)) + "\n" for r in keep + [it["metrics"]])
    write_text_atomic(run.path / "metrics.jsonl", text)
    return history


def class3d_job(config) -> Job:
    """Run 3D classification; ``config`` is a :class:`Class3DConfig` or a dict of its fields.

    Yields Progress (preparation, each O-EM batch, each F-EM iteration), Metric (per F-EM
    iteration), Artifact (maps, plots) and Log events. Returns a summary dict. With
    ``load`` ('latest' or an iteration number) it continues an interrupted run in ``outdir``
    from that complete iteration (initialisation and O-EM are skipped).
    """
    cfg = config if isinstance(config, Class3DConfig) else Class3DConfig(**config)
    if cfg.K < 1:
        raise InputError(None, f"-K must be ≥ 1, got {cfg.K}")
    if cfg.scales not in ("none", "input", "optimal"):
        raise InputError(None, f"--scales must be none, input or optimal, got {cfg.scales!r}")
    if not 0 < cfg.target_ess_frac <= 1:
        raise InputError(None, f"--target-ess-frac must be in (0, 1], got {cfg.target_ess_frac}")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    run = RunDir(cfg.outdir).create()
    resume = _resume_point(run, cfg) if cfg.load else None
    run.write_config(asdict(cfg), "class3d")
    t0 = time.time()
    pdata = load_particles(cfg.particles, datadir=cfg.datadir, poses=cfg.poses, ctf=cfg.ctf, ind=cfg.ind,
                           require_poses=True)
    K, n = cfg.K, len(pdata)
    if n < 2 * K:
        raise InputError(pdata.path, f"{n} particles is too few for K={K} classes")
    if resume is not None and len(resume["posterior"]) != n:
        raise InputError(resume["dir"], f"--load: the run has {len(resume['posterior'])} particles, the input {n}")
    gen = prepare_working_set(pdata, cfg.target_res, not cfg.no_ctf, cfg.uninvert, cfg.batch)
    while True:
        try:
            done, total = next(gen)
        except StopIteration as stop:
            ws = stop.value
            break
        yield Progress(done, total, "reading and transforming particles")
    yield Log("info", f"{n} particles, box {ws.D} → working box {ws.d} ({ws.apix:.2f} Å/px, Nyquist {2 * ws.apix:.1f} Å), K={K}")
    table = TableWriter(pdata.path, pdata.kind, pdata.source_index) if pdata.kind in ("star", "cs") else None

    scales = ws.scale_input.copy() if cfg.scales in ("input", "optimal") else np.ones(n)
    consensus, _ = consensus_map(ws)
    if resume is not None:
        mask = _load_mask(run.path / "mask.mrc", ws)
    elif cfg.mask:
        mask = _load_mask(cfg.mask, ws)
    else:
        mask = auto_solvent_mask(consensus, ws.apix, cfg.init_res, cfg.mask_threshold, cfg.mask_near, cfg.mask_far)
    write_mrc(run.path / "mask.mrc", mask, ws.apix)
    write_mrc(run.path / "consensus.mrc", consensus.numpy(), ws.apix)
    focus = _load_mask(cfg.focus_mask, ws) if cfg.focus_mask else None
    x_focus = _subtract_outside_focus(ws, consensus, focus, scales, cfg.batch) if focus is not None else None
    e_mask = torch.as_tensor(mask if focus is None else focus * mask)
    mask_t = torch.as_tensor(mask)
    bsize = min(n, K * cfg.oem_batch_per_class)
    if resume is None:
        maps = initial_maps(ws, K, cfg.init_mode, cfg.init_res, rng, mask, cfg.init_maps, cfg.init_subset) * mask_t
        yield Log("info", f"initial maps: {cfg.init_mode}, low-passed to {cfg.init_res:g} Å; solvent mask "
                          f"{'from ' + cfg.mask if cfg.mask else 'auto'} ({float(mask.mean()):.3f} of the box)")
        log_prior = np.full(K, -math.log(K))
        uniform = np.full((n, K), 1.0 / K)
        sigma2 = noise_from_estep(e_step(ws, maps * e_mask, log_prior, np.ones(ws.d // 2), scales, 0.0, False,
                                         post_given=uniform, images_ft=x_focus, batch=cfg.batch))
        s0 = cfg.class_similarity
        if cfg.auto_similarity and not cfg.hard:
            sub = np.sort(rng.choice(n, bsize, replace=False))
            ll = e_step(ws, maps * e_mask, log_prior, sigma2, scales, 0.0, False, sub, images_ft=x_focus,
                        batch=cfg.batch).loglik
            s0 = tune_similarity(ll, cfg.target_ess_frac)
            yield Log("info", f"class similarity auto-tuned to {s0:.4g} (mean class ESS {cfg.target_ess_frac:g}·K "
                              f"on {bsize} particles)")
        state: dict = {}
        yield from _oem(cfg, ws, rng, maps, mask_t, e_mask, log_prior, sigma2, scales, s0, x_focus, bsize, state)
        maps, log_prior, sigma2 = state["maps"], state["log_prior"], state["sigma2"]
        history, prev_labels, prev_post, t_start = [], None, None, 1
        post, labels = None, None
    else:
        step = resume["step"]
        maps = torch.as_tensor(resume["maps"], dtype=torch.float32) * mask_t
        if maps.shape[1:] != (ws.d,) * 3:
            raise InputError(resume["dir"], f"--load: class maps are {maps.shape[-1]}³, the working box is {ws.d}³ "
                                            "(same --target-res needed)")
        post = resume["posterior"].astype(np.float64)
        labels = resume["labels"]
        prev_post, prev_labels = post, labels
        scales = resume["scales"].astype(np.float64)
        rec = resume["metrics"]
        sigma2 = np.asarray(rec["sigma2"], dtype=np.float64)
        s0 = float(rec.get("similarity_init", cfg.class_similarity))
        log_prior = np.log(np.clip(post.mean(0), 1e-6, None))
        history = _restore_history(run, resume)
        t_start = step + 1
        yield Log("info", f"resuming from complete iteration {step} ({resume['dir']})")
    result: dict = {}
    yield from _fem(cfg, run, ws, table, maps, mask, mask_t, e_mask, consensus, log_prior, sigma2, scales, s0,
                    x_focus, history, prev_labels, prev_post, post, labels, t_start, t0, result)
    return result


def _oem(cfg, ws, rng, maps, mask_t, e_mask, log_prior, sigma2, scales, s0, x_focus, bsize, state):
    """O-EM: V_k ← (1−η)V_k + η·V̂_k(batch) on random batches; final values go into ``state``."""
    n, K = len(ws), cfg.K
    per_epoch = math.ceil(n / bsize)
    T = cfg.oem_epochs * per_epoch
    for t in range(T):
        if t % per_epoch == 0:
            perm = rng.permutation(n)
        ind = np.sort(perm[(t % per_epoch) * bsize:(t % per_epoch + 1) * bsize])
        es = e_step(ws, maps * e_mask, log_prior, sigma2, scales, s0, cfg.hard, ind,
                    images_ft=x_focus, batch=cfg.batch)
        if not cfg.static_noise:
            sigma2 = noise_from_estep(es)
        log_prior = np.log(np.clip(es.post.mean(0), 1e-6, None))
        new, _ = _m_step(ws, es.post, scales, ind, mask_t.numpy(), K)
        eta = learning_rate(t, T, cfg.lr_init, cfg.lr_halflife)
        maps = ((1 - eta) * maps + eta * new) * mask_t
        yield Progress(t + 1, T, f"O-EM batch {t + 1}/{T} (η={eta:.3f})")
    yield Log("info", f"O-EM: {T} batches of {bsize} particles done")
    state.update(maps=maps, log_prior=log_prior, sigma2=sigma2)


def _fem(cfg, run, ws, table, maps, mask, mask_t, e_mask, consensus, log_prior, sigma2, scales, s0, x_focus,
         history, prev_labels, prev_post, post, labels, t_start, t0, result):
    """F-EM iterations ``t_start`` … until a stopping rule; the summary goes into ``result``."""
    n, K = len(ws), cfg.K
    consensus_np = consensus.numpy() * mask
    rms_hist = [h["rms_change"] for h in history]
    stop_reason = "max-fem"
    warned_scales = warned_alike = False
    t = t_start - 1
    switch = history[-1]["switch_pct"] if history else float("nan")
    rms = history[-1]["rms_change"] if history else float("nan")
    alike = None
    for t in range(t_start, cfg.max_fem + 1):
        t_it = time.time()
        sim = similarity_at(s0, t, cfg.anneal_end)
        es = e_step(ws, maps * e_mask, log_prior, sigma2, scales, sim, cfg.hard, images_ft=x_focus, batch=cfg.batch)
        post = es.post
        labels = post.argmax(1)
        if not cfg.static_noise:
            sigma2 = noise_from_estep(es)
        log_prior = np.log(np.clip(post.mean(0), 1e-6, None))
        if cfg.scales == "optimal":
            scales = np.clip(es.scale_opt, 0.1, 10.0)
        new, res = _m_step(ws, post, scales, np.arange(n), mask, K)
        sizes_int = np.bincount(labels, minlength=K)
        new_masked = new * mask_t
        rms, _ = dg.rms_change(new_masked.numpy(), maps.numpy(), consensus_np, sizes_int)
        diff_min, corr_max = dg.class_distinctness(new_masked.numpy(), consensus_np)
        maps = new_masked
        rms_hist.append(rms)
        switch = dg.class_switch_percent(labels, prev_labels)
        kl = dg.mean_kl(post, prev_post)
        ess = dg.class_ess(post)
        # rank classes by size, largest first
        order = np.argsort(-sizes_int, kind="stable")
        rank = np.empty(K, int)
        rank[order] = np.arange(K)
        hard_maps = None
        if cfg.hard_recon:
            acc = ClassAccumulator(ws.d, K)
            acc.add(ws, np.eye(K)[labels], scales, np.arange(n))
            hard_maps = acc.reconstruct()[0].numpy()[order]
        record = {"phase": "fem", "iteration": t, "class_sizes": sizes_int[order].tolist(),
                  "class_fraction": (sizes_int[order] / n).tolist(), "switch_pct": switch, "rms_change": rms,
                  "rms_change_sci": f"{rms:.3e}", "mean_kl": kl, "mean_ess": float(ess.mean()),
                  "ess_hist": np.histogram(ess, bins=10, range=(1, max(K, 1.001)))[0].tolist(),
                  "scale_mean": float(scales.mean()), "scale_std": float(scales.std()),
                  "scale_hist": np.histogram(scales, bins=20)[0].tolist(),
                  "scales_all_one": dg.scales_all_one(scales), "similarity": sim, "similarity_init": s0,
                  "class_diff_min": None if K < 2 else diff_min, "class_corr_max": None if K < 2 else corr_max,
                  "class_res_A": [res[k] for k in order], "sigma2": sigma2.tolist(),
                  "seconds": time.time() - t_it}
        post_r, labels_r = post[:, order], rank[labels]
        out = write_iteration(run, t, new.numpy()[order], post_r, labels_r, ess, scales, ws.apix, table,
                              hard_maps, record)
        run.append_metrics(record)
        run.write_final(t, dir=out.name)
        history.append(record)
        plot = dg.plot_diagnostics(run.path / "diagnostics.png", history, ess, scales, K)
        for name in ("switch_pct", "rms_change", "mean_ess"):
            yield Metric(name, float(record[name]), t)
        if kl is not None:
            yield Metric("mean_kl", kl, t)
        if K > 1:
            yield Metric("class_corr_max", corr_max, t)
        yield Artifact("map", out / "class_01.mrc")
        yield Artifact("plot", plot)
        if dg.scales_all_one(scales) and not warned_scales:
            warned_scales = True
            yield Log("warning", "all per-particle scales are 1: scales were not applied "
                                 "(use --scales optimal, or input scales from alignments3D/alpha)")
        yield Log("info", f"F-EM {t}: sizes {record['class_sizes']}, switches {switch:.2f} %, "
                          f"RMS change {rms:.3e}, mean KL {'n/a' if kl is None else f'{kl:.3e}'}, "
                          f"mean ESS {ess.mean():.3f}, max map corr. {corr_max:.4f}, similarity {sim:.3f}")
        yield Progress(t, cfg.max_fem, f"F-EM iteration {t}")
        prev_labels, prev_post = labels, post = labels_r, post_r
        maps = maps[torch.as_tensor(order)]
        log_prior = log_prior[order]
        annealed = sim == 0.0
        alike = dg.classes_look_alike(float(ess.mean()), K, diff_min) if annealed else None
        if alike and not warned_alike:
            warned_alike = True
            yield Log("warning", f"{alike} (at F-EM iteration {t})")
        if annealed and t > 1 and switch < cfg.switch_conv:
            stop_reason = "switch"
            yield Log("info", f"converged: class switches {switch:.2f} % < --switch-conv {cfg.switch_conv:g} % "
                              f"at F-EM iteration {t}")
            break
        if annealed and cfg.rms_conv is not None and len(rms_hist) >= 2:
            mean2 = float(np.mean(rms_hist[-2:]))
            if mean2 < cfg.rms_conv:
                stop_reason = "rms"
                yield Log("info", f"converged: mean RMS density change of the last 2 iterations {mean2:.3e} "
                                  f"< --rms-conv {cfg.rms_conv:.3e} at F-EM iteration {t}")
                break
    else:
        yield Log("warning", f"stopped at --max-fem {cfg.max_fem} F-EM iterations without meeting the "
                             f"convergence criteria (last switches {switch:.2f} %, RMS change {rms:.3e})")
    info = {"dir": f"iter_{t:03d}", "stop_reason": stop_reason}
    if alike:
        info["warning"] = alike
    run.write_final(t, **info)
    yield Log("info", f"done in {time.time() - t0:.1f} s: {run.path / f'iter_{t:03d}'} ({stop_reason})")
    result.update({"step": t, "stop_reason": stop_reason, "labels": labels, "posterior": post,
                   "outdir": run.path, "history": history, "warning": alike})
