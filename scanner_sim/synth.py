"""Synthetic fMRI run with known ground truth, generated lazily volume by volume.

Signal model (per voxel v, volume i, t_i = i * tr_s)::

    clean_i(v) = baseline(v) * (1 + drift(t_i)) * (1 + sum_r a_r(t_i) * in_r(v))
    moved_i    = clean_i resampled for head pose i (cubic spline), if motion
    vol_i      = (moved_i + noise_i) * (1 + spike_pct / 100 if i is a spike)

with a_r = amplitude_pct / 100 * block_response of the region's condition
(plus, for a region in a ``[[couplings]]`` pair, its fluctuation
``fluctuation_<region> / 100``: a shared and a private slow process whose
mix gives the pair the correlation ``coupling_<a>_<b>``; see
:class:`scanner_sim.spec.Coupling`),
in_r the region's sphere (brain voxels within radius_mm of its centre), and
noise_i a per-voxel AR(1) Gaussian process (stationary sigma = noise_pct % of the
mean brain baseline). Noise is added *after* motion on purpose: thermal noise
lives in the scanner's image frame and does not move with the head, and
resampling it would smooth it and shrink its variance below ``noise_pct``.

Realistic components (each off unless its spec key is set; see
:mod:`scanner_sim.physio` and :data:`scanner_sim.spec.REALISTIC_PRESET`)::

    drift(t)   = cosine drift (drift_pct) + polynomial (drift_poly_pct) + random walk (drift_walk_pct)
    clean_i   += B * w_phys(v) * (cardiac_pct/100 * c(t_ik) + resp_pct/100 * r(t_ik))   moves with the head
    clean_i   += B * g(v) * (rvt_pct/100 * rvt(t_i) + hr_pct/100 * hr(t_i))                       slow physiology
    clean_i   += B * g(v) * spontaneous.pct/100 * sum_k S_k(v) z_k(t_i) / sqrt(n_patterns)       coherent BOLD
    moved_i   += B * e(v) * (pct_per_mm/100 * d_i(v) + deriv_pct_per_mm/100 * (d_i(v) - d_{i-1}(v)))

with B the mean brain baseline, t_ik the acquisition time of slice k of
volume i (or of the volume), w_phys strongest in CSF and at the brain's edge,
g = 0.25 + 0.75 * grey-matter probability in the brain, S_k smooth random
patterns with slow time courses z_k, e the normalised intensity-edge map, and d_i(v) the displacement (mm) along the
slice axis of the rigid motion at voxel v: ``n . ((R_i - I) x_v + t_i)``.

Real noise (``noise_from``)::

    vol_i = (real_i + mean_t(real) * sum_r a_r(t_i) * in_r(v)) * (1 + spike_pct / 100 if i is a spike)

(``real`` multiplied by ``noise_from_scale`` first, 1 by default)

the real volumes on their own grid, so the noise is exactly real and the
activation exactly known; the phantom is the real series' mean image.

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
import gzip
import json
import logging
from dataclasses import asdict as dataclasses_asdict
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
    "drift_components",
    "read_truth_tsv",
    "NUISANCE_COLUMNS",
    "PHYSIO_COLUMNS",
]

MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")

logger = logging.getLogger(__name__)

# Independent random streams derived from the one seed (numpy SeedSequence
# entropy lists), so changing e.g. motion never changes the noise.
_STREAM_MOTION = 1
_STREAM_NOISE = 2
_STREAM_DRIFT_POLY = 3
_STREAM_DRIFT_WALK = 4
_STREAM_PHYSIO = 5
_STREAM_SPONTANEOUS = 6
_STREAM_COUPLING = 7
_STREAM_ECHO_NOISE = 8

#: Columns of the truth folder's ``nuisance.tsv`` (one row per volume; see :meth:`SyntheticRun.write_noise_truth`).
NUISANCE_COLUMNS = (
    "volume", "onset_s", "drift_cosine_pct", "drift_poly_pct", "drift_walk_pct", "drift_pct",
    "cardiac", "respiratory", "cardiac_phase", "respiratory_phase", "heart_rate_hz", "respiratory_rate_hz",
    "rvt_response", "hr_response",
    "slice_disp_origin_mm", "slice_disp_grad_x", "slice_disp_grad_y", "slice_disp_grad_z",
    "framewise_displacement",
)  # then spontaneous_1 ... spontaneous_<n_patterns> with [spontaneous]
#: Columns of ``physio.tsv.gz`` (BIDS physiological recording: no header row, described in ``physio.json``).
PHYSIO_COLUMNS = ("cardiac", "respiratory", "cardiac_phase", "respiratory_phase", "heart_rate_hz",
                  "respiratory_rate_hz", "respiratory_depth")


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


def drift_components(spec: RunSpec) -> dict[str, np.ndarray]:
    """Each multiplicative drift per volume (fractions, 0 at volume 0): ``cosine``, ``poly``, ``walk``.

    ``cosine``: ``drift_pct / 100 * (0.5 * t / T + 0.5 * sin(pi * t / T))``
    with T the run duration, a linear trend plus half a period of a slow
    cosine (shifted to start at 0), both far below a 1/128 Hz high-pass for
    typical runs. ``poly`` and ``walk``: :func:`scanner_sim.physio.drift_poly`
    and :func:`scanner_sim.physio.drift_walk` scaled to peaks of
    ``drift_poly_pct`` and ``drift_walk_pct`` percent (zeros when 0); the walk
    has power at every frequency, so a cosine basis never removes it all.
    """
    from .physio import drift_poly, drift_walk

    n = spec.n_volumes
    t = np.arange(n) * spec.tr_s
    big_t = spec.duration_s
    out = {"cosine": spec.drift_pct / 100.0 * (0.5 * t / big_t + 0.5 * np.sin(np.pi * t / big_t)),
           "poly": np.zeros(n), "walk": np.zeros(n)}
    if spec.drift_poly_pct > 0:
        out["poly"] = drift_poly(n, spec.drift_poly_pct / 100.0, np.random.default_rng([spec.seed, _STREAM_DRIFT_POLY]))
    if spec.drift_walk_pct > 0:
        out["walk"] = drift_walk(n, spec.drift_walk_pct / 100.0, np.random.default_rng([spec.seed, _STREAM_DRIFT_WALK]))
    return out


def drift_fraction(spec: RunSpec) -> np.ndarray:
    """Total multiplicative drift per volume (fraction, 0 at volume 0): the sum of :func:`drift_components`."""
    c = drift_components(spec)
    total = c["cosine"]
    # added only when on, so runs without them keep their exact values
    for k in ("poly", "walk"):
        if np.any(c[k]):
            total = total + c[k]
    return total


def framewise_displacement(motion: np.ndarray, radius_mm: float = 50.0) -> np.ndarray:
    """Power et al. (2012) framewise displacement (mm): rotations as arcs on a ``radius_mm`` sphere; 0 at volume 0."""
    d = np.abs(np.diff(motion, axis=0))
    fd = d[:, :3].sum(1) + radius_mm * d[:, 3:].sum(1)
    return np.r_[0.0, fd]


# --------------------------------------------------------------------------- truth
@dataclass(frozen=True)
class GroundTruth:
    """Per-volume ground truth as named columns of equal length.

    Columns: ``volume`` (0-based), ``onset_s`` (i * tr_s), ``condition``
    (active block's condition or ``"n/a"``), ``activation_<region>`` (true
    percent signal change), ``trans_x`` ... ``rot_z`` (mm, radians),
    ``drift_pct`` (percent), ``spike`` (0/1); with ``[[couplings]]`` also
    ``coupling_<a>_<b>`` (the true correlation of the pair's fluctuations,
    in [-1, 1]) and ``fluctuation_<region>`` (each one's fluctuation, percent
    of its baseline). A real-noise run (``noise_from``)
    has no motion and drift columns: the real series' own are unknown.
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
        #: Real volumes (x, y, z, t), float32, when the noise comes from a real series; else None.
        self.real: np.ndarray | None = None
        #: The real series read (:class:`scanner_sim.realnoise.RealSeries`), or None.
        self.real_series = None
        if spec.real_noise:
            if phantom is not None:
                raise ValueError("Invalid value for 'phantom': a Phantom. Allowed: None with noise_from "
                                 "(the real series' mean image is the baseline).")
            phantom = self._real_phantom()
        elif phantom is None:
            aff = None if spec.affine is None else np.array(spec.affine)
            phantom = make_phantom(spec.shape, spec.voxel_mm, affine=aff)
        if phantom.data.shape != tuple(spec.shape):
            raise ValueError(
                f"Invalid value for 'phantom': grid {phantom.data.shape}. Allowed: the spec's shape {spec.shape}."
            )
        self.phantom = phantom
        self.region_masks: dict[str, np.ndarray] = self._region_masks()
        self._motion = motion_params(spec)
        self._drift_parts = drift_components(spec)
        self._drift = drift_fraction(spec)
        self._act = {
            r.name: r.amplitude_pct * block_response(spec.blocks, r.condition, spec.tr_s, spec.n_volumes)
            for r in spec.regions
        }
        self._fluct, self._coupling = self._coupling_timecourses()
        brain_mean = float(phantom.data[phantom.brain_mask].mean())
        #: Mean brain baseline intensity B: the unit of every ``*_pct`` noise amplitude.
        self.brain_mean = brain_mean
        self.noise_sigma = spec.noise_pct / 100.0 * brain_mean
        self.truth = self._make_truth()
        self._noise_state: tuple[int, np.ndarray] | None = None
        self._setup_physio()
        self._setup_spontaneous()
        self._setup_motion_signal()
        self._setup_multiecho()

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

    def _real_phantom(self) -> Phantom:
        """Read the ``noise_from`` series; its mean image (and an EPI mask of it) is the baseline."""
        from .realnoise import epi_mask, probe_series, read_series

        spec = self.spec
        real = probe_series(spec.noise_from, series=spec.noise_from_series)  # type: ignore[arg-type]
        self.real_series = real
        self.real = read_series(real, spec.noise_from_skip, spec.n_volumes)
        if spec.noise_from_scale != 1.0:
            self.real *= np.float32(spec.noise_from_scale)
        # the local mean that amplitude_pct is a percentage of (float64 sum: no float32 drift over long runs)
        mean = self.real.mean(axis=3, dtype=np.float64).astype(np.float32)
        lo, hi = float(self.real.min()), float(self.real.max())
        top = 4095.0 if spec.format == "siemens-mosaic" else 32767.0
        if lo < (0.0 if spec.format == "siemens-mosaic" else -32768.0) or hi > top / 1.1 or hi < 100.0:
            # files store integers like a scanner: a series in other units loses its noise to rounding or clipping
            logger.warning("noise_from '%s' spans [%g, %g]; %s files store integers in [%s, %g]: give the series "
                           "in scanner units (not demeaned or scaled to percent), or set noise_from_scale.", spec.noise_from, lo, hi,
                           spec.format, 0 if spec.format == "siemens-mosaic" else -32768, top)
        return Phantom(data=mean, affine=np.asarray(real.affine, dtype=float), brain_mask=epi_mask(mean),
                       gm=np.zeros(mean.shape, np.float32), csf=None)

    def _setup_physio(self) -> None:
        """True physiological traces, their spatial weights, slow responses and slice times (when ``[physio]`` is on)."""
        from .physio import grey_weight, make_physio_traces, physio_weight, slice_times, slow_physio_responses

        p = self.spec.physio
        n = self.spec.n_volumes
        self.physio_traces = None
        self.physio_weight: np.ndarray | None = None
        self.grey_weight: np.ndarray | None = None
        #: Unit-sd slow responses to breathing (RVT) and heart rate per volume (zeros when off).
        self.rvt_response, self.hr_response = np.zeros(n), np.zeros(n)
        if p is None or not p.enabled:
            return
        ph = self.phantom
        self.physio_traces = make_physio_traces(p, self.spec.duration_s,
                                                np.random.default_rng([self.spec.seed, _STREAM_PHYSIO]))
        self.physio_weight = physio_weight(ph.data, ph.brain_mask, ph.affine, csf=ph.csf)
        if p.rvt_pct > 0 or p.hr_pct > 0:
            self.rvt_response, self.hr_response = slow_physio_responses(self.physio_traces,
                                                                        np.arange(n) * self.spec.tr_s)
            self.grey_weight = grey_weight(ph.brain_mask, ph.gm)
        #: Acquisition offset (s) of each k slice within a volume (all 0 with ``sampling = "volume"``).
        self.slice_times_s = (slice_times(ph.affine, self.spec.shape, self.spec.tr_s) if p.sampling == "slice"
                              else np.zeros(self.spec.shape[2]))

    def _setup_spontaneous(self) -> None:
        """Coherent low-frequency patterns and their time courses (when ``[spontaneous]`` is on)."""
        from .physio import grey_weight, spontaneous_patterns, spontaneous_timecourses

        sp = self.spec.spontaneous
        self.spontaneous_patterns: np.ndarray | None = None
        self.spontaneous_timecourses: np.ndarray | None = None
        if sp is None or not sp.enabled:
            return
        ph = self.phantom
        rng = np.random.default_rng([self.spec.seed, _STREAM_SPONTANEOUS])
        self.spontaneous_patterns = spontaneous_patterns(ph.brain_mask, ph.affine, sp.fwhm_mm, sp.n_patterns, rng)
        self.spontaneous_timecourses = spontaneous_timecourses(sp.n_patterns, np.arange(self.spec.n_volumes)
                                                               * self.spec.tr_s, rng)
        if self.grey_weight is None:
            self.grey_weight = grey_weight(ph.brain_mask, ph.gm)

    def spontaneous_signal(self, i: int) -> np.ndarray:
        """The spontaneous fluctuation added to volume ``i`` before motion (intensity units; zeros when off)."""
        if self.spontaneous_patterns is None:
            return np.zeros(self.spec.shape)
        sp = self.spec.spontaneous
        z = self.spontaneous_timecourses[:, i] / np.sqrt(sp.n_patterns)  # type: ignore[index,union-attr]
        field = np.tensordot(z, self.spontaneous_patterns, axes=1)
        return self.brain_mean * sp.pct / 100.0 * self.grey_weight * field  # type: ignore[union-attr,operator]

    def _setup_motion_signal(self) -> None:
        """Edge weight, voxel positions and per-volume slice-axis displacement fields (when ``[motion_signal]`` is on)."""
        from .physio import edge_weight

        ms = self.spec.motion_signal
        self.edge_weight: np.ndarray | None = None
        aff = self.phantom.affine
        normal = aff[:3, 2] / np.linalg.norm(aff[:3, 2])
        # d_i(x) = n . ((R_i - I) x + t_i) = origin_i + x . grad_i: a linear field per volume
        grads, origins = [], []
        for params in self._motion:
            m = rigid_matrix(params)
            grads.append((m[:3, :3] - np.eye(3)).T @ normal)
            origins.append(float(m[:3, 3] @ normal))
        self._disp_grad, self._disp_origin = np.array(grads), np.array(origins)
        if ms is None or not ms.enabled:
            return
        self.edge_weight = edge_weight(self.phantom.data, aff, self.phantom.brain_mask)
        self._xyz = voxel_world_coords(self.spec.shape, aff).astype(np.float64)

    def slice_displacement(self, i: int) -> np.ndarray:
        """True displacement (mm) along the slice axis of every voxel at volume ``i``: ``n . ((R_i - I) x + t_i)``."""
        self._check_index(i)
        xyz = getattr(self, "_xyz", None)
        if xyz is None:
            xyz = voxel_world_coords(self.spec.shape, self.phantom.affine)
        return xyz @ self._disp_grad[i] + self._disp_origin[i]

    def physio_values(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(cardiac, respiratory) unit-RMS waveform values per k slice of volume ``i`` (zeros when off)."""
        nk = self.spec.shape[2]
        if self.physio_traces is None:
            return np.zeros(nk), np.zeros(nk)
        return self.physio_traces.at(i * self.spec.tr_s + self.slice_times_s)

    def physio_signal(self, i: int) -> np.ndarray:
        """The physiological signal added to volume ``i`` before motion (intensity units; zeros when off)."""
        if self.physio_traces is None:
            return np.zeros(self.spec.shape)
        p = self.spec.physio
        c, r = self.physio_values(i)
        per_slice = self.brain_mean * (p.cardiac_pct / 100.0 * c + p.resp_pct / 100.0 * r)  # type: ignore[union-attr]
        out = self.physio_weight * per_slice[None, None, :]  # type: ignore[operator]
        if self.grey_weight is not None and (p.rvt_pct > 0 or p.hr_pct > 0):  # type: ignore[union-attr]
            slow = p.rvt_pct / 100.0 * self.rvt_response[i] + p.hr_pct / 100.0 * self.hr_response[i]  # type: ignore[union-attr]
            out = out + self.brain_mean * slow * self.grey_weight
        return out

    def motion_signal(self, i: int) -> np.ndarray:
        """The motion-correlated signal added to volume ``i`` after motion (intensity units; zeros when off)."""
        if self.edge_weight is None:
            return np.zeros(self.spec.shape)
        ms = self.spec.motion_signal
        d = self.slice_displacement(i)
        dd = d - self.slice_displacement(i - 1) if i > 0 else np.zeros_like(d)
        scale = ms.pct_per_mm / 100.0 * d + ms.deriv_pct_per_mm / 100.0 * dd  # type: ignore[union-attr]
        return self.brain_mean * self.edge_weight * scale

    def _coupling_timecourses(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Each coupled region's fluctuation (percent) and each pair's true correlation per volume.

        See :class:`scanner_sim.spec.Coupling` for the model. Each coupling
        draws from its own random stream, so adding one changes nothing else.
        """
        from .physio import slow_process

        spec = self.spec
        t = np.arange(spec.n_volumes) * spec.tr_s
        fluct: dict[str, np.ndarray] = {}
        truth: dict[str, np.ndarray] = {}
        for k, c in enumerate(spec.couplings):
            rng = np.random.default_rng([spec.seed, _STREAM_COUPLING, k])
            # 32 sinusoids: a richer spectrum than 8, so short windows see independent-looking processes
            shared, own_a, own_b = (slow_process(rng, t, c.band_hz[0], c.band_hz[1], n_terms=32) for _ in range(3))
            on = np.clip(block_response(spec.blocks, c.condition, spec.tr_s, spec.n_volumes), 0.0, 1.0)
            corr = c.low + (c.high - c.low) * on
            w_shared, w_own = np.sqrt(np.abs(corr)), np.sqrt(1.0 - np.abs(corr))
            a, b = c.regions
            fluct[a] = c.pct * (w_shared * shared + w_own * own_a)
            fluct[b] = c.pct * (np.sign(corr) * w_shared * shared + w_own * own_b)
            truth[c.column] = corr
        return fluct, truth

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
        cols.update(self._coupling)
        for name, x in self._fluct.items():
            cols[f"fluctuation_{name}"] = x
        if not spec.real_noise:
            # a real series' motion and drift are its own and unknown here: no columns rather than false zeros
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

    def _gain(self, i: int) -> np.ndarray:
        """1 + the fractional activation of every region at volume i."""
        gain = np.ones(self.spec.shape)
        for name, m in self.region_masks.items():
            gain[m] += self._act[name][i] / 100.0
            if name in self._fluct:
                gain[m] += self._fluct[name][i] / 100.0
        return gain

    def activation_signal(self, i: int) -> np.ndarray:
        """The activation added to volume i in a real-noise run (intensity units): ``mean * (gain - 1)``."""
        self._check_index(i)
        return self.phantom.data.astype(np.float64) * (self._gain(i) - 1.0)

    def clean_volume(self, i: int) -> np.ndarray:
        """Volume i before motion, noise and spike (float64); with ``[physio]``, its signal is in it.

        In a real-noise run: the real series' mean image with the activation.
        """
        self._check_index(i)
        img = self.phantom.data.astype(np.float64) * (1.0 + self._drift[i]) * self._gain(i)
        if self.physio_traces is not None:
            # physiological signal lives in the tissue: it moves with the head
            img = img + self.physio_signal(i)
        if self.spontaneous_patterns is not None:
            img = img + self.spontaneous_signal(i)
        return img

    def volume(self, i: int) -> np.ndarray:
        """The i-th (0-based) volume as the scanner would reconstruct it (float32)."""
        self._check_index(i)
        if self.real is not None:
            img = self.real[..., i].astype(np.float64) + self.activation_signal(i)
        else:
            img = self.clean_volume(i)
            params = self._motion[i]
            if np.any(params):
                img = apply_motion(img, self.phantom.affine, params, order=3)
            if self.edge_weight is not None:
                # spin history and edges are fixed to the scanner's slices: added after motion
                img = img + self.motion_signal(i)
            if self.noise_sigma > 0:
                img = img + self._noise(i)
        if i in self.spec.spikes:
            img = img * (1.0 + self.spec.spike_pct / 100.0)
        return img.astype(np.float32)

    # ----------------------------------------------------------------- noise truth
    def nuisance(self) -> GroundTruth:
        """True per-volume nuisance time courses, columns :data:`NUISANCE_COLUMNS`.

        ``drift_*_pct``: each drift and their sum (percent). ``cardiac``,
        ``respiratory``: unit-RMS waveforms at each volume's acquisition start
        (slice k adds ``slice_times_s[k]``, see ``nuisance.json``);
        ``cardiac_phase``, ``respiratory_phase`` in [0, 2 pi); rates in Hz (all 0
        without ``[physio]``). ``slice_disp_*``: the slice-axis displacement
        field ``d_i(x) = origin + x . grad`` (mm, x in RAS mm);
        ``framewise_displacement`` (mm, Power et al. 2012).
        """
        spec = self.spec
        n = spec.n_volumes
        t = np.arange(n) * spec.tr_s
        z = np.zeros(n)
        cols: dict[str, np.ndarray] = {"volume": np.arange(n), "onset_s": t}
        for k in ("cosine", "poly", "walk"):
            cols[f"drift_{k}_pct"] = 100.0 * self._drift_parts[k]
        cols["drift_pct"] = 100.0 * self._drift
        tr = self.physio_traces
        if tr is not None:
            c, r = tr.at(t)
            cols.update({
                "cardiac": c, "respiratory": r,
                "cardiac_phase": np.mod(np.interp(t, tr.t_s, tr.cardiac_phase), 2 * np.pi),
                "respiratory_phase": np.mod(np.interp(t, tr.t_s, tr.resp_phase), 2 * np.pi),
                "heart_rate_hz": np.interp(t, tr.t_s, tr.heart_rate_hz),
                "respiratory_rate_hz": np.interp(t, tr.t_s, tr.resp_rate_hz),
            })
        else:
            cols.update({k: z for k in ("cardiac", "respiratory", "cardiac_phase", "respiratory_phase",
                                        "heart_rate_hz", "respiratory_rate_hz")})
        cols["rvt_response"], cols["hr_response"] = self.rvt_response, self.hr_response
        cols["slice_disp_origin_mm"] = self._disp_origin
        for j, ax in enumerate("xyz"):
            cols[f"slice_disp_grad_{ax}"] = self._disp_grad[:, j]
        cols["framewise_displacement"] = framewise_displacement(self._motion)
        if self.spontaneous_timecourses is not None:
            for k, z in enumerate(self.spontaneous_timecourses):
                cols[f"spontaneous_{k + 1}"] = z
        return GroundTruth(cols)

    def write_noise_truth(self, truth_dir: str | Path) -> list[Path]:
        """Write the noise components' truth into ``truth_dir``; returns the files written.

        Only for runs with a realistic component (``spec.extra_noise``) or real noise,
        so other runs' truth folders are unchanged:

        ``nuisance.tsv`` + ``nuisance.json``
            :meth:`nuisance` (and in the JSON: column descriptions, the mean
            brain intensity ``B``, the slice times, the signal formulas).
        ``physio.tsv.gz`` + ``physio.json``
            with ``[physio]``: the true traces at :data:`scanner_sim.physio.TRACE_HZ`,
            BIDS physiological-recording layout (no header row; ``Columns``,
            ``SamplingFrequency``, ``StartTime`` in the JSON; StartTime 0 is the
            acquisition start of volume 0).
        ``physio_weight.nii.gz``, ``motion_signal_weight.nii.gz``, ``grey_weight.nii.gz``
            the spatial weights w_phys, e and g, on the run's grid.
        ``spontaneous_patterns.nii.gz``
            with ``[spontaneous]``: the patterns S_k (4D, one per volume index k;
            their time courses are ``nuisance.tsv``'s ``spontaneous_<k+1>``).
        ``noise_source.json``
            with ``noise_from`` (and then only this file: the real series'
            nuisances are unknown): the real series (path, kind, series,
            volumes used, their files), its grid (``shape``, ``affine`` RAS
            mm), TR, and how the activation was added.
        """
        import nibabel as nib

        from .physio import TRACE_HZ

        spec = self.spec
        if not (spec.extra_noise or spec.real_noise):
            return []
        truth_dir = Path(truth_dir)
        truth_dir.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        if spec.real_noise:
            return self._write_real_truth(truth_dir)
        nuis = self.nuisance()
        nuis.to_tsv(truth_dir / "nuisance.tsv")
        meta = {
            "mean_brain_intensity": self.brain_mean,
            "slice_times_s": [float(v) for v in getattr(self, "slice_times_s", np.zeros(spec.shape[2]))],
            "physio_signal": "B * physio_weight(v) * (cardiac_pct/100 * cardiac(t) + resp_pct/100 * respiratory(t)), "
                             "t = onset_s + slice_times_s[k], added before motion",
            "slow_physio_signal": "B * grey_weight(v) * (rvt_pct/100 * rvt_response + hr_pct/100 * hr_response), "
                                  "added before motion",
            "spontaneous_signal": "B * spontaneous.pct/100 * grey_weight(v) * sum_k spontaneous_patterns[..., k] * "
                                  "spontaneous_<k+1> / sqrt(n_patterns), added before motion",
            "motion_signal": "B * motion_signal_weight(v) * (pct_per_mm/100 * d_i(v) + deriv_pct_per_mm/100 * "
                             "(d_i(v) - d_{i-1}(v))), d_i(x) = slice_disp_origin_mm + x . slice_disp_grad, "
                             "added after motion",
            "columns": {
                "drift_cosine_pct": "linear + half-cosine drift, percent", "drift_poly_pct": "polynomial drift, percent",
                "drift_walk_pct": "random-walk drift, percent", "drift_pct": "total multiplicative drift, percent",
                "cardiac": "unit-RMS cardiac waveform at onset_s", "respiratory": "unit-RMS respiratory waveform at onset_s",
                "cardiac_phase": "radians in [0, 2 pi)", "respiratory_phase": "radians in [0, 2 pi)",
                "heart_rate_hz": "instantaneous heart rate, Hz", "respiratory_rate_hz": "instantaneous breathing rate, Hz",
                "rvt_response": "respiration volume per time (*) RRF, unit sd",
                "hr_response": "heart rate (*) CRF, unit sd",
                "slice_disp_origin_mm": "slice-axis displacement at the world origin, mm",
                "slice_disp_grad_x": "its change per mm of x (mm/mm)", "slice_disp_grad_y": "per mm of y",
                "slice_disp_grad_z": "per mm of z", "framewise_displacement": "Power et al. 2012, 50 mm radius, mm",
            },
            "spec": {k: spec.to_dict().get(k) for k in ("noise_preset", "noise_pct", "ar1", "drift_pct",
                                                         "drift_poly_pct", "drift_walk_pct", "physio", "motion_signal",
                                                         "spontaneous")},
        }
        (truth_dir / "nuisance.json").write_text(json.dumps(meta, indent=1) + "\n")
        written += [truth_dir / "nuisance.tsv", truth_dir / "nuisance.json"]
        tr = self.physio_traces
        if tr is not None:
            table = np.column_stack([tr.cardiac, tr.respiratory, np.mod(tr.cardiac_phase, 2 * np.pi),
                                     np.mod(tr.resp_phase, 2 * np.pi), tr.heart_rate_hz, tr.resp_rate_hz,
                                     tr.resp_depth])
            with gzip.open(truth_dir / "physio.tsv.gz", "wt") as fh:
                np.savetxt(fh, table, fmt="%.6g", delimiter="\t")
            (truth_dir / "physio.json").write_text(json.dumps(
                {"SamplingFrequency": TRACE_HZ, "StartTime": 0.0, "Columns": list(PHYSIO_COLUMNS)}, indent=1) + "\n")
            nib.save(nib.Nifti1Image(self.physio_weight, self.affine), truth_dir / "physio_weight.nii.gz")
            written += [truth_dir / "physio.tsv.gz", truth_dir / "physio.json", truth_dir / "physio_weight.nii.gz"]
        if self.edge_weight is not None:
            nib.save(nib.Nifti1Image(self.edge_weight, self.affine), truth_dir / "motion_signal_weight.nii.gz")
            written.append(truth_dir / "motion_signal_weight.nii.gz")
        if self.grey_weight is not None:
            nib.save(nib.Nifti1Image(self.grey_weight, self.affine), truth_dir / "grey_weight.nii.gz")
            written.append(truth_dir / "grey_weight.nii.gz")
        if self.spontaneous_patterns is not None:
            nib.save(nib.Nifti1Image(np.moveaxis(self.spontaneous_patterns, 0, -1), self.affine),
                     truth_dir / "spontaneous_patterns.nii.gz")
            written.append(truth_dir / "spontaneous_patterns.nii.gz")
        return written

    def _write_real_truth(self, truth_dir: Path) -> list[Path]:
        """``noise_source.json``: the real series behind a ``noise_from`` run, its grid and how it was used."""
        spec = self.spec
        if self.real_series is not None:
            rs = self.real_series
            used = rs.volumes[spec.noise_from_skip:spec.noise_from_skip + spec.n_volumes]
            (truth_dir / "noise_source.json").write_text(json.dumps({
                "source": str(rs.path), "kind": rs.kind, "series": rs.series, "tr_s": spec.tr_s,
                "header_tr_s": rs.tr_s, "skip": spec.noise_from_skip, "n_volumes": spec.n_volumes,
                "scale": spec.noise_from_scale,
                "shape": list(rs.shape), "affine": [[float(v) for v in row] for row in rs.affine],
                "activation": "volume_i = scale * real_i + reference(v) * activation_<region>_i / 100 inside "
                              "region-<region>_mask (reference = scale * mean of the real volumes used)",
                "files": [[p.name for p in v] for v in used],
            }, indent=1) + "\n")
        return [truth_dir / "noise_source.json"]

    # ----------------------------------------------------------------- multi-echo
    def _setup_multiecho(self) -> None:
        """The true T2* map and each echo's decay factor (``[multiecho]``; see :class:`scanner_sim.spec.MultiEcho`)."""
        me = self.spec.multiecho
        #: True T2* (ms) per voxel, None for a single-echo run.
        self.t2star_ms: np.ndarray | None = None
        #: Voxels of the low-T2* sphere, None for a single-echo run.
        self.low_t2star_mask: np.ndarray | None = None
        self._echo_decay: list[np.ndarray] = []
        if me is None:
            return
        xyz = voxel_world_coords(self.spec.shape, self.phantom.affine)
        d2 = np.sum((xyz - np.asarray(me.low_center_mm)) ** 2, axis=-1)
        self.low_t2star_mask = d2 <= me.low_radius_mm ** 2
        self.t2star_ms = np.where(self.low_t2star_mask, me.low_t2star_ms, me.t2star_ms)
        # clean_volume is the image at reference_te_ms of tissue with t2star_ms: S0 = clean * exp(TE_ref / T2*_tissue)
        self._echo_decay = [np.exp(me.reference_te_ms / me.t2star_ms - te / self.t2star_ms) for te in me.echo_times_ms]

    @property
    def s0(self) -> np.ndarray | None:
        """True S0 of the baseline (the reference image extrapolated to TE 0), None for a single-echo run."""
        me = self.spec.multiecho
        if me is None:
            return None
        return self.phantom.data.astype(np.float64) * np.exp(me.reference_te_ms / me.t2star_ms)

    def echo_volumes(self, i: int) -> list[np.ndarray]:
        """Every echo of volume i (float32, in echo order), for a run with ``[multiecho]``.

        ``clean * decay_e * gain ** (TE_e / TE_ref - 1)``, moved with the head, plus
        the motion signal (scaled by the echo's decay) and white noise independent per echo.
        """
        me = self.spec.multiecho
        if me is None:
            raise ValueError("echo_volumes needs a run spec with [multiecho]")
        self._check_index(i)
        clean = self.clean_volume(i)
        log_gain = np.log(np.clip(self._gain(i), 1e-6, None))
        params = self._motion[i]
        moved_signal = self.motion_signal(i) if self.edge_weight is not None else None
        out = []
        for e, te in enumerate(me.echo_times_ms):
            img = clean * self._echo_decay[e] * np.exp(log_gain * (te / me.reference_te_ms - 1.0))
            if np.any(params):
                img = apply_motion(img, self.phantom.affine, params, order=3)
            if moved_signal is not None:
                img = img + moved_signal * self._echo_decay[e]
            if self.noise_sigma > 0:
                rng = np.random.default_rng([self.spec.seed, _STREAM_ECHO_NOISE, i, e])
                img = img + rng.standard_normal(self.spec.shape) * self.noise_sigma
            if i in self.spec.spikes:
                img = img * (1.0 + self.spec.spike_pct / 100.0)
            out.append(img.astype(np.float32))
        return out

    def write_multiecho_truth(self, truth_dir: str | Path) -> list[Path]:
        """``t2star_ms.nii.gz``, ``s0.nii.gz``, ``region-lowt2star_mask.nii.gz``, ``multiecho.json`` (with ``[multiecho]``)."""
        import nibabel as nib

        me = self.spec.multiecho
        if me is None:
            return []
        truth_dir = Path(truth_dir)
        truth_dir.mkdir(parents=True, exist_ok=True)
        files = {"t2star_ms.nii.gz": self.t2star_ms.astype(np.float32), "s0.nii.gz": self.s0.astype(np.float32),
                 "region-lowt2star_mask.nii.gz": self.low_t2star_mask.astype(np.uint8)}
        for name, data in files.items():
            nib.save(nib.Nifti1Image(data, self.affine), truth_dir / name)
        (truth_dir / "multiecho.json").write_text(json.dumps({
            **dataclasses_asdict(me),
            "signal": "S_e = clean * exp(reference_te_ms / t2star_ms - TE_e / T2*(v)) * gain ** (TE_e / reference_te_ms - 1)"
                      ", then motion, motion signal * decay, white noise per echo",
            "files": list(files),
        }, indent=1) + "\n")
        return [truth_dir / n for n in files] + [truth_dir / "multiecho.json"]

    def _check_index(self, i: int) -> None:
        if not (isinstance(i, (int, np.integer)) and 0 <= i < self.spec.n_volumes):
            raise IndexError(
                f"Invalid value for 'i': {i!r}. Allowed: an integer in [0, {self.spec.n_volumes - 1}]."
            )
