"""Synthetic fMRI run with known ground truth, generated lazily volume by volume.

Signal model (per voxel v, volume i, t_i = i * tr_s)::

    clean_i(v) = baseline(v) * (1 + drift(t_i)) * (1 + sum_r a_r(t_i) * in_r(v))
    moved_i    = clean_i resampled for head pose i (cubic spline), if motion
    vol_i      = (moved_i + noise_i) * (1 + spike_pct / 100 if i is a spike)

with a_r = amplitude_pct / 100 * block_response of the region's condition,
in_r the region's sphere (brain voxels within radius_mm of its centre), and
noise_i a per-voxel AR(1) Gaussian process (stationary sigma = noise_pct % of the
mean brain baseline). Noise is added *after* motion on purpose: thermal noise
lives in the scanner's image frame and does not move with the head, and
resampling it would smooth it and shrink its variance below ``noise_pct``.

Motion convention
-----------------
Six parameters per volume with fMRIPrep names: ``trans_x``, ``trans_y``,
``trans_z`` in mm and ``rot_x``, ``rot_y``, ``rot_z`` in radians. The head
moves by the rigid transform ``p' = R p + t`` in scanner RAS mm about the world
origin (x=y=z=0, not the grid centre), with ``R = Rz @ Ry @ Rx`` and ``Rx`` a
rotation by ``rot_x`` about the x axis (right-handed), etc. So the image of
volume i is ``I_i(p') = I_ref(p)``, i.e. ``I_i(x) = I_ref(R^T (x - t))``.
Volume 0 has zero motion. A realignment that reports the transform taking
volume i back onto volume 0 should report the inverse of this pose.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .hrf import block_response
from .phantom import Phantom, make_phantom, voxel_world_coords
from .spec import RunSpec, SpecError

__all__ = [
    "SyntheticRun",
    "GroundTruth",
    "MOTION_COLUMNS",
    "rigid_matrix",
    "apply_motion",
    "motion_params",
    "drift_fraction",
    "read_truth_tsv",
]

MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")

# Independent random streams derived from the one seed (numpy SeedSequence
# entropy lists), so changing e.g. motion never changes the noise.
_STREAM_MOTION = 1
_STREAM_NOISE = 2


# --------------------------------------------------------------------------- motion
def rigid_matrix(params: Sequence[float]) -> np.ndarray:
    """4x4 world-space rigid transform for (trans_x, trans_y, trans_z, rot_x, rot_y, rot_z).

    Translations in mm, rotations in radians; ``R = Rz @ Ry @ Rx``; maps a head
    point p (RAS mm) at rest to its moved position ``R p + t``.
    """
    tx, ty, tz, rx, ry, rz = (float(p) for p in params)
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    r_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    r_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    m = np.eye(4)
    m[:3, :3] = r_z @ r_y @ r_x
    m[:3, 3] = (tx, ty, tz)
    return m


def apply_motion(data: np.ndarray, affine: np.ndarray, params: Sequence[float], order: int = 3) -> np.ndarray:
    """Image of a head that moved by ``params`` (see module docstring), on the same grid.

    Parameters
    ----------
    data : np.ndarray
        Image of the head at rest.
    affine : np.ndarray, shape (4, 4)
        Voxel-to-RAS-mm affine of ``data``.
    params : sequence of 6 float
        trans_x, trans_y, trans_z (mm), rot_x, rot_y, rot_z (radians).
    order : int
        Spline order (3 = cubic, as the simulator uses).

    Returns
    -------
    np.ndarray of float64
        Resampled image; values outside the field of view use the nearest edge voxel
        (background), so no artificial dark border appears.
    """
    from scipy.ndimage import affine_transform

    if not np.any(params):
        return np.asarray(data, dtype=np.float64).copy()
    # output voxel -> world -> un-moved world -> input voxel
    m = np.linalg.inv(affine) @ np.linalg.inv(rigid_matrix(params)) @ affine
    return affine_transform(np.asarray(data, dtype=np.float64), m, order=order, mode="nearest")


def motion_params(spec: RunSpec) -> np.ndarray:
    """Per-volume head pose, shape (n_volumes, 6), columns :data:`MOTION_COLUMNS`.

    ``smooth``: per parameter, a sum of 3 sinusoids of 0.5-3 cycles per run
    with random phases, shifted to be 0 at volume 0 and scaled so its peak is
    50-100 % of the bound. ``random_walk``: Gaussian steps (10 % of the bound),
    starting at 0 and reflected at +/- bound. Bounds: ``max_trans_mm`` for
    translations, ``max_rot_deg`` (converted to radians) for rotations.
    """
    n = spec.n_volumes
    out = np.zeros((n, 6))
    if spec.motion is None or n < 2:
        return out
    mot = spec.motion
    bounds = np.array([mot.max_trans_mm] * 3 + [np.deg2rad(mot.max_rot_deg)] * 3)
    rng = np.random.default_rng([spec.seed, _STREAM_MOTION])
    u = np.arange(n) / (n - 1)  # run time in [0, 1]
    for k in range(6):
        b = bounds[k]
        if mot.kind == "smooth":
            freqs = rng.uniform(0.5, 3.0, size=3)
            phases = rng.uniform(0, 2 * np.pi, size=3)
            amps = rng.uniform(0.3, 1.0, size=3)
            x = sum(a * (np.sin(2 * np.pi * f * u + p) - np.sin(p)) for a, f, p in zip(amps, freqs, phases))
            peak = np.max(np.abs(x))
            x = x * (b * rng.uniform(0.5, 1.0) / peak) if peak > 0 else x
        else:  # random_walk
            steps = rng.normal(0.0, 0.1 * b, size=n)
            x = np.zeros(n)
            for i in range(1, n):
                v = x[i - 1] + steps[i]
                # reflect at the bounds so the walk stays bounded without sticking to them
                if v > b:
                    v = 2 * b - v
                elif v < -b:
                    v = -2 * b - v
                x[i] = np.clip(v, -b, b)
        out[:, k] = x
    out[0] = 0.0
    return out


def drift_fraction(spec: RunSpec) -> np.ndarray:
    """Multiplicative drift per volume (fraction, 0 at volume 0).

    ``drift_pct / 100 * (0.5 * t / T + 0.5 * sin(pi * t / T))`` with T the run
    duration: a linear trend plus half a period of a slow cosine (shifted to
    start at 0), both far below a 1/128 Hz high-pass for typical runs.
    """
    t = np.arange(spec.n_volumes) * spec.tr_s
    big_t = spec.duration_s
    return spec.drift_pct / 100.0 * (0.5 * t / big_t + 0.5 * np.sin(np.pi * t / big_t))


# --------------------------------------------------------------------------- truth
@dataclass(frozen=True)
class GroundTruth:
    """Per-volume ground truth as named columns of equal length.

    Columns: ``volume`` (0-based), ``onset_s`` (i * tr_s), ``condition``
    (active block's condition or ``"n/a"``), ``activation_<region>`` (true
    percent signal change), ``trans_x`` ... ``rot_z`` (mm, radians),
    ``drift_pct`` (percent), ``spike`` (0/1).
    """

    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    @property
    def names(self) -> tuple[str, ...]:
        """Column names in order."""
        return tuple(self.columns)

    def motion(self, i: int) -> np.ndarray:
        """The 6 motion parameters of volume ``i``."""
        return np.array([self.columns[c][i] for c in MOTION_COLUMNS])

    def rows(self) -> Iterator[dict[str, object]]:
        """One dict per volume."""
        for i in range(len(self)):
            yield {k: v[i].item() if hasattr(v[i], "item") else v[i] for k, v in self.columns.items()}

    def to_tsv(self, path: str | Path) -> None:
        """Write a tab-separated table with a header row (floats with 10 significant digits)."""

        def fmt(x: object) -> str:
            if isinstance(x, (float, np.floating)):
                return format(float(x), ".10g")
            return str(x)

        with open(path, "w", newline="") as fh:
            w = csv.writer(fh, delimiter="\t", lineterminator="\n")
            w.writerow(self.names)
            for row in self.rows():
                w.writerow([fmt(v) for v in row.values()])


def read_truth_tsv(path: str | Path) -> dict[str, np.ndarray]:
    """Read ``truth.tsv`` back (numbers as float/int arrays, ``condition`` as str)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    out: dict[str, np.ndarray] = {}
    for name in rows[0] if rows else []:
        vals = [r[name] for r in rows]
        if name == "condition":
            out[name] = np.array(vals, dtype=object)
        elif name in ("volume", "spike"):
            out[name] = np.array(vals, dtype=int)
        else:
            out[name] = np.array(vals, dtype=float)
    return out


# --------------------------------------------------------------------------- run
class SyntheticRun:
    """A synthetic run: ground truth up front, volumes generated on demand.

    Parameters
    ----------
    spec : RunSpec
        What to simulate.
    phantom : Phantom, optional
        Baseline head; built with :func:`make_phantom` from the spec's grid when
        omitted (pass one to share it between runs, e.g. in tests).

    Notes
    -----
    Deterministic: the same spec (including ``seed``) gives bit-identical
    volumes, in any access order. Memory stays at a few volumes: only the
    last AR(1) noise state is cached, so sequential access is O(1) per volume
    and random access replays the noise recursion from the start. Not
    thread-safe (the noise cache); use one instance per thread.
    See the module docstring for the signal model and the motion convention.
    """

    def __init__(self, spec: RunSpec, phantom: Phantom | None = None) -> None:
        self.spec = spec
        if phantom is None:
            aff = None if spec.affine is None else np.array(spec.affine)
            phantom = make_phantom(spec.shape, spec.voxel_mm, affine=aff)
        if phantom.data.shape != tuple(spec.shape):
            raise ValueError(
                f"Invalid value for 'phantom': grid {phantom.data.shape}. Allowed: the spec's shape {spec.shape}."
            )
        self.phantom = phantom
        self.region_masks: dict[str, np.ndarray] = self._region_masks()
        self._motion = motion_params(spec)
        self._drift = drift_fraction(spec)
        self._act = {
            r.name: r.amplitude_pct * block_response(spec.blocks, r.condition, spec.tr_s, spec.n_volumes)
            for r in spec.regions
        }
        brain_mean = float(phantom.data[phantom.brain_mask].mean())
        self.noise_sigma = spec.noise_pct / 100.0 * brain_mean
        self.truth = self._make_truth()
        self._noise_state: tuple[int, np.ndarray] | None = None

    # ----------------------------------------------------------------- setup
    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-RAS-mm affine of every volume."""
        return self.phantom.affine

    @property
    def reference(self) -> np.ndarray:
        """Noise-free, motion-free, activation-free baseline (float32)."""
        return self.phantom.data

    def __len__(self) -> int:
        return self.spec.n_volumes

    def _region_masks(self) -> dict[str, np.ndarray]:
        xyz = voxel_world_coords(self.spec.shape, self.phantom.affine)
        masks = {}
        for i, r in enumerate(self.spec.regions):
            d2 = np.sum((xyz - np.asarray(r.center_mm)) ** 2, axis=-1)
            m = (d2 <= r.radius_mm**2) & self.phantom.brain_mask
            if not m.any():
                raise SpecError(
                    f"Invalid value for 'regions[{i}].center_mm': {list(r.center_mm)}. "
                    f"Allowed: a centre with brain voxels within radius_mm={r.radius_mm:g} on this grid."
                )
            masks[r.name] = m
        return masks

    def _make_truth(self) -> GroundTruth:
        spec = self.spec
        n = spec.n_volumes
        t = np.arange(n) * spec.tr_s
        cond = np.full(n, "n/a", dtype=object)
        # first listed block wins if blocks overlap
        for b in reversed(spec.blocks):
            cond[(t >= b.onset_s) & (t < b.onset_s + b.duration_s)] = b.condition
        cols: dict[str, np.ndarray] = {"volume": np.arange(n), "onset_s": t, "condition": cond}
        for name, a in self._act.items():
            cols[f"activation_{name}"] = a
        for k, c in enumerate(MOTION_COLUMNS):
            cols[c] = self._motion[:, k]
        cols["drift_pct"] = 100.0 * self._drift
        spike = np.zeros(n, dtype=int)
        spike[list(spec.spikes)] = 1
        cols["spike"] = spike
        return GroundTruth(cols)

    # ----------------------------------------------------------------- volumes
    def _innovation(self, i: int) -> np.ndarray:
        rng = np.random.default_rng([self.spec.seed, _STREAM_NOISE, i])
        return rng.standard_normal(self.spec.shape, dtype=np.float32)

    def _noise(self, i: int) -> np.ndarray:
        """AR(1) noise of volume i, stationary with sd ``noise_sigma``."""
        phi = self.spec.ar1
        state = self._noise_state
        if state is None or state[0] > i:
            j, e = 0, self._innovation(0)
        else:
            j, e = state
        while j < i:
            j += 1
            # innovation scaled by sqrt(1 - phi^2) keeps the marginal variance at 1
            e = phi * e + np.float32(np.sqrt(1.0 - phi * phi)) * self._innovation(j)
        self._noise_state = (j, e)
        return e * np.float32(self.noise_sigma)

    def clean_volume(self, i: int) -> np.ndarray:
        """Volume i before motion, noise and spike (float64)."""
        self._check_index(i)
        gain = np.ones(self.spec.shape)
        for name, m in self.region_masks.items():
            gain[m] += self._act[name][i] / 100.0
        return self.phantom.data.astype(np.float64) * (1.0 + self._drift[i]) * gain

    def volume(self, i: int) -> np.ndarray:
        """The i-th (0-based) volume as the scanner would reconstruct it (float32)."""
        self._check_index(i)
        img = self.clean_volume(i)
        params = self._motion[i]
        if np.any(params):
            img = apply_motion(img, self.phantom.affine, params, order=3)
        if self.noise_sigma > 0:
            img = img + self._noise(i)
        if i in self.spec.spikes:
            img = img * (1.0 + self.spec.spike_pct / 100.0)
        return img.astype(np.float32)

    def _check_index(self, i: int) -> None:
        if not (isinstance(i, (int, np.integer)) and 0 <= i < self.spec.n_volumes):
            raise IndexError(
                f"Invalid value for 'i': {i!r}. Allowed: an integer in [0, {self.spec.n_volumes - 1}]."
            )
