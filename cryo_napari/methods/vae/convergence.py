"""Convergence diagnostics of a VAE run (cryoDRGN protocol, Box 1), as a job.

From the complete epochs of a run:

- total-loss curve (``loss.png``) from ``metrics.jsonl``;
- per-particle latent shifts between consecutive epochs: median ``|z_e − z_{e−1}|`` (also
  relative to the median ``|z_e|``), median cosine similarity and mean dot product of z_e and
  z_{e−1}; and, as cryoDRGN's ``analyze_convergence``, the median dot product and cosine distance
  of consecutive shift vectors (``latent_shifts.png``);
- a 2-D embedding (UMAP, or PCA with ``embedding="pca"``) of a particle subset (≤ ``subset``) at
  every evaluated epoch (``embeddings.png``, ``embeddings/emb.METHOD.N.npy``, reused by later checks
  of a growing run when the subset is the same);
- marker particle sets from the local maxima of the last evaluated epoch's embedding density
  (30 bins per axis, Gaussian smoothing of 1 bin, greedy pruning to 12, the 10 highest kept;
  :mod:`cryo_napari.analysis.sketch`, ``sketch.png``), followed back through the evaluated epochs
  as the on-data median latent of each set; maps generated there, masked (threshold at half the
  99.99th percentile, dilated 3 px, soft edge 10 px, as cryoDRGN), and compared between
  consecutive evaluated epochs: real-space correlation, FSC AUC and FSC at Nyquist (``maps.png``);
- ``convergence.json`` with all numbers and a "looks converged from epoch N" verdict.

Heuristic (stated in the JSON): the run looks converged from the first evaluated epoch ``N`` such
that every later step satisfies all of: loss change < ``loss_tol`` (relative, per epoch), median
relative latent shift < ``shift_tol``, and mean marker-map correlation between consecutive
evaluated epochs > ``cc_tol``. The verdict is ``null`` when no such epoch exists (train longer).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from cryo_napari.errors import InputError
from cryo_napari.jobs.atomic import atomic_path, save_npy_atomic, write_text_atomic
from cryo_napari.jobs.protocol import Artifact, Job, Log, Metric, Progress
from cryo_napari.jobs.rundir import RunDir


def latent_shift_stats(z0: np.ndarray, z1: np.ndarray, z_before: np.ndarray | None = None) -> dict:
    """Per-particle change between two (N, zdim) latent arrays of consecutive epochs; with the epoch
    before ``z0`` also the median dot product and cosine distance of the shifts z0 − z_before and
    z1 − z0 (cryoDRGN's vector metrics: near 0 dot and cosine distance ≈ 1 when shifts are noise)."""
    d = np.linalg.norm(z1 - z0, axis=1)
    n0, n1 = np.linalg.norm(z0, axis=1), np.linalg.norm(z1, axis=1)
    dot = (z0 * z1).sum(1)
    cos = dot / np.maximum(n0 * n1, 1e-12)
    med = float(np.median(d))
    out = {"median_shift": med, "median_relative_shift": med / max(float(np.median(n1)), 1e-12),
           "median_cosine": float(np.median(cos)), "mean_dot": float(dot.mean())}
    if z_before is not None:
        a, b = z0 - z_before, z1 - z0
        ab = (a * b).sum(1)
        out["median_shift_dot"] = float(np.median(ab))
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        out["median_shift_cosine_distance"] = float(np.median(1 - ab / np.maximum(na * nb, 1e-12)))
    return out


def embed_2d(z: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """(N, 2) embedding of latents ``z`` (N, zdim): ``umap`` (umap-learn) or ``pca``."""
    from cryo_napari.analysis.embedding import run_pca, run_umap

    if z.shape[1] == 1:
        return np.concatenate([z, np.zeros_like(z)], axis=1).astype(np.float32)
    if method == "umap":
        return run_umap(z, seed=seed)
    if method == "pca":
        return run_pca(z, 2).scores
    raise InputError(None, f"unknown embedding {method!r} (umap, pca)")


def soft_mask_like_cryodrgn(vol: np.ndarray) -> np.ndarray | None:
    """Loose mask of a (D, D, D) map: above half its 99.99th percentile, dilated 3 px, soft edge 10 px
    (cryoDRGN's analyze_convergence defaults); None when nothing is above the threshold."""
    from cryo_napari.geometry.masks import threshold_mask_3d

    thr = float(np.percentile(vol, 99.99)) / 2
    try:
        return threshold_mask_3d(vol, thr, dilate_px=3.0, soft_px=10.0) if thr > 0 else None
    except ValueError:
        return None


def map_agreement(a: np.ndarray, b: np.ndarray, masked: bool = False) -> dict:
    """Correlation, FSC AUC and FSC at Nyquist of two (D, D, D) maps; ``masked`` first multiplies both
    by the loose mask of their mean (:func:`soft_mask_like_cryodrgn`)."""
    from cryo_napari.geometry.fsc import fsc, fsc_auc

    if masked:
        mask = soft_mask_like_cryodrgn((a + b) / 2)
        if mask is not None:
            a, b = a * mask, b * mask
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


def convergence_job(run_dir, every: int = 5, n_markers: int = 10, D: int | None = None, out=None,
                    loss_tol: float = 0.005, shift_tol: float = 0.1, cc_tol: float = 0.99, embedding: str = "umap",
                    subset: int = 50_000, seed: int = 0) -> Job:
    """Analyse ``run_dir``; writes into ``out`` (default RUN/convergence). Returns the JSON dict.

    Embeddings and marker maps are made at every ``every``-th complete epoch and the last one; the
    embedding (``umap`` or ``pca``) uses a random subset of at most ``subset`` particles (``seed``).
    """
    from cryo_napari.analysis.sketch import follow_marker_sets, sketch_by_local_maxima
    from cryo_napari.methods.vae.eval import load_vae_run

    if embedding not in ("umap", "pca"):
        raise InputError(None, f"unknown embedding {embedding!r} (umap, pca)")
    if every < 1 or n_markers < 1 or subset < 2:
        raise InputError(None, "--every and --markers must be ≥ 1 and --subset ≥ 2")
    rd = RunDir(run_dir)
    rd.read_config()
    epochs = [e for e in rd.complete_steps("weights", "pt") if e in set(rd.complete_steps("z", "npy"))]
    if len(epochs) < 2:
        raise InputError(rd.path, f"convergence needs at least 2 complete epochs, found {len(epochs)}")
    out = Path(out) if out else rd.path / "convergence"
    (out / "embeddings").mkdir(parents=True, exist_ok=True)
    metrics = {m["epoch"]: m for m in rd.read_metrics()}
    loss = {e: metrics[e]["loss"] for e in epochs if e in metrics}
    loss_change = {e: abs(loss[e] - loss[p]) / max(abs(loss[p]), 1e-12) for p, e in zip(epochs, epochs[1:])
                   if e in loss and p in loss}

    shifts, shift_rows = {}, []
    before, prev = None, np.load(rd.path / f"z.{epochs[0]}.npy")
    for i, e in enumerate(epochs[1:], 1):
        cur = np.load(rd.path / f"z.{e}.npy")
        s = latent_shift_stats(prev, cur, before)
        shifts[e] = s["median_relative_shift"]
        shift_rows.append({"epoch": e, **s})
        yield Metric("median_relative_latent_shift", s["median_relative_shift"], e)
        before, prev = prev, cur
        yield Progress(i, len(epochs), "latent shifts")

    evals = [e for e in epochs if e % every == 0 or e == epochs[-1]]
    if embedding == "umap" and importlib.util.find_spec("umap") is None:
        embedding = "pca"
        yield Log("warning", "umap-learn is not installed (pip install umap-learn): markers from a PCA embedding")
    n = len(prev)
    sub = np.sort(np.random.default_rng(seed).choice(n, min(n, subset), replace=False))
    emb = {}
    subset_file = out / "embeddings" / "subset.npy"
    reuse = subset_file.exists() and np.array_equal(np.load(subset_file), sub)
    save_npy_atomic(subset_file, sub)
    for j, e in enumerate(evals):
        path = out / "embeddings" / f"emb.{embedding}.{e}.npy"  # kept for later checks of a growing run
        if reuse and path.exists():  # written atomically: present means complete
            emb[e] = np.load(path)
        else:
            emb[e] = embed_2d(np.load(rd.path / f"z.{e}.npy")[sub], embedding, seed)
            save_npy_atomic(path, emb[e])
        yield Progress(j + 1, len(evals), f"{embedding.upper()} of the latents")
    sketch = sketch_by_local_maxima(emb[evals[-1]], n_final=n_markers)
    yield Log("info", f"{sketch.n_found} local maxima of the epoch-{evals[-1]} {embedding.upper()} density, "
                      f"{sketch.members.shape[1]} kept as markers")
    maps_prev, map_rows, map_cc, marker_rows = None, [], {}, []
    for j, e in enumerate(evals):
        r = load_vae_run(rd.path, e)
        z_mark, ind = follow_marker_sets(r.z[sub], sketch.members)
        marker_rows.append({"epoch": e, "particles": sub[ind].tolist()})
        maps = r.generate_volumes(z_mark, D)
        if maps_prev is not None:
            ag = [map_agreement(a, b, masked=True) for a, b in zip(maps_prev, maps)]
            row = {"epoch": e, **{k: float(np.mean([a[k] for a in ag])) for k in ("cc", "fsc_auc", "fsc_nyquist")},
                   "cc_per_marker": [a["cc"] for a in ag]}
            map_rows.append(row)
            map_cc[e] = row["cc"]
            yield Metric("marker_map_cc", row["cc"], e)
        maps_prev = maps
        yield Progress(j + 1, len(evals), "marker maps")

    verdict, reason = looks_converged(epochs, loss_change, shifts, map_cc, loss_tol, shift_tol, cc_tol)
    result = {"run": str(rd.path), "epochs": epochs, "evaluated_epochs": evals, "loss": loss,
              "loss_relative_change": loss_change, "latent_shifts": shift_rows,
              "embedding": {"method": embedding, "particles": int(len(sub)), "seed": seed},
              "markers": {"from_epoch": evals[-1], "local_maxima_found": sketch.n_found,
                          "set_sizes": sketch.members.sum(0).tolist(), "per_epoch": marker_rows},
              "marker_particles": marker_rows[-1]["particles"], "map_agreement": map_rows,
              "looks_converged_from_epoch": verdict, "reasoning": reason,
              "criteria": {"loss_tol": loss_tol, "shift_tol": shift_tol, "cc_tol": cc_tol, "every": every,
                           "maps": "masked (cryoDRGN mask), mean over markers"}}
    write_text_atomic(out / "convergence.json", json.dumps(result, indent=1))
    yield Artifact("table", out / "convergence.json")
    for name, fn in (("loss.png", _plot_loss), ("latent_shifts.png", _plot_shifts), ("maps.png", _plot_maps)):
        fn(out / name, result)
        yield Artifact("plot", out / name)
    _plot_embeddings(out / "embeddings.png", emb, sketch, {r["epoch"]: r["particles"] for r in marker_rows}, sub,
                     embedding)
    _plot_sketch(out / "sketch.png", emb[evals[-1]], sketch, evals[-1], embedding)
    yield Artifact("plot", out / "embeddings.png")
    yield Artifact("plot", out / "sketch.png")
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
    ep = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(1, 3, figsize=(11, 3.5))
    ax[0].plot(ep, [r["median_relative_shift"] for r in rows], "o-")
    ax[0].set(xlabel="epoch", ylabel="median |Δz| / median |z|", yscale="log")
    ax[1].plot(ep, [r["median_cosine"] for r in rows], "o-")
    ax[1].set(xlabel="epoch", ylabel="median cosine(z_e, z_e−1)")
    vec = [r for r in rows if "median_shift_dot" in r]
    ax[2].plot([r["epoch"] for r in vec], [r["median_shift_cosine_distance"] for r in vec], "o-",
               label="cosine distance")
    ax[2].plot([r["epoch"] for r in vec], [r["median_shift_dot"] for r in vec], "s-", label="dot product")
    ax[2].set(xlabel="epoch", ylabel="consecutive shift vectors (median)")
    ax[2].legend()
    fig.tight_layout()
    _save(fig, path)


def _plot_embeddings(path, emb: dict, sketch, marker_particles: dict, sub, method: str):
    """Grid of the embedding at each evaluated epoch with the marker particles (labelled A, B, …)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos = {int(p): i for i, p in enumerate(sub)}
    n = len(emb)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols, 2.6 * rows), squeeze=False)
    for ax, (e, xy) in zip(axes.flat, emb.items()):
        ax.hexbin(xy[:, 0], xy[:, 1], gridsize=40, bins="log", mincnt=1, cmap="magma_r")
        mk = xy[[pos[p] for p in marker_particles[e]]]
        ax.scatter(mk[:, 0], mk[:, 1], s=12, c="tab:blue")
        for k, (x, y) in enumerate(mk):
            ax.annotate(chr(65 + k), (x, y), fontsize=8, color="tab:blue")
        ax.set_title(f"epoch {e}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"{method.upper()} of the latents; markers followed from the last epoch", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def _plot_sketch(path, xy, sketch, epoch: int, method: str):
    """Histogram, smoothed histogram with the kept maxima, and the sketched embedding."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(11, 3.5))
    ax[0].imshow(sketch.hist.T, origin="lower", cmap="magma_r")
    ax[0].set_title(f"epoch {epoch} {method.upper()} histogram", fontsize=9)
    ax[1].imshow(sketch.hist_smooth.T, origin="lower", cmap="magma_r")
    ax[1].scatter(sketch.peak_bins[:, 0], sketch.peak_bins[:, 1], s=14, c="tab:blue")
    ax[1].set_title(f"smoothed; {sketch.n_found} maxima, {len(sketch.peak_values)} kept", fontsize=9)
    ax[2].hexbin(xy[:, 0], xy[:, 1], gridsize=40, bins="log", mincnt=1, cmap="magma_r")
    ax[2].scatter(sketch.centers[:, 0], sketch.centers[:, 1], s=14, c="tab:blue")
    for k, (x, y) in enumerate(sketch.centers):
        ax[2].annotate(chr(65 + k), (x, y), fontsize=8, color="tab:blue")
    ax[2].set_title("markers (median of each maximum's 3×3 bins)", fontsize=9)
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
