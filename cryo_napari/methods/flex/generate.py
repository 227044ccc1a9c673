"""3DFlex "Generator": volume series along latent axes or a user path, from a trained run.

Along axis ``k`` the latent goes from ``−a_k`` to ``+a_k`` in an odd number of frames (the middle
frame is the zero latent, i.e. the canonical map), with ``a_k`` the 98th percentile of ``|z_k|``
over the particles (so the series spans the data). ``path``: an (F, K) array of latents instead.
``highres``: a map at another box (e.g. the full-box consensus); the flow is evaluated at its box
(the piecewise-linear mesh flow sampled at every high-resolution voxel, i.e. upsampled exactly)
and scaled by ``N_hi / D`` before convecting it.

Outputs in ``out``: ``<name>_<frame>.mrc`` (frames, 3 digits), ``series.npy`` (F, D, D, D),
``series.json`` (voxel size, latents (F, K), the checkpoint epoch, and ``segment_motion``: per
frame and mesh segment the rigid motion that best carries the segment's canonical content to that
frame, :func:`segment_motions`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from cryo_napari.errors import InputError
from cryo_napari.io.mrc import read_mrc, write_mrc
from cryo_napari.jobs.atomic import save_npy_atomic, write_text_atomic
from cryo_napari.jobs.protocol import Artifact, Job, Log, Progress
from cryo_napari.methods.flex.mesh import TetraMesh
from cryo_napari.methods.flex.mesh_voxels import voxel_barycentrics
from cryo_napari.methods.flex.model import FlexModel, convect, flow_from_displacements


def axis_paths(z: np.ndarray, frames: int) -> list[np.ndarray]:
    """One (frames, K) latent path per axis, symmetric about 0 (``frames`` odd)."""
    if frames < 1 or frames % 2 == 0:
        raise InputError("--frames", f"must be a positive odd number (zero latent in the middle), got {frames}")
    K = z.shape[1]
    out = []
    for k in range(K):
        a = float(np.percentile(np.abs(z[:, k]), 98)) or 1.0
        p = np.zeros((frames, K), np.float32)
        p[:, k] = np.linspace(-a, a, frames)
        out.append(p)
    return out


def flow_at_box(model: FlexModel, mesh: TetraMesh, z: torch.Tensor, box: int) -> torch.Tensor:
    """Flow (B, 3, box, box, box) in voxels of ``box`` for latents ``z`` (B, K)."""
    disp = model.displacements(z)  # voxels of the training box
    if box == model.D:
        return model.flow_field(disp)
    idx, cell, bary = voxel_barycentrics(mesh, box)
    verts = torch.as_tensor(mesh.cells[cell])
    return flow_from_displacements(disp * (box / model.D), torch.as_tensor(idx), verts,
                                   torch.as_tensor(bary, dtype=torch.float32), box)


def convect_spline(coeffs: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Convected map ``V(x − u(x))`` by cubic B-spline interpolation: ``coeffs`` (D, D, D), the
    spline coefficients of V (``scipy.ndimage.spline_filter(V, 3)``); flow (3, D, D, D), xyz
    components in voxels, ``[z, y, x]`` indices. Returns (D, D, D) float32; zero outside the box.

    :func:`~cryo_napari.methods.flex.model.convect` (trilinear, differentiable) is what training
    and reconstruction use; trilinear sampling at a sub-voxel shift damps high frequencies
    (to ≈ 0.4 of the amplitude at Nyquist for a half-voxel shift), which a written map need not.
    """
    from scipy import ndimage

    D = coeffs.shape[-1]
    grid = np.indices((D, D, D), dtype=np.float32)  # (z, y, x)
    src = grid - flow[::-1]  # flow channels are (x, y, z)
    return ndimage.map_coordinates(coeffs, src, order=3, prefilter=False, mode="constant").astype(np.float32)


@torch.no_grad()
def generate_series(model: FlexModel, mesh: TetraMesh, latents: np.ndarray, vol: np.ndarray | None = None,
                    batch: int = 4, interp: str = "cubic") -> np.ndarray:
    """Convected maps (F, D, D, D) for latents (F, K); ``vol`` defaults to the canonical map.

    ``interp``: "cubic" (B-spline, :func:`convect_spline`; keeps the high-resolution detail of the
    map where it moves) or "linear" (trilinear, as in training; faster on large boxes).
    """
    if interp not in ("cubic", "linear"):
        raise InputError("--interp", f"must be 'cubic' or 'linear', got {interp!r}")
    V = model.V.detach() if vol is None else torch.as_tensor(np.asarray(vol, np.float32))
    box = V.shape[-1]
    coeffs = None
    if interp == "cubic":
        from scipy import ndimage

        coeffs = ndimage.spline_filter(V.numpy().astype(np.float64), order=3)
    out = np.empty((len(latents), box, box, box), np.float32)
    for b in range(0, len(latents), batch):
        z = torch.as_tensor(latents[b : b + batch], dtype=torch.float32)
        flow = flow_at_box(model, mesh, z, box)
        if coeffs is None:
            out[b : b + batch] = convect(V, flow).numpy()
        else:
            for i, f in enumerate(flow.numpy()):
                out[b + i] = convect_spline(coeffs, f)
    return out


def segment_motions(model: FlexModel, mesh: TetraMesh, latents: np.ndarray, apix: float) -> list[dict]:
    """Rigid-body summary of the flow, per frame and per mesh segment (one segment without ``--segments``).

    A vertex at ``p`` (training-box voxels) shows the canonical content from ``p − u(p)``
    (convection ``V(x − u(x))``), so each segment's vertices give point pairs ``p − u → p`` and
    :func:`~cryo_napari.geometry.rotations.fit_rigid_motion` the rotation that best explains them.

    Returns one dict per frame: ``{"segments": [{"segment", "rotation_deg", "axis" (unit xyz, map
    frame; right-handed about it), "centroid_shift_A", "nonrigid_rms_A", "max_shift_A"}, ...]}``.
    ``nonrigid_rms_A`` is what no rigid motion of the segment explains (shear, stretch); Å use
    ``apix``, the training box's pixel size.
    """
    from scipy.spatial.transform import Rotation

    from cryo_napari.geometry.rotations import fit_rigid_motion
    from cryo_napari.methods.flex.model import mesh_points_in_box

    P = mesh_points_in_box(mesh, model.D)
    with torch.no_grad():
        U = model.displacements(torch.as_tensor(np.asarray(latents, np.float32))).numpy()
    segs = np.asarray(mesh.cell_segment)
    verts = {int(s): np.unique(np.asarray(mesh.cells)[segs == s]) for s in np.unique(segs)}
    out = []
    for u in U:
        rows = []
        for s, v in verts.items():
            R, _, rms = fit_rigid_motion(P[v] - u[v], P[v])
            rv = Rotation.from_matrix(R).as_rotvec()
            ang = float(np.degrees(np.linalg.norm(rv)))
            axis = rv / np.linalg.norm(rv) if ang > 1e-9 else np.zeros(3)
            rows.append({"segment": s, "rotation_deg": round(ang, 3), "axis": np.round(axis, 4).tolist(),
                         "centroid_shift_A": round(float(np.linalg.norm(u[v].mean(0))) * apix, 3),
                         "nonrigid_rms_A": round(rms * apix, 3),
                         "max_shift_A": round(float(np.linalg.norm(u[v], axis=1).max()) * apix, 3)})
        out.append({"segments": rows})
    return out


def flex_generate_job(run, out, frames: int = 41, path=None, highres=None, epoch: int | None = None,
                      refined: bool = False, interp: str = "cubic") -> Job:
    """Write volume series (module docstring). Returns {"series": [paths of series.npy], "epoch"}."""
    from cryo_napari.methods.flex.train import load_latents, load_trained

    model, cfg, step = load_trained(run, epoch)
    mesh = TetraMesh.from_pickle(cfg["mesh"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    apix = float(mesh.psize_A) * mesh.N / model.D
    train_apix = apix
    vol = None
    if highres is not None:
        vol, apix = read_mrc(highres)
        if vol.ndim != 3 or len(set(vol.shape)) != 1 or vol.shape[0] % 2:
            raise InputError(highres, f"expected a cubic map with an even box, got {vol.shape}")
    z = load_latents(run, step, refined)  # the axes span the data (98th percentile)
    if path is not None:
        lat = np.load(path) if isinstance(path, (str, Path)) else np.asarray(path)
        lat = np.atleast_2d(np.asarray(lat, np.float32))
        if lat.shape[1] != model.K:
            raise InputError(path if isinstance(path, (str, Path)) else None,
                             f"latent path has {lat.shape[1]} dims, the model has {model.K}")
        series = {"path": lat}
    else:
        series = {f"axis{k + 1}": p for k, p in enumerate(axis_paths(z, frames))}
    written = []
    total = sum(len(p) for p in series.values())
    done = 0
    yield Progress(0, total, "generating")
    for name, lat in series.items():
        sub = out / name if len(series) > 1 else out
        sub.mkdir(parents=True, exist_ok=True)
        vols = generate_series(model, mesh, lat, vol, interp=interp)
        for f, v in enumerate(vols):
            write_mrc(sub / f"{name}_{f:03d}.mrc", v, apix)
            done += 1
            yield Progress(done, total, name)
        save_npy_atomic(sub / "series.npy", vols)
        motion = segment_motions(model, mesh, lat, train_apix)
        write_text_atomic(sub / "series.json", json.dumps({
            "voxel_size_A": apix, "latents": lat.tolist(), "epoch": step, "run": str(Path(run).resolve()),
            "map": str(highres) if highres else "canonical", "interp": interp, "segment_motion": motion}, indent=1))
        for j, row in enumerate(motion[0]["segments"]):  # every frame lists the segments in one order
            top = max(m["segments"][j]["rotation_deg"] for m in motion)
            yield Log("info", f"{name}: segment {row['segment']} rotates up to {top:.1f}° from the canonical map "
                              f"(rigid fit of its mesh vertices; series.json segment_motion)")
        written.append(sub / "series.npy")
        yield Artifact("series", sub / "series.npy")
    yield Log("info", f"{total} frames from epoch {step} in {out}")
    return {"series": written, "epoch": step}
