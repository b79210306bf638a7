"""Run specification: what the simulated scanner acquires.

A :class:`RunSpec` is built from a TOML file (:func:`load_spec`) or a dict
(:meth:`RunSpec.from_dict`) and validated strictly: unknown keys are rejected
with the list of allowed keys, and every error names the key, the bad value
and what is allowed, e.g. ``Invalid value for 'tr_s': -1. Allowed: a number >
0 (seconds).``

Example TOML::

    tr_s = 1.0
    n_volumes = 120
    seed = 7

    [[blocks]]
    condition = "up"
    onset_s = 20.0
    duration_s = 20.0

    [[regions]]
    name = "acc"
    center_mm = [0, 30, 15]
    radius_mm = 8
    amplitude_pct = 2.0
    condition = "up"

    [motion]
    max_trans_mm = 1.0
    max_rot_deg = 1.0
    kind = "smooth"

Realistic noise
---------------
Every noise component below is off by default, so a spec without these keys
gives the same run, bit for bit, as before they existed::

    noise_preset = "realistic"   # all of the below at literature values (REALISTIC_PRESET)
    drift_poly_pct = 1.0         # polynomial drift, peak |value| in % of signal
    drift_walk_pct = 0.5         # random-walk drift, peak |value| in % of signal

    [physio]                     # cardiac and respiratory fluctuations
    cardiac_pct = 0.8            # RMS, % of mean brain intensity, at weight-1 voxels
    resp_pct = 0.6

    [spontaneous]                # coherent 0.01-0.1 Hz BOLD fluctuations: survive ROI averaging
    pct = 1.0                    # RMS in grey matter, % of mean brain intensity
    fwhm_mm = 12.0

    [motion_signal]              # spin-history / edge signal that follows the head motion
    pct_per_mm = 1.0             # % of mean brain intensity per mm of through-slice displacement
    deriv_pct_per_mm = 1.0       # ... per mm of displacement change since the previous volume

Known time-varying coupling
---------------------------
Two regions can share a fluctuating component whose weight follows a
condition's blocks (:class:`Coupling`; the truth gets ``coupling_<a>_<b>``,
the true correlation of the two fluctuations, and ``fluctuation_<region>``)::

    [[couplings]]
    regions = ["acc", "linsula"]  # two [[regions]] names
    condition = "up"              # coupling is `high` in its blocks (HRF-lagged), `low` elsewhere
    high = 0.8                    # true correlation of the two regions' fluctuations in the blocks
    low = 0.0                     # ... outside them
    pct = 1.0                     # RMS of each region's fluctuation, % of its baseline intensity
    band_hz = [0.01, 0.1]         # frequency band of the fluctuations (Hz)

Multi-echo (:class:`MultiEcho`): each volume written as one file per echo, with a
known T2* map (truth ``t2star_ms.nii.gz``, ``s0.nii.gz``, ``region-lowt2star_mask.nii.gz``)::

    [multiecho]
    echo_times_ms = [12.0, 30.0, 48.0]
    t2star_ms = 45.0                 # tissue
    low_t2star_ms = 12.0             # where the tissue meets air: signal drops out at later echoes
    low_center_mm = [38.0, 14.0, -14.0]
    low_radius_mm = 10.0

Real noise instead of synthetic noise (the grid, affine, TR and number of
volumes come from the series; regions' ``center_mm`` are its scanner RAS mm)::

    noise_from = "/data/rest_run"   # 4D NIfTI or DICOM folder of a task-free run
    noise_from_skip = 2             # leading volumes dropped (non-steady state)
    noise_from_scale = 1.0          # factor on the real values (e.g. 100 for Philips 0-10 scaling)
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

__all__ = [
    "Block",
    "Coupling",
    "Motion",
    "Physio",
    "MotionSignal",
    "Spontaneous",
    "NOISE_PRESETS",
    "REALISTIC_PRESET",
    "PHYSIO_SAMPLING",
    "REAL_NOISE_REPLACES",
    "Region",
    "RunSpec",
    "SpecError",
    "load_spec",
    "MOTION_KINDS",
    "FORMATS",
    "DEFAULT_TEMPLATES",
    "Faults",
    "MultiEcho",
    "MULTIECHO_TEMPLATES",
]

MOTION_KINDS = ("smooth", "random_walk")
#: When physiological noise is sampled: at each slice's acquisition time, or once per volume.
PHYSIO_SAMPLING = ("slice", "volume")
#: Export formats: one NIfTI-1 file per volume, one Siemens mosaic DICOM per volume,
#: or one classic DICOM file per slice.
FORMATS = ("nifti", "siemens-mosaic", "dicom-slices")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class SpecError(ValueError):
    """A run specification is invalid; the message names the key and the value."""


# --------------------------------------------------------------------------- helpers
def _fail(key: str, value: Any, allowed: str) -> SpecError:
    return SpecError(f"Invalid value for '{key}': {value!r}. Allowed: {allowed}.")


def _check_keys(d: Any, key: str, allowed: tuple[str, ...], required: tuple[str, ...]) -> None:
    if not isinstance(d, Mapping):
        raise _fail(key or "<spec>", d, "a table (mapping) with keys " + ", ".join(allowed))
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        where = f" in '{key}'" if key else ""
        raise SpecError(
            f"Unknown key{'s' if len(unknown) > 1 else ''}{where}: {', '.join(map(repr, unknown))}. "
            f"Allowed: {', '.join(allowed)}."
        )
    for req in required:
        if req not in d:
            name = f"{key}.{req}" if key else req
            raise SpecError(f"Missing required key '{name}'.")


def _number(
    key: str,
    value: Any,
    *,
    unit: str = "",
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
) -> float:
    bounds = []
    if gt is not None:
        bounds.append(f"> {gt:g}")
    if ge is not None:
        bounds.append(f">= {ge:g}")
    if lt is not None:
        bounds.append(f"< {lt:g}")
    allowed = "a number" + (" " + " and ".join(bounds) if bounds else "") + (f" ({unit})" if unit else "")
    # bool is an int subclass; `true` is never a sensible number here.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(key, value, allowed)
    if (gt is not None and not value > gt) or (ge is not None and not value >= ge) or (
        lt is not None and not value < lt
    ):
        raise _fail(key, value, allowed)
    return float(value)


def _integer(key: str, value: Any, *, ge: int | None = None, unit: str = "") -> int:
    allowed = "an integer" + (f" >= {ge}" if ge is not None else "") + (f" ({unit})" if unit else "")
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(key, value, allowed)
    if ge is not None and value < ge:
        raise _fail(key, value, allowed)
    return int(value)


def _name(key: str, value: Any) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise _fail(key, value, "a non-empty string of letters, digits, '_' or '-' (no spaces)")
    return value


# --------------------------------------------------------------------------- parts
@dataclass(frozen=True)
class Block:
    """One task block.

    Parameters
    ----------
    condition : str
        Condition name (e.g. ``"up"``).
    onset_s : float
        Onset in seconds, relative to the acquisition start of volume 0.
    duration_s : float
        Duration in seconds.
    """

    condition: str
    onset_s: float
    duration_s: float

    _KEYS = ("condition", "onset_s", "duration_s")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], key: str) -> "Block":
        _check_keys(d, key, cls._KEYS, cls._KEYS)
        return cls(
            condition=_name(f"{key}.condition", d["condition"]),
            onset_s=_number(f"{key}.onset_s", d["onset_s"], ge=0, unit="seconds"),
            duration_s=_number(f"{key}.duration_s", d["duration_s"], gt=0, unit="seconds"),
        )


@dataclass(frozen=True)
class Region:
    """A spherical region whose signal follows one condition's blocks.

    Parameters
    ----------
    name : str
        Region name, used in truth column ``activation_<name>`` and mask file names.
    center_mm : tuple of float
        Centre (x, y, z) in scanner RAS millimeters (= MNI mm for the default grid).
    radius_mm : float
        Radius in millimeters; the region is every brain voxel within it.
    amplitude_pct : float
        Percent signal change at the plateau of a long block.
    condition : str
        The condition whose blocks drive the region.
    """

    name: str
    center_mm: tuple[float, float, float]
    radius_mm: float
    condition: str
    amplitude_pct: float = 1.5

    _KEYS = ("name", "center_mm", "radius_mm", "amplitude_pct", "condition")
    _REQUIRED = ("name", "center_mm", "radius_mm", "condition")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], key: str) -> "Region":
        _check_keys(d, key, cls._KEYS, cls._REQUIRED)
        c = d["center_mm"]
        if not isinstance(c, (list, tuple)) or len(c) != 3:
            raise _fail(f"{key}.center_mm", c, "a list of 3 numbers [x, y, z] (mm)")
        center = tuple(_number(f"{key}.center_mm[{j}]", v, unit="mm") for j, v in enumerate(c))
        return cls(
            name=_name(f"{key}.name", d["name"]),
            center_mm=center,  # type: ignore[arg-type]
            radius_mm=_number(f"{key}.radius_mm", d["radius_mm"], gt=0, unit="mm"),
            condition=_name(f"{key}.condition", d["condition"]),
            amplitude_pct=_number(
                f"{key}.amplitude_pct", d.get("amplitude_pct", 1.5), gt=-100, lt=100, unit="percent"
            ),
        )


@dataclass(frozen=True)
class Coupling:
    """Two regions sharing a fluctuating component whose weight follows a condition's blocks.

    Each of the two regions gains a fluctuation (percent of its baseline
    intensity, multiplying the image like the activation, so it moves with the
    head and drifts with the signal)::

        x_a(t) = pct * (sqrt(|c(t)|) * s(t)           + sqrt(1 - |c(t)|) * u_a(t))
        x_b(t) = pct * (sign(c(t)) sqrt(|c(t)|) * s(t) + sqrt(1 - |c(t)|) * u_b(t))
        c(t)   = low + (high - low) * clip(block_response(condition)(t), 0, 1)

    with ``s``, ``u_a``, ``u_b`` independent zero-mean, unit-variance slow
    processes (sums of sinusoids in ``band_hz``), and the block response the
    condition's boxcar convolved with SPM's HRF (plateau 1; see
    :func:`scanner_sim.hrf.block_response`). At each time the two
    fluctuations have RMS ``pct`` and correlation ``c(t)``: the truth's
    ``coupling_<a>_<b>``. A region is in at most one coupling.

    Parameters
    ----------
    regions : tuple of str
        The two region names (``[[regions]]`` entries), distinct.
    condition : str
        The block condition during which the coupling is ``high``.
    high : float
        Correlation of the two fluctuations during the condition's blocks, in [-1, 1].
    low : float
        Correlation outside them, in [-1, 1].
    pct : float
        RMS of each region's fluctuation, percent of its baseline intensity.
    band_hz : tuple of float
        (low, high) frequency band of the fluctuations in hertz, ``0 < low < high <= 1 / (2 tr_s)``.
    """

    regions: tuple[str, str]
    condition: str
    high: float = 0.8
    low: float = 0.0
    pct: float = 1.0
    band_hz: tuple[float, float] = (0.01, 0.1)

    _KEYS = ("regions", "condition", "high", "low", "pct", "band_hz")
    _REQUIRED = ("regions", "condition")

    @property
    def column(self) -> str:
        """Name of its truth column: ``coupling_<a>_<b>``."""
        return f"coupling_{self.regions[0]}_{self.regions[1]}"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], key: str, tr_s: float | None = None) -> "Coupling":
        _check_keys(d, key, cls._KEYS, cls._REQUIRED)
        regs = d["regions"]
        if not isinstance(regs, (list, tuple)) or len(regs) != 2:
            raise _fail(f"{key}.regions", regs, "a list of 2 region names")
        names = tuple(_name(f"{key}.regions[{j}]", v) for j, v in enumerate(regs))
        if names[0] == names[1]:
            raise _fail(f"{key}.regions", list(regs), "2 different region names")
        band = d.get("band_hz", [0.01, 0.1])
        nyquist = None if tr_s is None else 0.5 / tr_s
        band_allowed = "[low, high] in hertz with 0 < low < high" + (
            f" <= {nyquist:g} (half the sampling rate 1 / tr_s)" if nyquist is not None else "")
        if not isinstance(band, (list, tuple)) or len(band) != 2:
            raise _fail(f"{key}.band_hz", band, band_allowed)
        lo, hi = (_number(f"{key}.band_hz[{j}]", v, gt=0, unit="hertz") for j, v in enumerate(band))
        if not lo < hi or (nyquist is not None and hi > nyquist + 1e-12):
            raise _fail(f"{key}.band_hz", list(band), band_allowed)

        def corr(name: str, default: float) -> float:
            v = d.get(name, default)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not -1 <= v <= 1:
                raise _fail(f"{key}.{name}", v, "a number in [-1, 1] (a correlation)")
            return float(v)

        return cls(
            regions=names,  # type: ignore[arg-type]
            condition=_name(f"{key}.condition", d["condition"]),
            high=corr("high", 0.8),
            low=corr("low", 0.0),
            pct=_number(f"{key}.pct", d.get("pct", 1.0), ge=0, lt=100, unit="percent"),
            band_hz=(lo, hi),
        )


@dataclass(frozen=True)
class Motion:
    """Head motion settings.

    Parameters
    ----------
    max_trans_mm : float
        Bound on each translation (mm).
    max_rot_deg : float
        Bound on each rotation (degrees; the truth reports radians).
    kind : {"smooth", "random_walk"}
        Sum of low-frequency sinusoids, or a bounded random walk.
    """

    max_trans_mm: float = 1.0
    max_rot_deg: float = 1.0
    kind: str = "smooth"

    _KEYS = ("max_trans_mm", "max_rot_deg", "kind")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], key: str = "motion") -> "Motion":
        _check_keys(d, key, cls._KEYS, ())
        kind = d.get("kind", "smooth")
        if kind not in MOTION_KINDS:
            raise _fail(f"{key}.kind", kind, " or ".join(repr(k) for k in MOTION_KINDS))
        return cls(
            max_trans_mm=_number(f"{key}.max_trans_mm", d.get("max_trans_mm", 1.0), ge=0, unit="mm"),
            max_rot_deg=_number(f"{key}.max_rot_deg", d.get("max_rot_deg", 1.0), ge=0, unit="degrees"),
            kind=kind,
        )


@dataclass(frozen=True)
class Physio:
    """Cardiac and respiratory fluctuations (TOML table ``[physio]``).

    A cardiac and a respiratory trace are generated on a 100 Hz grid (see
    :mod:`scanner_sim.physio`), each with a slowly varying rate, and the
    respiratory one with a varying depth. Each voxel's signal gains
    ``B * w(v) * (cardiac_pct / 100 * c(t) + resp_pct / 100 * r(t))`` with
    ``B`` the mean brain intensity, ``w`` a weight in [0, 1] strongest in CSF
    (ventricles, sulci) and at the brain's edge (where large vessels run), and
    ``c``, ``r`` the unit-RMS waveforms sampled at each slice's (or volume's)
    acquisition time: at TR >= 0.5 s the cardiac rhythm is aliased. The slow
    responses to breathing and heart-rate changes (``rvt_pct``, ``hr_pct``)
    add a global, grey-matter-weighted signal per volume.

    Parameters
    ----------
    cardiac_pct : float
        RMS of the cardiac fluctuation at weight-1 voxels, percent of the mean brain intensity.
    resp_pct : float
        RMS of the respiratory fluctuation at weight-1 voxels, percent of the mean brain intensity.
    cardiac_hz : float
        Mean heart rate in hertz (1.1 Hz = 66 beats per minute).
    cardiac_var_pct : float
        Heart-rate variability: standard deviation of the instantaneous heart
        rate, percent of ``cardiac_hz`` (slow 0.01-0.15 Hz fluctuations).
    resp_hz : float
        Mean breathing rate in hertz (0.3 Hz = 18 breaths per minute).
    resp_var_pct : float
        Standard deviation of the instantaneous breathing rate, percent of ``resp_hz``.
    resp_depth_var_pct : float
        Standard deviation of the breathing depth (envelope), percent of its mean.
    sampling : {"slice", "volume"}
        Sample the traces at each slice's acquisition time (slices acquired
        ascending, ``TR / n_slices`` apart, in the order the DICOM writers
        declare) or once per volume at its acquisition start.
    rvt_pct : float
        RMS of the slow response to breathing changes: respiration volume per
        time (depth x rate) convolved with the respiration response function
        (Birn et al. 2008), percent of the mean brain intensity in grey matter
        (weight ``0.25 + 0.75 * grey-matter probability``: a quarter in white
        matter), the same at every voxel's time. Default 0.
    hr_pct : float
        RMS of the slow response to heart-rate changes, convolved with the
        cardiac response function (Chang et al. 2009), percent likewise. Default 0.
    """

    cardiac_pct: float = 0.0
    resp_pct: float = 0.0
    cardiac_hz: float = 1.1
    cardiac_var_pct: float = 5.0
    resp_hz: float = 0.3
    resp_var_pct: float = 10.0
    resp_depth_var_pct: float = 30.0
    sampling: str = "slice"
    rvt_pct: float = 0.0
    hr_pct: float = 0.0

    _KEYS = ("cardiac_pct", "resp_pct", "cardiac_hz", "cardiac_var_pct", "resp_hz", "resp_var_pct",
             "resp_depth_var_pct", "sampling", "rvt_pct", "hr_pct")

    @property
    def enabled(self) -> bool:
        """True when any physiological component has a non-zero amplitude."""
        return self.cardiac_pct > 0 or self.resp_pct > 0 or self.rvt_pct > 0 or self.hr_pct > 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], key: str = "physio") -> "Physio":
        _check_keys(d, key, cls._KEYS, ())
        sampling = d.get("sampling", "slice")
        if sampling not in PHYSIO_SAMPLING:
            raise _fail(f"{key}.sampling", sampling, " or ".join(repr(k) for k in PHYSIO_SAMPLING))
        dflt = cls()

        def num(name: str, unit: str, **bounds: float) -> float:
            return _number(f"{key}.{name}", d.get(name, getattr(dflt, name)), unit=unit, **bounds)

        return cls(
            cardiac_pct=num("cardiac_pct", "percent", ge=0, lt=100),
            resp_pct=num("resp_pct", "percent", ge=0, lt=100),
            # bounds keep the rates physiological and the phase strictly increasing
            cardiac_hz=num("cardiac_hz", "hertz", gt=0.3, lt=4),
            cardiac_var_pct=num("cardiac_var_pct", "percent", ge=0, lt=30),
            resp_hz=num("resp_hz", "hertz", gt=0.05, lt=1.5),
            resp_var_pct=num("resp_var_pct", "percent", ge=0, lt=30),
            resp_depth_var_pct=num("resp_depth_var_pct", "percent", ge=0, lt=100),
            sampling=sampling,
            rvt_pct=num("rvt_pct", "percent", ge=0, lt=100),
            hr_pct=num("hr_pct", "percent", ge=0, lt=100),
        )


@dataclass(frozen=True)
class Spontaneous:
    """Spontaneous low-frequency BOLD fluctuations, spatially coherent (TOML table ``[spontaneous]``).

    Resting-state fluctuations are slow (0.01-0.1 Hz) and shared by nearby
    and networked voxels, so averaging over a region does not remove them:
    they are what makes an ROI's feedback noisy on real data (Biswal et al.
    1995; Fox & Raichle 2007). Each voxel gains
    ``B * g(v) * pct / 100 * sum_k S_k(v) z_k(t) / sqrt(n_patterns)``, with
    ``B`` the mean brain intensity, ``g = 0.25 + 0.75 * grey-matter
    probability`` inside the brain (0 outside), ``S_k`` random Gaussian-smoothed
    fields of ``fwhm_mm`` (unit variance over the brain) and ``z_k`` unit-variance
    slow processes (sums of sinusoids in 0.01-0.1 Hz).

    Parameters
    ----------
    pct : float
        RMS at grey-matter voxels, percent of the mean brain intensity.
    fwhm_mm : float
        Spatial smoothness (full width at half maximum) of each pattern, millimeters.
    n_patterns : int
        Number of independent patterns (>= 1).
    """

    pct: float = 0.0
    fwhm_mm: float = 12.0
    n_patterns: int = 8

    _KEYS = ("pct", "fwhm_mm", "n_patterns")

    @property
    def enabled(self) -> bool:
        """True when the amplitude is non-zero."""
        return self.pct > 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], key: str = "spontaneous") -> "Spontaneous":
        _check_keys(d, key, cls._KEYS, ())
        return cls(
            pct=_number(f"{key}.pct", d.get("pct", 0.0), ge=0, lt=100, unit="percent"),
            fwhm_mm=_number(f"{key}.fwhm_mm", d.get("fwhm_mm", 12.0), gt=0, unit="mm"),
            n_patterns=_integer(f"{key}.n_patterns", d.get("n_patterns", 8), ge=1),
        )


@dataclass(frozen=True)
class MotionSignal:
    """Signal that follows head motion: spin history and edge effects (TOML table ``[motion_signal]``).

    Moving through the slice stack changes the magnetisation history of the
    spins a voxel holds, and partial-volume changes are largest at intensity
    edges; realignment cannot undo either. Each voxel gains
    ``B * e(v) * (pct_per_mm / 100 * d(v, i) + deriv_pct_per_mm / 100 * (d(v, i) - d(v, i - 1)))``
    after motion, with ``B`` the mean brain intensity, ``e`` in [0, 1] the
    normalised intensity-gradient magnitude of the reference (1 at strong
    edges, about 0 in uniform tissue) and ``d(v, i)`` the true displacement
    (mm) of voxel v's head point along the slice axis at volume i. Without
    ``[motion]`` it is zero.

    Parameters
    ----------
    pct_per_mm : float
        Percent of the mean brain intensity per mm of through-slice displacement, at weight-1 voxels.
    deriv_pct_per_mm : float
        Percent of the mean brain intensity per mm of displacement change since
        the previous volume (per TR), at weight-1 voxels.
    """

    pct_per_mm: float = 0.0
    deriv_pct_per_mm: float = 0.0

    _KEYS = ("pct_per_mm", "deriv_pct_per_mm")

    @property
    def enabled(self) -> bool:
        """True when either coefficient is non-zero."""
        return self.pct_per_mm != 0 or self.deriv_pct_per_mm != 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], key: str = "motion_signal") -> "MotionSignal":
        _check_keys(d, key, cls._KEYS, ())
        return cls(
            pct_per_mm=_number(f"{key}.pct_per_mm", d.get("pct_per_mm", 0.0), gt=-100, lt=100,
                               unit="percent per mm"),
            deriv_pct_per_mm=_number(f"{key}.deriv_pct_per_mm", d.get("deriv_pct_per_mm", 0.0), gt=-100,
                                     lt=100, unit="percent per mm"),
        )


@dataclass(frozen=True)
class MultiEcho:
    """Multi-echo acquisition with a known T2* map (TOML table ``[multiecho]``).

    Each volume is acquired at every echo time and written as one file per
    echo (the file name template's ``{echo}`` field, 1-based; DICOM
    ``EchoNumbers`` and ``EchoTime``; NIfTI ``descrip`` ``TE=<ms>``). The
    signal of echo ``e`` follows a mono-exponential decay::

        S_e(v, t) = clean_t(v) * exp(TE_ref / t2star_ms - TE_e / T2*(v)) * gain_t(v) ** (TE_e / TE_ref - 1)

    with ``clean_t`` the single-echo image of the run (what a run without
    ``[multiecho]`` shows at ``TE_ref``: baseline, drift, activation,
    physiology), ``T2*(v)`` the map (``t2star_ms`` in tissue,
    ``low_t2star_ms`` in the sphere ``low_center_mm`` / ``low_radius_mm``,
    where the tissue meets air and signal drops out at later echoes), so
    ``S0(v) = baseline(v) * exp(TE_ref / t2star_ms)``; and ``gain_t`` the
    regions' activation, a change of R2* (BOLD): its percent change at echo
    ``e`` is ``TE_e / TE_ref`` times the region's ``amplitude_pct``. Motion
    moves every echo alike; thermal noise is white, independent per echo,
    of sd ``noise_pct`` % of the mean brain baseline (the AR(1) noise of
    single-echo runs is not used). The truth folder gets ``t2star_ms.nii.gz``,
    ``s0.nii.gz``, ``region-lowt2star_mask.nii.gz`` and ``multiecho.json``.

    Parameters
    ----------
    echo_times_ms : tuple of float
        Echo times in milliseconds, increasing (2 to 8 echoes).
    t2star_ms : float
        T2* of tissue outside the low-T2* sphere, milliseconds.
    reference_te_ms : float
        The echo time at which the baseline and ``amplitude_pct`` are given, milliseconds.
    low_t2star_ms : float
        T2* inside the low-T2* sphere, milliseconds.
    low_center_mm : tuple of float
        Centre of the low-T2* sphere, scanner RAS mm (default: where the right
        anterior insula meets the air of the skull base).
    low_radius_mm : float
        Radius of the low-T2* sphere, mm (0: no low-T2* region).
    """

    echo_times_ms: tuple[float, ...] = (12.0, 30.0, 48.0)
    t2star_ms: float = 45.0
    reference_te_ms: float = 30.0
    low_t2star_ms: float = 12.0
    low_center_mm: tuple[float, float, float] = (38.0, 14.0, -14.0)
    low_radius_mm: float = 10.0

    _KEYS = ("echo_times_ms", "t2star_ms", "reference_te_ms", "low_t2star_ms", "low_center_mm", "low_radius_mm")

    @property
    def n_echoes(self) -> int:
        """Echoes per volume."""
        return len(self.echo_times_ms)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], key: str = "multiecho") -> "MultiEcho":
        _check_keys(d, key, cls._KEYS, ())
        dflt = cls()
        tes = d.get("echo_times_ms", list(dflt.echo_times_ms))
        allowed = "a list of 2 to 8 increasing echo times in milliseconds, each > 0"
        if not isinstance(tes, (list, tuple)) or not 2 <= len(tes) <= 8:
            raise _fail(f"{key}.echo_times_ms", tes, allowed)
        te = tuple(_number(f"{key}.echo_times_ms[{j}]", v, gt=0, lt=1000, unit="ms") for j, v in enumerate(tes))
        if any(b <= a for a, b in zip(te, te[1:])):
            raise _fail(f"{key}.echo_times_ms", list(tes), allowed)
        c = d.get("low_center_mm", list(dflt.low_center_mm))
        if not isinstance(c, (list, tuple)) or len(c) != 3:
            raise _fail(f"{key}.low_center_mm", c, "a list of 3 numbers [x, y, z] (mm)")
        return cls(
            echo_times_ms=te,
            t2star_ms=_number(f"{key}.t2star_ms", d.get("t2star_ms", dflt.t2star_ms), gt=0, lt=1000, unit="ms"),
            reference_te_ms=_number(f"{key}.reference_te_ms", d.get("reference_te_ms", dflt.reference_te_ms), gt=0,
                                    lt=1000, unit="ms"),
            low_t2star_ms=_number(f"{key}.low_t2star_ms", d.get("low_t2star_ms", dflt.low_t2star_ms), gt=0, lt=1000,
                                  unit="ms"),
            low_center_mm=tuple(_number(f"{key}.low_center_mm[{j}]", v, unit="mm") for j, v in enumerate(c)),  # type: ignore[arg-type]
            low_radius_mm=_number(f"{key}.low_radius_mm", d.get("low_radius_mm", dflt.low_radius_mm), ge=0, unit="mm"),
        )


@dataclass(frozen=True)
class Faults:
    """Scanner faults to inject while exporting (synthetic runs and replays).

    Volume indices are 0-based; times are scanner seconds (divided by the
    writer's ``speed`` like the TR). Each injected fault gets a row in the truth
    folder's ``faults.tsv``; see :mod:`scanner_sim.export` for what each looks
    like on disk.

    Parameters
    ----------
    drop : tuple of int
        Volumes never written.
    late : tuple of (int, float)
        ``(volume, delay_s)``: the volume's files are written ``delay_s`` late
        (later volumes keep their times, so a delay > TR also reorders).
    duplicate : tuple of int
        Volumes whose files are written a second time (same name, same bytes),
        ``duplicate_delay_s`` after the first time.
    duplicate_delay_s : float
        Delay of the second copy (default 0.5 s).
    out_of_order : tuple of int
        Volume ``v`` is written right after volume ``v + 1``.
    jitter_s : float
        Every volume is delayed by a uniform random ``[0, jitter_s)`` seconds.
    seed : int or None
        Seed of the jitter (default: the run's seed).
    second_series : dict or None
        ``{start_volume, series, n_volumes}``: from ``start_volume`` on, one
        file set of another series number is written half a TR after each main
        volume, ``n_volumes`` times, into the same folder.
    vanish : tuple of (int, float)
        ``(volume, duration_s)``: the export folder is renamed away just before
        volume ``volume``'s first file and renamed back ``duration_s`` later.
    """

    drop: tuple[int, ...] = ()
    late: tuple[tuple[int, float], ...] = ()
    duplicate: tuple[int, ...] = ()
    duplicate_delay_s: float = 0.5
    out_of_order: tuple[int, ...] = ()
    jitter_s: float = 0.0
    seed: int | None = None
    second_series: tuple[int, int, int] | None = None  # (start_volume, series, n_volumes)
    vanish: tuple[tuple[int, float], ...] = ()

    _KEYS = ("drop", "late", "duplicate", "duplicate_delay_s", "out_of_order", "jitter_s", "seed",
             "second_series", "vanish")

    @property
    def any(self) -> bool:
        """True if any fault is configured."""
        return bool(self.drop or self.late or self.duplicate or self.out_of_order or self.jitter_s > 0
                    or self.second_series or self.vanish)

    def to_dict(self) -> dict[str, Any]:
        """TOML/JSON-shaped dict accepted back by :meth:`from_dict`."""
        d: dict[str, Any] = {
            "drop": list(self.drop),
            "late": [{"volume": v, "delay_s": t} for v, t in self.late],
            "duplicate": list(self.duplicate),
            "duplicate_delay_s": self.duplicate_delay_s,
            "out_of_order": list(self.out_of_order),
            "jitter_s": self.jitter_s,
            "vanish": [{"volume": v, "duration_s": t} for v, t in self.vanish],
        }
        if self.seed is not None:
            d["seed"] = self.seed
        if self.second_series is not None:
            a, b, c = self.second_series
            d["second_series"] = {"start_volume": a, "series": b, "n_volumes": c}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], n_volumes: int | None = None, key: str = "faults") -> "Faults":
        """Validate ``d``; volume indices are checked against ``n_volumes`` when given."""
        _check_keys(d, key, cls._KEYS, ())
        hi = None if n_volumes is None else n_volumes - 1
        rng = f" in [0, {hi}]" if hi is not None else " >= 0"

        def vol(k: str, v: Any) -> int:
            if isinstance(v, bool) or not isinstance(v, int) or v < 0 or (hi is not None and v > hi):
                raise _fail(k, v, f"a 0-based volume index{rng}")
            return int(v)

        def vols(name: str) -> tuple[int, ...]:
            raw = d.get(name, [])
            if not isinstance(raw, (list, tuple)):
                raise _fail(f"{key}.{name}", raw, f"a list of 0-based volume indices{rng}")
            return tuple(sorted({vol(f"{key}.{name}[{i}]", v) for i, v in enumerate(raw)}))

        def pairs(name: str, tkey: str) -> tuple[tuple[int, float], ...]:
            raw = d.get(name, [])
            allowed = f"a list of {{volume, {tkey}}} tables"
            if not isinstance(raw, (list, tuple)):
                raise _fail(f"{key}.{name}", raw, allowed)
            out = []
            for i, item in enumerate(raw):
                k = f"{key}.{name}[{i}]"
                _check_keys(item, k, ("volume", tkey), ("volume", tkey))
                out.append((vol(f"{k}.volume", item["volume"]),
                            _number(f"{k}.{tkey}", item[tkey], gt=0, unit="seconds")))
            return tuple(sorted(out))

        drop, duplicate, ooo = vols("drop"), vols("duplicate"), vols("out_of_order")
        late, vanish = pairs("late", "delay_s"), pairs("vanish", "duration_s")
        for i, v in enumerate(ooo):
            if hi is not None and v >= hi:
                raise _fail(f"{key}.out_of_order", list(ooo), f"volume indices in [0, {hi - 1}] (v + 1 must exist)")
            if v + 1 in drop or v in drop:
                raise _fail(f"{key}.out_of_order", list(ooo), "volumes v where neither v nor v + 1 is dropped")
        late_vols = {v for v, _ in late}
        for name, group in (("late", late_vols), ("duplicate", set(duplicate)), ("out_of_order", set(ooo))):
            both = sorted(group & set(drop))
            if both:
                raise _fail(f"{key}.{name}", sorted(group), f"volumes that are not also dropped (dropped: {both})")
        second = None
        if d.get("second_series") is not None:
            k = f"{key}.second_series"
            ss = d["second_series"]
            _check_keys(ss, k, ("start_volume", "series", "n_volumes"), ("start_volume", "series", "n_volumes"))
            second = (vol(f"{k}.start_volume", ss["start_volume"]), _integer(f"{k}.series", ss["series"], ge=0),
                      _integer(f"{k}.n_volumes", ss["n_volumes"], ge=1))
        seed = d.get("seed")
        return cls(
            drop=drop, late=late, duplicate=duplicate,
            duplicate_delay_s=_number(f"{key}.duplicate_delay_s", d.get("duplicate_delay_s", 0.5), ge=0,
                                      unit="seconds"),
            out_of_order=ooo,
            jitter_s=_number(f"{key}.jitter_s", d.get("jitter_s", 0.0), ge=0, unit="seconds"),
            seed=None if seed is None else _integer(f"{key}.seed", seed, ge=0),
            second_series=second, vanish=vanish,
        )


# --------------------------------------------------------------------------- run spec
DEFAULT_TEMPLATE = "rtsim_{series:03d}_{volume:05d}.nii"
#: Default file name template per format. Fields: ``series``, ``volume`` (1-based),
#: and for ``dicom-slices`` also ``slice`` (1-based, acquisition order) and
#: ``instance`` (1-based InstanceNumber, ``(volume - 1) * n_slices + slice``).
DEFAULT_TEMPLATES = {
    "nifti": DEFAULT_TEMPLATE,
    "siemens-mosaic": "001_{series:06d}_{volume:06d}.dcm",
    "dicom-slices": "MR{series:04d}_{instance:06d}.dcm",
}


#: Default file name template per format of a multi-echo run (``[multiecho]``): one file per echo,
#: field ``echo`` (1-based), BIDS-like ``_echo-<n>`` for NIfTI.
MULTIECHO_TEMPLATES = {
    "nifti": "rtsim_{series:03d}_{volume:05d}_echo-{echo}.nii",
    "siemens-mosaic": "001_{series:06d}_{volume:06d}_e{echo}.dcm",
}


#: Noise presets: ``"none"`` (the spec's own values) or ``"realistic"``.
NOISE_PRESETS = ("none", "realistic")

#: Values ``noise_preset = "realistic"`` fills in for every key the spec does not
#: set itself (a partial ``[physio]`` / ``[spontaneous]`` / ``[motion_signal]`` table is completed
#: from here, so ``[physio] cardiac_pct = 0`` keeps the respiratory part; set
#: both amplitudes to 0 to drop it; ``[motion]`` is added only when the spec
#: has none). Sources:
#:
#: * ``noise_pct`` 1 %: thermal noise of 3 mm EPI at 3 T, tSNR about 100
#:   (Triantafyllou et al. 2005, NeuroImage 26:243).
#: * ``ar1`` 0.4: AR(1) coefficient of grey-matter residuals at TR 1-2 s,
#:   0.3-0.5 (Purdon & Weisskoff 1998, HBM 6:239; Woolrich et al. 2001, NeuroImage 14:1370).
#: * drift: 0.5 % linear + cosine, 1 % polynomial, 0.5 % random walk: 1-2 %
#:   over a run (Smith et al. 1999, NeuroImage 9:526; the pyneal Prisma series
#:   drifts by about 1 % in 60 s).
#: * ``[physio]`` cardiac 0.8 %, respiratory 0.6 % RMS near ventricles and
#:   vessels, heart 1.1 Hz +/- 5 %, breathing 0.3 Hz +/- 10 %, depth +/- 30 %
#:   (Glover et al. 2000, MRM 44:162; Dagli et al. 1999, NeuroImage 9:407;
#:   Birn et al. 2006, NeuroImage 31:1536).
#:   Slow responses to breathing (RVT) 0.5 % and heart-rate changes 0.3 % in grey
#:   matter (Birn et al. 2008, NeuroImage 40:644; Chang et al. 2009, NeuroImage 44:857).
#: * ``[spontaneous]`` 1 % RMS coherent 0.01-0.1 Hz fluctuations in grey matter,
#:   12 mm smooth (Biswal et al. 1995, MRM 34:537; Fox & Raichle 2007, Nat Rev Neurosci 8:700).
#: * ``[motion_signal]`` 1 % per mm and 1 % per mm of change at edges
#:   (Friston et al. 1996, MRM 35:346; Power et al. 2012, NeuroImage 59:2142).
#: * ``[motion]`` a random walk within 0.5 mm and 0.5 degree: a cooperative adult.
REALISTIC_PRESET: dict[str, Any] = {
    "noise_pct": 1.0,
    "ar1": 0.4,
    "drift_pct": 0.5,
    "drift_poly_pct": 1.0,
    "drift_walk_pct": 0.5,
    "physio": {"cardiac_pct": 0.8, "resp_pct": 0.6, "cardiac_hz": 1.1, "cardiac_var_pct": 5.0,
               "resp_hz": 0.3, "resp_var_pct": 10.0, "resp_depth_var_pct": 30.0, "sampling": "slice",
               "rvt_pct": 0.5, "hr_pct": 0.3},
    "spontaneous": {"pct": 1.0, "fwhm_mm": 12.0, "n_patterns": 8},
    "motion_signal": {"pct_per_mm": 1.0, "deriv_pct_per_mm": 1.0},
    "motion": {"kind": "random_walk", "max_trans_mm": 0.5, "max_rot_deg": 0.5},
}


def apply_noise_preset(d: Mapping[str, Any]) -> dict[str, Any]:
    """``d`` with its ``noise_preset``'s values filled in where ``d`` sets none (see :data:`REALISTIC_PRESET`)."""
    out = dict(d)
    preset = d.get("noise_preset", "none")
    if preset not in NOISE_PRESETS:
        raise _fail("noise_preset", preset, " or ".join(repr(p) for p in NOISE_PRESETS))
    if preset == "none":
        return out
    for k, v in REALISTIC_PRESET.items():
        if k not in out or out[k] is None:
            out[k] = dict(v) if isinstance(v, dict) else v
        elif k in ("physio", "motion_signal", "spontaneous") and isinstance(out[k], Mapping):
            out[k] = {**v, **out[k]}  # the spec's own keys win
    return out


@dataclass(frozen=True)
class RunSpec:
    """Everything the simulated scanner needs to synthesise and export a run.

    Parameters
    ----------
    tr_s : float
        Repetition time in seconds (> 0).
    n_volumes : int
        Number of volumes (>= 1).
    shape : tuple of int
        Grid shape (i, j, k), axial RAS.
    voxel_mm : float
        Isotropic voxel size in millimeters.
    seed : int
        Seed of every random draw (noise, motion); same seed, same run.
    series : int
        Series number used in file names.
    filename_template : str
        ``str.format`` template with fields ``series`` and ``volume`` (1-based).
    blocks : tuple of Block
        Task blocks; times relative to the acquisition start of volume 0.
    regions : tuple of Region
        Active regions.
    couplings : tuple of Coupling
        Pairs of regions sharing a fluctuation whose correlation follows a
        condition's blocks (TOML ``[[couplings]]``; truth ``coupling_<a>_<b>``).
    multiecho : MultiEcho or None
        Multi-echo acquisition with a known T2* map, one file per echo (TOML
        table ``[multiecho]``; formats ``nifti`` and ``siemens-mosaic``; the
        default template is :data:`MULTIECHO_TEMPLATES`, a template must use ``{echo}``).
    noise_pct : float
        Gaussian noise sigma as a percentage of the mean brain intensity.
    ar1 : float
        Temporal AR(1) coefficient of the noise, in [0, 1).
    drift_pct : float
        Amplitude of the slow drift (linear plus one slow cosine), percent of signal.
    motion : Motion or None
        Head motion, or None for a perfectly still head.
    spikes : tuple of int
        0-based indices of volumes with a global intensity spike.
    spike_pct : float
        Size of each spike, percent of the signal.
    affine : tuple or None
        Optional 4x4 voxel-to-RAS-mm affine overriding the default diagonal grid.
    format : {"nifti", "siemens-mosaic", "dicom-slices"}
        Export format (see :mod:`scanner_sim.dicom_writer`); the default
        ``filename_template`` follows it (:data:`DEFAULT_TEMPLATES`).
    faults : Faults or None
        Scanner faults to inject (TOML table ``[faults]``).
    noise_preset : {"none", "realistic"}
        ``"realistic"`` fills every noise key the spec leaves out with
        :data:`REALISTIC_PRESET` (thermal 1 %, AR(1) 0.4, 2 % drift of three
        kinds, cardiac and respiratory fluctuations and their slow responses,
        coherent spontaneous fluctuations, motion-correlated signal, a small
        random-walk motion). Keys the spec sets win.
    drift_poly_pct : float
        Polynomial drift (Legendre degrees 1-3, random coefficients, 0 at
        volume 0), scaled so its largest absolute value over the run is this
        percent of signal; multiplies the image like ``drift_pct``. Default 0.
    drift_walk_pct : float
        Gaussian random-walk drift (0 at volume 0), scaled so its largest
        absolute value over the run is this percent of signal. Default 0.
    physio : Physio or None
        Cardiac and respiratory fluctuations (TOML table ``[physio]``).
    motion_signal : MotionSignal or None
        Spin-history and edge signal proportional to the through-slice
        displacement and its change (TOML table ``[motion_signal]``).
    spontaneous : Spontaneous or None
        Spatially coherent low-frequency BOLD fluctuations in grey matter
        (TOML table ``[spontaneous]``).
    noise_from : str or None
        A real task-free (or task-regressed) series, a 4D NIfTI or a DICOM
        folder (relative paths in a TOML file are relative to that file). Its
        volumes are the output, plus each region's activation:
        ``real_i(v) + mean_t(real(v)) * activation_i / 100`` inside the region,
        exactly the real volume outside. The spec's grid (``shape``,
        ``affine``), and by default ``tr_s`` and ``n_volumes``, come from the
        series; ``center_mm`` is in its scanner RAS mm; synthetic noise, drift,
        physio, motion and motion signal must stay off (the series has its own),
        and the truth has no motion or drift columns. Files store integers as
        a scanner does (NIfTI int16, mosaic 0-4095), so give the series in
        scanner units, not demeaned or in percent. ``spikes`` still apply.
    noise_from_series : int or None
        SeriesNumber to read when the DICOM folder holds several (default: the largest).
    noise_from_skip : int
        Leading volumes of the real series left out (e.g. non-steady-state ones). Default 0.
    noise_from_scale : float
        Factor applied to the real volumes before the activation is added
        (default 1): for series whose stored values are small after the DICOM
        rescale (Philips floating-point scaling gives 0-10), so the integer
        files keep their noise. The truth's reference is the scaled mean.
    """

    tr_s: float
    n_volumes: int
    shape: tuple[int, int, int] = (64, 64, 36)
    voxel_mm: float = 3.0
    seed: int = 0
    series: int = 1
    filename_template: str = DEFAULT_TEMPLATE
    blocks: tuple[Block, ...] = ()
    regions: tuple[Region, ...] = ()
    noise_pct: float = 1.0
    ar1: float = 0.3
    drift_pct: float = 1.0
    motion: Motion | None = None
    spikes: tuple[int, ...] = ()
    spike_pct: float = 5.0
    affine: tuple[tuple[float, ...], ...] | None = None
    format: str = "nifti"
    faults: Faults | None = None
    noise_preset: str = "none"
    drift_poly_pct: float = 0.0
    drift_walk_pct: float = 0.0
    physio: Physio | None = None
    motion_signal: MotionSignal | None = None
    spontaneous: Spontaneous | None = None
    noise_from: str | None = None
    noise_from_series: int | None = None
    noise_from_skip: int = 0
    noise_from_scale: float = 1.0
    couplings: tuple[Coupling, ...] = ()
    multiecho: MultiEcho | None = None

    _REQUIRED = ("tr_s", "n_volumes")

    @property
    def real_noise(self) -> bool:
        """True when the noise comes from a real series (``noise_from``)."""
        return self.noise_from is not None

    @property
    def extra_noise(self) -> bool:
        """True when a noise component beyond white/AR(1) noise and the cosine drift is on.

        Such runs (and real-noise runs) write ``nuisance.tsv`` into the truth folder.
        """
        return bool(self.drift_poly_pct > 0 or self.drift_walk_pct > 0
                    or (self.physio is not None and self.physio.enabled)
                    or (self.motion_signal is not None and self.motion_signal.enabled)
                    or (self.spontaneous is not None and self.spontaneous.enabled))

    @classmethod
    def allowed_keys(cls) -> tuple[str, ...]:
        """Top-level keys accepted in a spec."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @property
    def conditions(self) -> tuple[str, ...]:
        """Condition names in order of first appearance in ``blocks``."""
        return tuple(dict.fromkeys(b.condition for b in self.blocks))

    @property
    def duration_s(self) -> float:
        """Nominal run duration (n_volumes * tr_s)."""
        return self.n_volumes * self.tr_s

    @property
    def n_slices(self) -> int:
        """Slices per volume (the grid's third dimension)."""
        return int(self.shape[2])

    def filename(self, index: int, slice: int | None = None, series: int | None = None, echo: int = 0) -> str:
        """File name of the volume with 0-based ``index`` (the template's ``volume`` is 1-based).

        ``slice`` is the 0-based stored slice for ``dicom-slices`` (template
        fields ``slice`` and ``instance`` are 1-based); ``series`` defaults to
        the spec's; ``echo`` is the 0-based echo of a multi-echo run (template field ``echo``, 1-based).
        """
        s = 0 if slice is None else slice
        return self.filename_template.format(
            series=self.series if series is None else series, volume=index + 1, slice=s + 1,
            instance=index * self.n_slices + s + 1, echo=echo + 1,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict that :meth:`from_dict` accepts back."""

        def plain(x: Any) -> Any:
            if isinstance(x, tuple):
                return [plain(v) for v in x]
            if isinstance(x, dict):
                return {k: plain(v) for k, v in x.items()}
            return x

        d = plain(dataclasses.asdict(self))
        if d["motion"] is None:
            del d["motion"]
        if d["affine"] is None:
            del d["affine"]
        if self.faults is None:
            del d["faults"]
        else:
            d["faults"] = self.faults.to_dict()
        for k in ("physio", "motion_signal", "spontaneous", "noise_from", "noise_from_series", "multiecho"):
            if d[k] is None:
                del d[k]
        if not d["couplings"]:
            del d["couplings"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunSpec":
        """Validate ``d`` and build a spec.

        Raises
        ------
        SpecError
            Naming the key, the bad value and what is allowed.
        """
        _check_keys(d, "", cls.allowed_keys(), () if d.get("noise_from") is not None else cls._REQUIRED)
        d = apply_noise_preset(d)
        if d.get("noise_from") is not None:
            d = _with_real_series(d)
        tr_s = _number("tr_s", d["tr_s"], gt=0, unit="seconds")
        n_volumes = _integer("n_volumes", d["n_volumes"], ge=1)

        shape = d.get("shape", [64, 64, 36])
        if (
            not isinstance(shape, (list, tuple))
            or len(shape) != 3
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 2 for s in shape)
        ):
            raise _fail("shape", shape, "a list of 3 integers >= 2 [ni, nj, nk]")

        fmt = d.get("format", "nifti")
        if fmt not in FORMATS:
            raise _fail("format", fmt, " or ".join(repr(f) for f in FORMATS))
        multiecho = None if d.get("multiecho") is None else MultiEcho.from_dict(d["multiecho"])
        if multiecho is not None and fmt not in MULTIECHO_TEMPLATES:
            raise _fail("format", fmt, " or ".join(repr(f) for f in MULTIECHO_TEMPLATES) + " with [multiecho]")
        default_t = (MULTIECHO_TEMPLATES if multiecho is not None else DEFAULT_TEMPLATES)[fmt]
        template = d.get("filename_template", default_t)
        fields = "{series}, {volume}" + (", {slice}, {instance}" if fmt == "dicom-slices" else "") + (
            ", {echo}" if multiecho is not None else "")
        tmpl_allowed = f"a str.format template using {fields}, e.g. " + repr(default_t)
        if not isinstance(template, str):
            raise _fail("filename_template", template, tmpl_allowed)
        nk = int(shape[2]) if isinstance(shape, (list, tuple)) and len(shape) == 3 else 2
        try:
            names = [template.format(series=1, volume=v, slice=k, instance=(v - 1) * nk + k, echo=1)
                     for v, k in ((1, 1), (2, 1), (1, 2))]
            if multiecho is not None and template.format(series=1, volume=1, slice=1, instance=1, echo=2) == names[0]:
                raise _fail("filename_template", template, tmpl_allowed + " (must vary with {echo} with [multiecho])")
        except (KeyError, IndexError, ValueError) as exc:
            raise _fail("filename_template", template, tmpl_allowed) from exc
        distinct = len(set(names)) == 3 if fmt == "dicom-slices" else names[0] != names[1]
        bad_ext = fmt == "nifti" and not names[0].endswith(".nii")
        if not distinct or bad_ext or "/" in names[0] or names[0].startswith("."):
            what = "{volume} and {slice} (or {instance})" if fmt == "dicom-slices" else "{volume}"
            raise _fail(
                "filename_template",
                template,
                tmpl_allowed + f" (must vary with {what}"
                + (", end in '.nii'" if fmt == "nifti" else "") + ", no '/' or leading '.')",
            )

        blocks_raw = d.get("blocks", [])
        if not isinstance(blocks_raw, (list, tuple)):
            raise _fail("blocks", blocks_raw, "a list of {condition, onset_s, duration_s} tables")
        blocks = tuple(Block.from_dict(b, f"blocks[{i}]") for i, b in enumerate(blocks_raw))
        conditions = tuple(dict.fromkeys(b.condition for b in blocks))

        regions_raw = d.get("regions", [])
        if not isinstance(regions_raw, (list, tuple)):
            raise _fail("regions", regions_raw, "a list of {name, center_mm, radius_mm, ...} tables")
        regions = tuple(Region.from_dict(r, f"regions[{i}]") for i, r in enumerate(regions_raw))
        seen: set[str] = set()
        for i, r in enumerate(regions):
            if r.name in seen:
                raise _fail(f"regions[{i}].name", r.name, "a name not used by another region")
            seen.add(r.name)
            if r.condition not in conditions:
                raise _fail(
                    f"regions[{i}].condition",
                    r.condition,
                    f"one of the block conditions {list(conditions)}",
                )

        couplings_raw = d.get("couplings", [])
        if not isinstance(couplings_raw, (list, tuple)):
            raise _fail("couplings", couplings_raw, "a list of {regions, condition, high, low, pct, band_hz} tables")
        couplings = tuple(Coupling.from_dict(c, f"couplings[{i}]", tr_s) for i, c in enumerate(couplings_raw))
        coupled: set[str] = set()
        for i, c in enumerate(couplings):
            for j, name in enumerate(c.regions):
                if name not in seen:
                    raise _fail(f"couplings[{i}].regions[{j}]", name, f"one of the region names {sorted(seen)}")
                if name in coupled:
                    raise _fail(f"couplings[{i}].regions[{j}]", name, "a region in no other coupling")
                coupled.add(name)
            if c.condition not in conditions:
                raise _fail(f"couplings[{i}].condition", c.condition, f"one of the block conditions {list(conditions)}")

        motion = None
        if d.get("motion") is not None:
            motion = Motion.from_dict(d["motion"])

        spikes_raw = d.get("spikes", [])
        if not isinstance(spikes_raw, (list, tuple)):
            raise _fail("spikes", spikes_raw, f"a list of volume indices in [0, {n_volumes - 1}]")
        spikes = tuple(
            sorted(
                {
                    _integer(f"spikes[{i}]", s, ge=0)
                    for i, s in enumerate(spikes_raw)
                }
            )
        )
        for i, s in enumerate(spikes):
            if s >= n_volumes:
                raise _fail("spikes", list(spikes_raw), f"volume indices in [0, {n_volumes - 1}] (0-based)")

        affine = d.get("affine")
        if affine is not None:
            ok = (
                isinstance(affine, (list, tuple))
                and len(affine) == 4
                and all(isinstance(r, (list, tuple)) and len(r) == 4 for r in affine)
                and all(
                    not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
                    for r in affine
                    for v in r
                )
            )
            if ok:
                affine = tuple(tuple(float(v) for v in r) for r in affine)
                ok = affine[3] == (0.0, 0.0, 0.0, 1.0)
                det = _det3([r[:3] for r in affine[:3]])
                ok = ok and abs(det) > 1e-6
            if not ok:
                raise _fail("affine", d.get("affine"), "a 4x4 list of numbers, invertible, last row [0, 0, 0, 1]")

        return cls(
            tr_s=tr_s,
            n_volumes=n_volumes,
            shape=tuple(int(s) for s in shape),  # type: ignore[arg-type]
            voxel_mm=_number("voxel_mm", d.get("voxel_mm", 3.0), gt=0, unit="mm"),
            seed=_integer("seed", d.get("seed", 0), ge=0),
            series=_integer("series", d.get("series", 1), ge=0),
            filename_template=template,
            blocks=blocks,
            regions=regions,
            noise_pct=_number("noise_pct", d.get("noise_pct", 1.0), ge=0, unit="percent"),
            ar1=_number("ar1", d.get("ar1", 0.3), ge=0, lt=1),
            drift_pct=_number("drift_pct", d.get("drift_pct", 1.0), ge=0, unit="percent"),
            motion=motion,
            spikes=spikes,
            spike_pct=_number("spike_pct", d.get("spike_pct", 5.0), gt=-100, unit="percent"),
            affine=affine,  # type: ignore[arg-type]
            format=fmt,
            faults=None if d.get("faults") is None else Faults.from_dict(d["faults"], n_volumes),
            noise_preset=d.get("noise_preset", "none"),
            drift_poly_pct=_number("drift_poly_pct", d.get("drift_poly_pct", 0.0), ge=0, lt=100, unit="percent"),
            drift_walk_pct=_number("drift_walk_pct", d.get("drift_walk_pct", 0.0), ge=0, lt=100, unit="percent"),
            physio=None if d.get("physio") is None else Physio.from_dict(d["physio"]),
            motion_signal=None if d.get("motion_signal") is None else MotionSignal.from_dict(d["motion_signal"]),
            spontaneous=None if d.get("spontaneous") is None else Spontaneous.from_dict(d["spontaneous"]),
            noise_from=d.get("noise_from"),
            noise_from_series=None if d.get("noise_from_series") is None
            else _integer("noise_from_series", d["noise_from_series"], ge=0),
            noise_from_skip=_integer("noise_from_skip", d.get("noise_from_skip", 0), ge=0),
            noise_from_scale=_number("noise_from_scale", d.get("noise_from_scale", 1.0), gt=0),
            couplings=couplings,
            multiecho=multiecho,
        )


#: Keys that must stay off (absent, or zero) with ``noise_from``: the real series has its own.
_SYNTHETIC_NOISE_KEYS = ("noise_pct", "drift_pct", "drift_poly_pct", "drift_walk_pct")

#: Keys a switch to real noise removes from a synthetic spec (``scanner-sim synth --noise-from``,
#: :func:`scanner_sim.generate.as_spec`): the real series brings its noise and its grid.
REAL_NOISE_REPLACES = ("noise_pct", "ar1", "drift_pct", "drift_poly_pct", "drift_walk_pct", "physio", "motion",
                       "motion_signal", "spontaneous", "noise_preset", "shape", "voxel_mm", "affine")


def _with_real_series(d: Mapping[str, Any]) -> dict[str, Any]:
    """``d`` with grid, TR and length from its ``noise_from`` series, checked for conflicts.

    The series is probed (headers and one volume) with :func:`scanner_sim.realnoise.probe_series`.
    """
    from .realnoise import RealSeriesError, probe_series

    out = dict(d)
    src = d["noise_from"]
    if not isinstance(src, str) or not src:
        raise _fail("noise_from", src, "a path (string) to a 4D NIfTI or a DICOM folder")
    if out.get("noise_preset", "none") != "none":
        raise _fail("noise_preset", out["noise_preset"], "'none' with noise_from (the real series brings the noise)")
    for k in _SYNTHETIC_NOISE_KEYS:
        if k in out and out[k] != 0:
            raise _fail(k, out[k], "0 or absent with noise_from (the real series brings its own noise and drift)")
        out[k] = 0.0
    for k in ("motion", "physio", "motion_signal", "spontaneous", "multiecho"):
        if out.get(k) is not None:
            raise _fail(k, out[k], "absent with noise_from (the real series brings its own)")
    series = out.get("noise_from_series")
    if series is not None:
        series = _integer("noise_from_series", series, ge=0)
    skip = _integer("noise_from_skip", out.get("noise_from_skip", 0), ge=0)
    tr_given = out.get("tr_s")
    try:
        real = probe_series(src, series=series)
    except RealSeriesError as exc:
        raise SpecError(f"Invalid value for 'noise_from': {src!r}. {exc}") from None
    # absolute, so spec.json names the series wherever it is read from
    out["noise_from"] = str(Path(src).resolve())
    available = real.n_volumes - skip
    if available < 1:
        raise _fail("noise_from_skip", skip, f"an integer < {real.n_volumes} (the series' volumes)")
    out["noise_from_skip"] = skip
    out["noise_from_series"] = real.series
    if tr_given is None:
        if real.tr_s is None:
            raise SpecError(f"'noise_from' series '{src}' has no TR in its headers; set 'tr_s' (seconds).")
        out["tr_s"] = real.tr_s
    elif real.tr_s is not None and not (isinstance(tr_given, (int, float)) and abs(tr_given - real.tr_s) < 1e-3):
        # the real noise was sampled at the series' TR: another TR would misstate its time scale
        raise _fail("tr_s", tr_given, f"absent or {real.tr_s:g} (the TR of 'noise_from', seconds)")
    n = out.get("n_volumes", available)
    n = _integer("n_volumes", n, ge=1)
    if n > available:
        raise _fail("n_volumes", n, f"at most {available} (the volumes of 'noise_from' after noise_from_skip)")
    out["n_volumes"] = n
    # the grid is the real one; a spec that repeats it (spec.json) must agree
    if "shape" in out and [int(v) for v in out["shape"]] != list(real.shape):
        raise _fail("shape", out["shape"], f"absent or {list(real.shape)} (the grid of 'noise_from')")
    out["shape"] = list(real.shape)
    aff = [[float(v) for v in row] for row in real.affine]
    if out.get("affine") is not None:
        given = out["affine"]
        close = (isinstance(given, (list, tuple)) and len(given) == 4
                 and all(isinstance(r, (list, tuple)) and len(r) == 4 for r in given)
                 and all(abs(float(given[i][j]) - aff[i][j]) < 1e-4 for i in range(4) for j in range(4)))
        if not close:
            raise _fail("affine", given, f"absent or {aff} (the affine of 'noise_from', RAS mm)")
    out["affine"] = aff
    return out


def _det3(m: list[tuple[float, ...]]) -> float:
    return (
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    )


def load_spec(path: str | Path, overrides: Mapping[str, Any] | None = None) -> RunSpec:
    """Read and validate a TOML run spec.

    Parameters
    ----------
    path : str or Path
        The TOML file.
    overrides : mapping, optional
        Top-level keys replacing the file's before validation (e.g.
        ``{"noise_preset": "realistic", "seed": 3}``); a value of None removes
        the key; a relative ``noise_from`` given here is relative to the
        working directory.

    Raises
    ------
    SpecError
        If the file is missing, is not valid TOML, or fails validation.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            d = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise SpecError(f"Spec file not found: '{path}'.") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"Spec file '{path}' is not valid TOML: {exc}.") from exc
    src = d.get("noise_from")
    if isinstance(src, str) and src and not Path(src).is_absolute():
        # like every path in a config file: relative to the file, not to the working directory
        d["noise_from"] = str((path.parent / src).resolve())
    for k, v in (overrides or {}).items():
        if v is None:  # an override of None removes the key (its default, or what noise_from derives, applies)
            d.pop(k, None)
        else:
            d[k] = str(Path(v).resolve()) if k == "noise_from" and isinstance(v, (str, Path)) else v
    try:
        return RunSpec.from_dict(d)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None
