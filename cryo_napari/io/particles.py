"""One particle dataset from any input users have: RELION ``.star``, cryoSPARC ``.cs``, or a
stack (``.mrcs`` / ``.txt`` list) with cryoDRGN ``poses.pkl`` / ``ctf.pkl``.

All conventions are converted once here (see :mod:`cryo_napari.geometry.rotations`): rotations
are our (RELION) matrices, shifts are origin shifts in image pixels, CTF angles in radians.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryo_napari.errors import InputError
from cryo_napari.geometry.ctf import CTFParams
from cryo_napari.geometry.rotations import cryosparc_pose_to_matrix, relion_euler_to_matrix
from cryo_napari.io import cryodrgn as drgn
from cryo_napari.io.cryosparc import alignment_prefix, cs_shift_scale, read_cs
from cryo_napari.io.stacks import ImageSource
from cryo_napari.io.star import merged_column, pixel_size_from_star, read_star_tables


@dataclass
class ParticleData:
    """Particles with their images, poses and CTF.

    Attributes
    ----------
    path : metadata file (``.star``, ``.cs``) or stack.
    kind : ``"star"``, ``"cs"`` or ``"stack"``.
    images : lazy :class:`ImageSource`, or None when loaded with ``with_images=False``.
    box : image box in pixels.
    apix : (N,) pixel size in Å.
    rotations : (N, 3, 3) or None.
    shifts_px : (N, 2) origin shifts in pixels (zeros when absent).
    ctf : :class:`CTFParams` or None.
    image_sign : (N,) +1/−1 multiplied into images on reading (cryoSPARC ``blob/sign``).
    scale : (N,) per-particle scale (cryoSPARC ``alpha``, else 1).
    optics_group : (N,) int.
    half : (N,) int 0/1 half-set, or None.
    source_index : (N,) row of each particle in the metadata file (kept through subsets).
    """

    path: Path
    kind: str
    images: ImageSource | None
    box: int
    apix: np.ndarray
    rotations: np.ndarray | None
    shifts_px: np.ndarray
    ctf: CTFParams | None
    image_sign: np.ndarray
    scale: np.ndarray
    optics_group: np.ndarray
    half: np.ndarray | None = None
    source_index: np.ndarray = field(default=None)

    def __post_init__(self):
        if self.source_index is None:
            self.source_index = np.arange(len(self.apix))

    def __len__(self) -> int:
        return len(self.apix)

    @property
    def D(self) -> int:
        return self.box

    def read_images(self, ind=None) -> np.ndarray:
        """Images ``ind`` (float32 (n, D, D)) with the data sign applied."""
        if self.images is None:
            raise InputError(self.path, "images were not loaded (metadata only)")
        ind = np.arange(len(self)) if ind is None else np.atleast_1d(np.asarray(ind))
        imgs = self.images.read(ind)
        sign = self.image_sign[ind]
        if (sign != 1).any():
            imgs *= sign[:, None, None].astype(np.float32)
        return imgs

    def subset(self, ind) -> "ParticleData":
        """Particles ``ind`` (index array), keeping their source rows."""
        ind = np.asarray(ind)
        if ind.dtype == bool:
            ind = np.nonzero(ind)[0]
        if len(ind) and (ind.min() < 0 or ind.max() >= len(self)):
            raise InputError(self.path, f"index {ind.max() if ind.max() >= len(self) else ind.min()} out of range for {len(self)} particles")
        return ParticleData(
            self.path, self.kind, None if self.images is None else self.images.subset(ind), self.box,
            self.apix[ind],
            None if self.rotations is None else self.rotations[ind], self.shifts_px[ind],
            None if self.ctf is None else self.ctf.subset(ind), self.image_sign[ind], self.scale[ind],
            self.optics_group[ind], None if self.half is None else self.half[ind], self.source_index[ind],
        )


def _finite_or_fail(path, name, arr):
    if arr is not None and not np.isfinite(arr).all():
        bad = np.nonzero(~np.isfinite(np.asarray(arr).reshape(len(arr), -1)).all(axis=1))[0]
        raise InputError(path, f"{name} is NaN or infinite for {len(bad)} particle(s) (first: row {bad[0] + 1})")


def load_star(path, datadir=None, with_images=True) -> ParticleData:
    """Particles of a RELION STAR file (3.0, 3.1+, several optics groups)."""
    path = Path(path)
    particles, optics = read_star_tables(path)
    n = len(particles)
    if n == 0:
        raise InputError(path, "no particles")
    if "rlnImageName" not in particles.columns:
        raise InputError(path, "missing column rlnImageName")
    images = None
    if with_images:
        images = ImageSource.from_references(particles["rlnImageName"], path.parent, datadir, path)

    def col(name):
        try:
            return merged_column(particles, optics, name)
        except KeyError as exc:
            raise InputError(path, str(exc.args[0])) from None

    try:
        apix = pixel_size_from_star(particles, optics)
    except KeyError as exc:
        raise InputError(path, str(exc.args[0])) from None
    if apix is None:
        if optics is not None and len(optics) > 1:
            raise InputError(path, "several optics groups but no rlnImagePixelSize")
        apix = np.full(n, images.apix_header if images is not None else np.nan)
    if images is not None:
        _finite_or_fail(path, "pixel size", apix)
    box = col("rlnImageSize")
    if images is not None:
        box_i = images.D
        if box is not None and np.isfinite(box).all() and (box != box_i).any():
            raise InputError(path, f"rlnImageSize {int(box[0])} differs from the stack box {box_i}")
        box = box_i
    else:
        box = int(box[0]) if box is not None and np.isfinite(box[0]) else 0

    rotations = None
    angle_cols = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    present = [c for c in angle_cols if c in particles.columns]
    if present:
        if len(present) < 3:
            missing = sorted(set(angle_cols) - set(present))
            raise InputError(path, f"missing column(s) {', '.join(missing)}")
        euler = np.stack([col(c) for c in angle_cols], axis=1)
        _finite_or_fail(path, "Euler angle", euler)
        rotations = relion_euler_to_matrix(euler)

    shifts = np.zeros((n, 2))
    if "rlnOriginXAngst" in particles.columns:
        shifts = np.stack([col("rlnOriginXAngst"), col("rlnOriginYAngst")], axis=1) / apix[:, None]
    elif "rlnOriginX" in particles.columns:
        shifts = np.stack([col("rlnOriginX"), col("rlnOriginY")], axis=1)
    _finite_or_fail(path, "origin shift", shifts)

    ctf = None
    if "rlnDefocusU" in particles.columns:
        dfu = col("rlnDefocusU")
        dfv = col("rlnDefocusV")
        dfv = dfu if dfv is None else dfv
        ang = col("rlnDefocusAngle")
        kv, cs, w = col("rlnVoltage"), col("rlnSphericalAberration"), col("rlnAmplitudeContrast")
        if w is None:  # RELION's CTF reader uses Q0 = 0 when the column is absent
            w = np.zeros(n)
        for name, v in (("rlnVoltage", kv), ("rlnSphericalAberration", cs)):
            if v is None:
                raise InputError(path, f"CTF given but {name} is missing")
        ps = col("rlnPhaseShift")
        bf = col("rlnCtfBfactor")
        ctf = CTFParams(dfu, dfv, np.deg2rad(0.0 if ang is None else ang), kv, cs, w,
                        np.deg2rad(0.0 if ps is None else ps), 0.0 if bf is None else bf)
        for name in ("defocus_u_A", "defocus_v_A", "astig_angle_rad", "voltage_kV"):
            _finite_or_fail(path, name.replace("_", " "), getattr(ctf, name))

    og = particles["rlnOpticsGroup"].astype(int).to_numpy() if "rlnOpticsGroup" in particles.columns else np.ones(n, int)
    half = None
    if "rlnRandomSubset" in particles.columns:
        rs = pd_int(particles["rlnRandomSubset"])
        if rs is not None and set(np.unique(rs)) <= {1, 2}:
            half = rs - 1
    return ParticleData(path, "star", images, int(box), np.asarray(apix, np.float64), rotations, shifts, ctf,
                        np.ones(n), np.ones(n), og, half)


def pd_int(series):
    try:
        return series.astype(int).to_numpy()
    except (ValueError, TypeError):
        return None


def load_cs(path, datadir=None, with_images=True) -> ParticleData:
    """Particles of a cryoSPARC ``.cs`` file."""
    path = Path(path)
    data = read_cs(path)
    names = data.dtype.names
    n = len(data)
    if n == 0:
        raise InputError(path, "no particles")
    for f in ("blob/path", "blob/idx"):
        if f not in names:
            raise InputError(path, f"missing field {f}")
    try:
        raw = data["blob/path"]
        paths = np.char.decode(raw.astype(bytes)) if raw.dtype.kind == "S" else raw.astype(str)
    except (UnicodeDecodeError, ValueError, TypeError):
        raise InputError(path, "blob/path holds non-text values") from None
    uniq, inverse = np.unique(paths, return_inverse=True)
    from cryo_napari.io.stacks import resolve_stack_path

    images = None
    box = int(np.asarray(data["blob/shape"])[0, -1]) if "blob/shape" in names else 0
    if with_images:
        files = [resolve_stack_path(u, path.parent, datadir, path) for u in uniq]
        images = ImageSource(files, inverse, data["blob/idx"].astype(np.int64), metadata=path)
        if "blob/shape" in names:
            shp = np.asarray(data["blob/shape"])
            if (shp[:, -1] != images.D).any():
                raise InputError(path, f"blob/shape {tuple(shp[0])} does not match the stack box {images.D}")
        box = images.D
    apix = (data["blob/psize_A"].astype(np.float64) if "blob/psize_A" in names
            else np.full(n, images.apix_header if images is not None else np.nan))

    rotations, shifts, scale, half = None, np.zeros((n, 2)), np.ones(n), None
    prefix = alignment_prefix(data)
    if prefix is not None:
        pose = data[f"{prefix}/pose"].astype(np.float64)
        _finite_or_fail(path, f"{prefix}/pose", pose)
        rotations = cryosparc_pose_to_matrix(pose)
        if f"{prefix}/shift" in names:
            shifts = data[f"{prefix}/shift"].astype(np.float64) * cs_shift_scale(data, prefix)[:, None]
            _finite_or_fail(path, f"{prefix}/shift", shifts)
        if f"{prefix}/alpha" in names:
            scale = data[f"{prefix}/alpha"].astype(np.float64)
        if f"{prefix}/split" in names:
            sp = data[f"{prefix}/split"].astype(int)
            if set(np.unique(sp)) <= {0, 1}:
                half = sp

    ctf = None
    if "ctf/df1_A" in names:
        g = lambda k, d=0.0: data[k].astype(np.float64) if k in names else np.full(n, d)  # noqa: E731
        ctf = CTFParams(g("ctf/df1_A"), g("ctf/df2_A"), g("ctf/df_angle_rad"), g("ctf/accel_kv", 300.0),
                        g("ctf/cs_mm", 2.7), g("ctf/amp_contrast", 0.1), g("ctf/phase_shift_rad"), g("ctf/bfactor"))
        _finite_or_fail(path, "ctf/df1_A", ctf.defocus_u_A)
    sign = data["blob/sign"].astype(np.float64) if "blob/sign" in names else np.ones(n)
    og = data["ctf/exp_group_id"].astype(int) if "ctf/exp_group_id" in names else np.ones(n, int)
    return ParticleData(path, "cs", images, box, apix, rotations, shifts, ctf, sign, scale, og, half)


def load_stack(path, poses=None, ctf=None) -> ParticleData:
    """A stack (``.mrcs``/``.mrc``/``.txt``) with optional cryoDRGN poses.pkl and ctf.pkl."""
    path = Path(path)
    images = ImageSource.from_stack(path)
    n = len(images)
    rotations, shifts = None, np.zeros((n, 2))
    if poses is not None:
        rotations, shifts = drgn.read_poses_pkl(poses, images.D)
        if len(rotations) != n:
            raise InputError(poses, f"{len(rotations)} poses for {n} images in {path.name}")
    ctf_params, apix = None, np.full(n, images.apix_header)
    if ctf is not None:
        ctf_params, Ds, apix = drgn.read_ctf_pkl(ctf)
        if len(ctf_params) != n:
            raise InputError(ctf, f"{len(ctf_params)} CTF rows for {n} images in {path.name}")
        if (Ds != images.D).any():
            raise InputError(ctf, f"CTF box {int(Ds[0])} differs from the stack box {images.D}")
    return ParticleData(path, "stack", images, images.D, apix, rotations, shifts, ctf_params, np.ones(n), np.ones(n),
                        np.ones(n, int))


def load_particles(path, datadir=None, poses=None, ctf=None, ind=None, require_poses=False,
                   with_images=True) -> ParticleData:
    """Load any supported particle input; optionally select ``ind`` (array or .npy/.pkl path).

    ``with_images=False`` reads metadata only (no stack needs to exist).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".star":
        pdata = load_star(path, datadir, with_images)
    elif suffix == ".cs":
        pdata = load_cs(path, datadir, with_images)
    elif suffix in (".mrcs", ".mrc", ".txt"):
        pdata = load_stack(path, poses, ctf)
    else:
        raise InputError(path, "unsupported particle file (expected .star, .cs, .mrcs, .mrc or .txt)")
    if poses is not None and suffix in (".star", ".cs"):
        rot, sh = drgn.read_poses_pkl(poses, pdata.D)
        if len(rot) != len(pdata):
            raise InputError(poses, f"{len(rot)} poses for {len(pdata)} particles in {path.name}")
        pdata.rotations, pdata.shifts_px = rot, sh
    if require_poses and pdata.rotations is None:
        what = "no alignments3D/pose field" if suffix == ".cs" else "no rlnAngleRot/Tilt/Psi columns"
        raise InputError(path, f"poses are required but the file has {what}")
    if ind is not None:
        pdata = pdata.subset(load_indices(ind, len(pdata)))
    if require_poses:
        dup = find_duplicate_particles(pdata)
        if len(dup):
            raise InputError(path, f"{len(dup)} duplicate particle(s): same image and same pose as an earlier row "
                                   f"(first: row {int(pdata.source_index[dup[0]]) + 1}); remove duplicates first "
                                   "(RELION Subset selection → Remove duplicates, cryoSPARC Remove Duplicates)")
    return pdata


def find_duplicate_particles(pdata: ParticleData) -> np.ndarray:
    """Positions of particles repeating an earlier one (same image, same pose and shift).

    The same image with a different pose (symmetry expansion) is not a duplicate.

    Returns
    -------
    (M,) int positions in ``pdata`` of the second and later copies, ascending.
    """
    if pdata.images is None or len(pdata) < 2:
        return np.zeros(0, dtype=np.int64)
    src = pdata.images
    key = np.column_stack([src.file_index, src.image_index]).astype(np.float64)
    if pdata.rotations is not None:
        key = np.column_stack([key, np.round(pdata.rotations.reshape(len(pdata), -1), 5),
                               np.round(pdata.shifts_px, 3)])
    _, first = np.unique(key, axis=0, return_index=True)
    dup = np.ones(len(pdata), dtype=bool)
    dup[first] = False
    return np.nonzero(dup)[0]


def load_indices(ind, n: int | None = None) -> np.ndarray:
    """Indices from an array, a ``.npy``, a cryoDRGN ``.pkl`` or a text file; checked against n."""
    if isinstance(ind, (str, Path)):
        p = Path(ind)
        if p.suffix == ".pkl":
            arr = drgn.read_index_pkl(p)
        elif p.suffix == ".npy":
            if not p.exists():
                raise InputError(p, "file not found")
            arr = np.load(p)
        else:
            if not p.exists():
                raise InputError(p, "file not found")
            arr = np.loadtxt(p, dtype=np.int64, ndmin=1)
        src = p
    else:
        arr, src = np.asarray(ind), None
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = np.nonzero(arr)[0]
    if arr.size == 0:
        raise InputError(src, "empty selection (no particle indices)")
    if arr.dtype.kind not in "iu":
        raise InputError(src, f"indices must be integers, got {arr.dtype}")
    if n is not None and (arr.min() < 0 or arr.max() >= n):
        raise InputError(src, f"index {int(arr.max() if arr.max() >= n else arr.min())} out of range for {n} particles")
    return arr.astype(np.int64)
