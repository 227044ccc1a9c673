"""Convergence diagnostics of a VAE run (cryoDRGN protocol, Box 1), as a job.

From the complete epochs of a run:

- total-loss curve (``loss.png``) from ``metrics.jsonl``;
- per-particle latent shifts between consecutive epochs: median ``|z_e − z_{e−1}|`` (also
  relative to the median ``|z_e|``), median cosine similarity and mean dot product;
- maps generated at fixed *marker particles* (the particles nearest the k-means centres of the
  last epoch's latents, in PCA space — a simple stand-in for cryoDRGN's UMAP local maxima) at
  evaluated epochs: real-space correlation and FSC (AUC and value at Nyquist) between
  consecutive evaluated epochs (``maps.png``);
- ``convergence.json`` with all numbers and a "looks converged from epoch N" verdict.

Heuristic (stated in the JSON): the run looks converged from the first evaluated epoch ``N`` such
that every later step satisfies all of: loss change < ``loss_tol`` (relative, per epoch), median
relative latent shift < ``shift_tol``, and mean map correlation between consecutive evaluated
epochs > ``cc_tol``. The verdict is ``null`` when no such epoch exists (train longer).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cryo_napari.errors import InputError
from cryo_napari.jobs.atomic import atomic_path, write_text_atomic
from cryo_napari.jobs.protocol import Artifact, Job, Log, Progress
from cryo_napari.jobs.rundir import RunDir


def latent_shift_stats(z0: np.ndarray, z1: np.ndarray) -> dict:
    """Per-particle change between two (N, zdim) latent arrays of consecutive epochs."""
    d = np.linalg.norm(z1 - z0, axis=1)
    n0, n1 = np.linalg.norm(z0, axis=1), np.linalg.norm(z1, axis=1)
    dot = (z0 * z1).sum(1)
    cos = dot / np.maximum(n0 * n1, 1e-12)
    med = float(np.median(d))
    return {"median_shift": med, "median_relative_shift": med / max(float(np.median(n1)), 1e-12),
            "median_cosine": float(np.median(cos)), "mean_dot": float(dot.mean())}


def marker_particles(z: np.ndarray, k: int = 10, seed: int = 0) -> np.ndarray:
    """Indices of the particles nearest the ``k`` k-means centres of ``z`` in ≤ 3-D PCA space."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    k = min(k, len(z))
    x = PCA(min(3, z.shape[1], len(z))).fit_transform(z) if len(z) > 1 else z
    km = KMeans(k, n_init=4, random_state=seed).fit(x)
    d = ((x[:, None, :] - km.cluster_centers_[None]) ** 2).sum(-1)
    return np.unique(np.argmin(d, axis=0))


def map_agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """Correlation, FSC AUC and FSC at Nyquist of two (D, D, D) maps."""
    from cryo_napari.geometry.fsc import fsc, fsc_auc

    c = fsc(a, b)
    return {"cc": float(np.corrcoef(a.ravel(), b.ravel())[0, 1]), "fsc_auc": fsc_auc(c), "fsc_nyquist": float(c[-1])}


def looks_converged(epochs: list[int], loss_change: dict, shifts: dict, map_cc: dict, loss_tol: float,
                    shift_tol: float, cc_tol: float) -> tuple[int | None, str]:
    """The first epoch after which all criteria hold (module docstring), with the reasoning."""
    for e in epochs:
        later_loss = [v for k, v in loss_change.items() if k > e]
        later_shift = [v for k, v in shifts.items() if k > e]
        later_cc = [v for k, v in map_cc.items() if k > e]
        if not (later_loss and later_shift and later_cc):
            break
        if max(later_loss) < loss_tol and max(later_shift) < shift_tol and min(later_cc) > cc_tol:
            return e, (f"after epoch {e}: loss changes < {loss_tol:.1%}/epoch (max {max(later_loss):.2%}), median "
                       f"relative latent shift < {shift_tol} (max {max(later_shift):.3f}), marker-map correlation "
                       f"> {cc_tol} (min {min(later_cc):.4f})")
    worst = []
    if loss_change:
        worst.append(f"last loss change {list(loss_change.values())[-1]:.2%}")
    if shifts:
        worst.append(f"last median relative latent shift {list(shifts.values())[-1]:.3f}")
    if map_cc:
        worst.append(f"last marker-map correlation {list(map_cc.values())[-1]:.4f}")
    return None, ("not converged by these criteria (loss < {:.1%}/epoch, shift < {}, map cc > {}): ".format(
        loss_tol, shift_tol, cc_tol) + ", ".join(worst) + "; train longer") if worst else "too few epochs to judge"


def convergence_job(run_dir, every: int = 1, n_markers: int = 10, D: int | None = None, out=None,
                    loss_tol: float = 0.005, shift_tol: float = 0.1, cc_tol: float = 0.99) -> Job:
    """Analyse ``run_dir``; writes into ``out`` (default RUN/convergence). Returns the JSON dict."""
    from cryo_napari.methods.vae.eval import load_vae_run

    rd = RunDir(run_dir)
    rd.read_config()
    epochs = [e for e in rd.complete_steps("weights", "pt") if e in set(rd.complete_steps("z", "npy"))]
    if len(epochs) < 2:
        raise InputError(rd.path, f"convergence needs at least 2 complete epochs, found {len(epochs)}")
    out = Path(out) if out else rd.path / "convergence"
    out.mkdir(parents=True, exist_ok=True)
    metrics = {m["epoch"]: m for m in rd.read_metrics()}
    loss = {e: metrics[e]["loss"] for e in epochs if e in metrics}
    loss_change = {e: abs(loss[e] - loss[p]) / max(abs(loss[p]), 1e-12) for p, e in zip(epochs, epochs[1:])
                   if e in loss and p in loss}

    shifts, shift_rows = {}, []
    prev = np.load(rd.path / f"z.{epochs[0]}.npy")
    for i, e in enumerate(epochs[1:], 1):
        cur = np.load(rd.path / f"z.{e}.npy")
        s = latent_shift_stats(prev, cur)
        shifts[e] = s["median_relative_shift"]
        shift_rows.append({"epoch": e, **s})
        prev = cur
        yield Progress(i, len(epochs), "latent shifts")

    evals = [e for e in epochs if e % every == 0 or e == epochs[-1]]
    last = load_vae_run(rd.path, epochs[-1])
    markers = marker_particles(last.z, n_markers)
    maps_prev, map_rows, map_cc = None, [], {}
    for j, e in enumerate(evals):
        r = load_vae_run(rd.path, e)
        maps = r.generate_volumes(r.z[markers], D)
        if maps_prev is not None:
            ag = [map_agreement(a, b) for a, b in zip(maps_prev, maps)]
            row = {"epoch": e, **{k: float(np.mean([a[k] for a in ag])) for k in ("cc", "fsc_auc", "fsc_nyquist")}}
            map_rows.append(row)
            map_cc[e] = row["cc"]
        maps_prev = maps
        yield Progress(j + 1, len(evals), "marker maps")

    verdict, reason = looks_converged(epochs, loss_change, shifts, map_cc, loss_tol, shift_tol, cc_tol)
    result = {"run": str(rd.path), "epochs": epochs, "loss": loss, "loss_relative_change": loss_change,
              "latent_shifts": shift_rows, "marker_particles": markers.tolist(), "map_agreement": map_rows,
              "looks_converged_from_epoch": verdict, "reasoning": reason,
              "criteria": {"loss_tol": loss_tol, "shift_tol": shift_tol, "cc_tol": cc_tol, "every": every}}
    write_text_atomic(out / "convergence.json", json.dumps(result, indent=1))
    yield Artifact("table", out / "convergence.json")
    for name, fn in (("loss.png", _plot_loss), ("latent_shifts.png", _plot_shifts), ("maps.png", _plot_maps)):
        fn(out / name, result)
        yield Artifact("plot", out / name)
    yield Log("info", reason)
    return result


def _save(fig, path):
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _plot_loss(path, res):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(list(res["loss"].keys()), list(res["loss"].values()), "o-")
    if res["looks_converged_from_epoch"]:
        ax.axvline(res["looks_converged_from_epoch"], color="g", ls="--", label="looks converged")
        ax.legend()
    ax.set(xlabel="epoch", ylabel="total loss", title="training loss")
    fig.tight_layout()
    _save(fig, path)


def _plot_shifts(path, res):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["latent_shifts"]
    fig, ax = plt.subplots(1, 2, figsize=(8, 3.5))
    ax[0].plot([r["epoch"] for r in rows], [r["median_relative_shift"] for r in rows], "o-")
    ax[0].set(xlabel="epoch", ylabel="median |Δz| / median |z|", yscale="log")
    ax[1].plot([r["epoch"] for r in rows], [r["median_cosine"] for r in rows], "o-")
    ax[1].set(xlabel="epoch", ylabel="median cosine(z_e, z_e−1)")
    fig.tight_layout()
    _save(fig, path)


def _plot_maps(path, res):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["map_agreement"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key in ("cc", "fsc_auc", "fsc_nyquist"):
        ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], "o-", label=key)
    ax.set(xlabel="epoch", ylabel="agreement with previous evaluated epoch", title="marker maps")
    ax.legend()
    fig.tight_layout()
    _save(fig, path)
