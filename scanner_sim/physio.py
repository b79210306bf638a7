"""Realistic noise components: cardiac and respiratory traces, drifts, spatial weights.

Everything here is deterministic given a seed stream, so the truth written
beside a run (``physio.tsv.gz``, ``nuisance.tsv``) is exactly what went into
its volumes.

Physiological traces
--------------------
On a fine grid (:data:`TRACE_HZ`, from t = 0, the acquisition start of volume 0)::

    f_c(t) = cardiac_hz * (1 + cardiac_var_pct / 100 * z_c(t))     instantaneous heart rate (Hz)
    phi_c  = phi_c0 + 2 pi * integral of f_c                        cardiac phase (rad)
    c(t)   = (cos phi_c + 0.5 cos(2 phi_c + 0.6)) / sqrt(0.625)     unit-RMS cardiac waveform
    f_r, phi_r likewise with resp_hz, resp_var_pct
    depth  = max(0, 1 + resp_depth_var_pct / 100 * z_d(t)), scaled to unit mean square
    r(t)   = depth * (cos phi_r + 0.2 cos(2 phi_r + 0.3)) / sqrt(0.52)   unit-RMS respiratory waveform

``z_c``, ``z_r``, ``z_d`` are zero-mean, unit-variance sums of slow sinusoids
(random frequencies in 0.01-0.15 Hz, 0.01-0.1 Hz and 0.005-0.05 Hz: the
low-frequency band of heart-rate variability, and slow changes of breathing).
The two-harmonic shapes are those RETROICOR models (Glover et al. 2000).

Slow physiological responses (per volume, global in grey matter)::

    rvt(t) = z(resp_depth * resp_rate)  (*)  RRF      Birn et al. 2008
    hr(t)  = z(heart_rate)              (*)  CRF      Chang et al. 2009

each scaled to unit standard deviation over the run's volumes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .spec import Physio

__all__ = [
    "TRACE_HZ",
    "PhysioTraces",
    "make_physio_traces",
    "slow_process",
    "drift_poly",
    "drift_walk",
    "physio_weight",
    "edge_weight",
    "slice_times",
    "respiration_response",
    "cardiac_response",
    "slow_physio_responses",
    "grey_weight",
    "spontaneous_patterns",
    "spontaneous_timecourses",
]

#: Sampling rate of the physiological traces (Hz), a typical pulse-oximeter / belt rate.
TRACE_HZ = 100.0

_CARD_NORM = np.sqrt(0.5 * (1.0 + 0.5**2))  # RMS of cos x + 0.5 cos(2x + a) over a uniform phase
_RESP_NORM = np.sqrt(0.5 * (1.0 + 0.2**2))


def cardiac_waveform(phase: np.ndarray) -> np.ndarray:
    """Unit-RMS cardiac waveform of the cardiac phase (radians)."""
    return (np.cos(phase) + 0.5 * np.cos(2.0 * phase + 0.6)) / _CARD_NORM


def resp_waveform(phase: np.ndarray) -> np.ndarray:
    """Unit-RMS respiratory waveform of the respiratory phase (radians), before the depth."""
    return (np.cos(phase) + 0.2 * np.cos(2.0 * phase + 0.3)) / _RESP_NORM


def slow_process(rng: np.random.Generator, t_s: np.ndarray, f_lo_hz: float, f_hi_hz: float,
                 n_terms: int = 8) -> np.ndarray:
    """Zero-mean, unit-variance sum of ``n_terms`` sinusoids with random frequencies in [f_lo_hz, f_hi_hz].

    Normalised empirically over ``t_s`` so the stated variability holds over the run itself.
    """
    freqs = rng.uniform(f_lo_hz, f_hi_hz, size=n_terms)
    phases = rng.uniform(0.0, 2.0 * np.pi, size=n_terms)
    amps = rng.uniform(0.5, 1.0, size=n_terms)
    z = (amps[:, None] * np.sin(2.0 * np.pi * freqs[:, None] * t_s[None, :] + phases[:, None])).sum(0)
    z = z - z.mean()
    sd = z.std()
    return z / sd if sd > 0 else z


@dataclass(frozen=True)
class PhysioTraces:
    """The true cardiac and respiratory traces of a run, on a :data:`TRACE_HZ` grid.

    Attributes
    ----------
    t_s : np.ndarray
        Sample times in seconds from the acquisition start of volume 0.
    cardiac_phase, resp_phase : np.ndarray
        Unwrapped phases in radians (strictly increasing).
    heart_rate_hz, resp_rate_hz : np.ndarray
        Instantaneous rates in hertz.
    resp_depth : np.ndarray
        Breathing depth (envelope), mean square 1.
    """

    t_s: np.ndarray
    cardiac_phase: np.ndarray
    resp_phase: np.ndarray
    heart_rate_hz: np.ndarray
    resp_rate_hz: np.ndarray
    resp_depth: np.ndarray

    @property
    def cardiac(self) -> np.ndarray:
        """Unit-RMS cardiac waveform at each sample (what a pulse oximeter would record)."""
        return cardiac_waveform(self.cardiac_phase)

    @property
    def respiratory(self) -> np.ndarray:
        """Unit-RMS respiratory waveform at each sample, depth included (a respiratory belt)."""
        return self.resp_depth * resp_waveform(self.resp_phase)

    def at(self, times_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cardiac, respiratory) waveform values at arbitrary times (seconds), same shape as ``times_s``.

        Phases and depth are interpolated linearly (they are smooth at
        :data:`TRACE_HZ`), then the waveforms evaluated: exact shapes, no
        interpolation of the fast oscillation itself.
        """
        t = np.asarray(times_s, dtype=float)
        pc = np.interp(t, self.t_s, self.cardiac_phase)
        pr = np.interp(t, self.t_s, self.resp_phase)
        depth = np.interp(t, self.t_s, self.resp_depth)
        return cardiac_waveform(pc), depth * resp_waveform(pr)


def make_physio_traces(physio: Physio, duration_s: float, rng: np.random.Generator) -> PhysioTraces:
    """The traces of one run (see the module docstring), covering ``[0, duration_s]`` plus one second."""
    n = int(np.ceil((duration_s + 1.0) * TRACE_HZ)) + 1
    t = np.arange(n) / TRACE_HZ
    f_c = physio.cardiac_hz * (1.0 + physio.cardiac_var_pct / 100.0 * slow_process(rng, t, 0.01, 0.15))
    f_r = physio.resp_hz * (1.0 + physio.resp_var_pct / 100.0 * slow_process(rng, t, 0.01, 0.1))
    depth = np.maximum(0.0, 1.0 + physio.resp_depth_var_pct / 100.0 * slow_process(rng, t, 0.005, 0.05))
    depth = depth / np.sqrt(np.mean(depth**2))
    # rates are bounded in the spec (var < 30 %, |z| rarely > 3), so the phases keep increasing;
    # the clip only guards the extreme tail
    f_c, f_r = np.maximum(f_c, 0.1 * physio.cardiac_hz), np.maximum(f_r, 0.1 * physio.resp_hz)
    dt = 1.0 / TRACE_HZ
    phi_c = rng.uniform(0, 2 * np.pi) + 2.0 * np.pi * np.concatenate([[0.0], np.cumsum(f_c[:-1]) * dt])
    phi_r = rng.uniform(0, 2 * np.pi) + 2.0 * np.pi * np.concatenate([[0.0], np.cumsum(f_r[:-1]) * dt])
    return PhysioTraces(t, phi_c, phi_r, f_c, f_r, depth)


def slice_times(affine: np.ndarray, shape: tuple[int, int, int], tr_s: float) -> np.ndarray:
    """Acquisition offset (s) of each k slice within its volume: ascending, ``TR / n_slices`` apart.

    The order is the one the DICOM writers declare (stored slices ascending
    along the slice normal, :func:`scanner_sim.dicom_writer.geometry_from_affine`),
    so the physiological noise and the written slice times agree.
    """
    from .dicom_writer import geometry_from_affine

    nk = int(shape[2])
    try:
        k_of_slice = geometry_from_affine(affine, shape).k_of_slice
    except ValueError:  # sheared affine (NIfTI only): plain ascending k
        k_of_slice = np.arange(nk)
    out = np.empty(nk)
    out[k_of_slice] = np.arange(nk) * tr_s / nk
    return out


# --------------------------------------------------------------------------- drifts
def _scale_to_peak(x: np.ndarray, peak: float) -> np.ndarray:
    top = float(np.max(np.abs(x))) if x.size else 0.0
    return x * (peak / top) if top > 0 else np.zeros_like(x)


def drift_poly(n_volumes: int, peak_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Polynomial drift: Legendre degrees 1-3 with N(0, 1) weights, 0 at volume 0, peak ``|value|`` = ``peak_fraction``."""
    u = np.linspace(-1.0, 1.0, n_volumes)
    coef = np.r_[0.0, rng.standard_normal(3)]
    x = np.polynomial.legendre.legval(u, coef)
    return _scale_to_peak(x - x[0], peak_fraction)


def drift_walk(n_volumes: int, peak_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian random walk from 0 at volume 0, peak ``|value|`` = ``peak_fraction``."""
    steps = rng.standard_normal(n_volumes)
    steps[0] = 0.0
    return _scale_to_peak(np.cumsum(steps), peak_fraction)


# --------------------------------------------------------------------------- spatial weights
def _voxel_sizes(affine: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)


def physio_weight(data: np.ndarray, brain_mask: np.ndarray, affine: np.ndarray,
                  csf: np.ndarray | None = None, edge_mm: float = 6.0) -> np.ndarray:
    """Where cardiac and respiratory fluctuations live: a weight in [0, 1] per voxel.

    ``max(csf smoothed by one voxel, exp(-depth / edge_mm))`` inside the brain
    mask, ``depth`` the distance (mm) to the nearest voxel outside it:
    pulsatile CSF (ventricles, sulci) and the brain's surface, where the large
    vessels and sinuses run (Dagli et al. 1999; Glover et al. 2000), get about
    1, deep white matter about 0. Without a CSF map, CSF is estimated from the
    intensity (the phantom's CSF is its brightest tissue).
    """
    from scipy import ndimage

    from .phantom import CSF_LEVEL, GM_LEVEL

    if csf is None:
        csf = np.clip((np.asarray(data, float) - GM_LEVEL) / (CSF_LEVEL - GM_LEVEL), 0.0, 1.0)
    csf_s = ndimage.gaussian_filter(np.where(brain_mask, csf, 0.0).astype(float), 1.0)
    depth = ndimage.distance_transform_edt(brain_mask, sampling=_voxel_sizes(affine))
    edge = np.exp(-depth / edge_mm)
    return np.where(brain_mask, np.clip(np.maximum(csf_s, edge), 0.0, 1.0), 0.0).astype(np.float32)


def edge_weight(data: np.ndarray, affine: np.ndarray, brain_mask: np.ndarray) -> np.ndarray:
    """Intensity-edge weight in [0, 1]: gradient magnitude of the reference over its 99th percentile near the brain.

    The gradient (per mm, after a one-voxel Gaussian) is large at the
    brain/background and tissue/CSF borders, where motion changes partial
    volumes and spin histories most, and about 0 in uniform tissue.
    """
    from scipy import ndimage

    img = ndimage.gaussian_filter(np.asarray(data, dtype=float), 1.0)
    grads = np.gradient(img, *_voxel_sizes(affine))
    mag = np.sqrt(sum(g * g for g in grads))
    near = ndimage.binary_dilation(brain_mask, iterations=2)
    scale = float(np.percentile(mag[near], 99)) if near.any() else float(mag.max())
    return np.clip(mag / scale, 0.0, 1.0).astype(np.float32) if scale > 0 else np.zeros(data.shape, np.float32)


# --------------------------------------------------------------------------- slow physiological responses
def respiration_response(t_s: np.ndarray) -> np.ndarray:
    """Respiration response function (Birn et al. 2008): ``0.6 t^2.1 e^(-t/1.6) - 0.0023 t^3.54 e^(-t/4.25)``."""
    t = np.asarray(t_s, dtype=float)
    return 0.6 * t**2.1 * np.exp(-t / 1.6) - 0.0023 * t**3.54 * np.exp(-t / 4.25)


def cardiac_response(t_s: np.ndarray) -> np.ndarray:
    """Cardiac response function (Chang et al. 2009): ``0.6 t^2.7 e^(-t/1.6) - 16 / sqrt(18 pi) e^(-(t-12)^2/18)``."""
    t = np.asarray(t_s, dtype=float)
    return 0.6 * t**2.7 * np.exp(-t / 1.6) - 16.0 / np.sqrt(18.0 * np.pi) * np.exp(-((t - 12.0) ** 2) / 18.0)


def _unit(x: np.ndarray) -> np.ndarray:
    x = x - x.mean()
    sd = x.std()
    return x / sd if sd > 0 else x


def slow_physio_responses(traces: PhysioTraces, onsets_s: np.ndarray, dt_s: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(rvt, hr) responses at ``onsets_s``, each with unit standard deviation (see the module docstring).

    The inputs are z-scored before the causal convolution (on a ``dt_s``
    grid, kernels 40 s long), so the response starts near its mean at t = 0.
    """
    t = np.arange(0.0, traces.t_s[-1], dt_s)
    rvt_in = _unit(np.interp(t, traces.t_s, traces.resp_depth * traces.resp_rate_hz))
    hr_in = _unit(np.interp(t, traces.t_s, traces.heart_rate_hz))
    k = np.arange(0.0, 40.0, dt_s)
    out = []
    for x, kern in ((rvt_in, respiration_response(k)), (hr_in, cardiac_response(k))):
        y = np.convolve(x, kern)[: len(t)] * dt_s
        out.append(_unit(np.interp(onsets_s, t, y)))
    return out[0], out[1]


def grey_weight(brain_mask: np.ndarray, gm: np.ndarray) -> np.ndarray:
    """Where BOLD-like fluctuations live: ``0.25 + 0.75 * gm`` inside the brain, 0 outside."""
    return np.where(brain_mask, 0.25 + 0.75 * np.clip(gm, 0.0, 1.0), 0.0).astype(np.float32)


def spontaneous_patterns(brain_mask: np.ndarray, affine: np.ndarray, fwhm_mm: float, n: int,
                         rng: np.random.Generator) -> np.ndarray:
    """``n`` Gaussian-smoothed white-noise fields of ``fwhm_mm``, each unit variance over the brain, shape (n, *grid).

    float32: eight fields of a 64 x 64 x 36 grid take 4.7 MB.
    """
    from scipy import ndimage

    sigma_vox = fwhm_mm / np.sqrt(8.0 * np.log(2.0)) / _voxel_sizes(affine)
    out = np.empty((n, *brain_mask.shape), dtype=np.float32)
    for k in range(n):
        f = ndimage.gaussian_filter(rng.standard_normal(brain_mask.shape), sigma_vox, mode="wrap")
        inside = f[brain_mask]
        out[k] = (f - inside.mean()) / (inside.std() if inside.std() > 0 else 1.0)
    return out


def spontaneous_timecourses(n: int, onsets_s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``n`` unit-variance slow processes (0.01-0.1 Hz) at the volumes' onsets, shape (n, n_volumes)."""
    return np.stack([slow_process(rng, onsets_s, 0.01, 0.1) for _ in range(n)])
