"""Haemodynamic response: SPM's canonical double-gamma HRF and block responses."""

from __future__ import annotations

from typing import Iterable

import numpy as np
from scipy.stats import gamma

from .spec import Block

__all__ = ["spm_hrf", "block_response", "boxcar", "FINE_DT_S"]

#: Time step (s) of the fine grid on which boxcars are convolved.
FINE_DT_S = 0.1


def spm_hrf(dt_s: float = FINE_DT_S, length_s: float = 32.0) -> np.ndarray:
    """SPM's canonical double-gamma HRF sampled every ``dt_s`` seconds.

    Gamma densities with shape 6 (response, "peak delay 6 s") and 16
    (undershoot, 16 s), unit scale, undershoot ratio 1/6, as in ``spm_hrf``.
    The response peaks near 5 s.

    Parameters
    ----------
    dt_s : float
        Sampling step in seconds.
    length_s : float
        Kernel length in seconds (SPM uses 32 s).

    Returns
    -------
    np.ndarray
        HRF samples at t = 0, dt, 2 dt, ... normalised so that ``sum(h) * dt_s == 1``
        (unit integral), which makes a long block's response plateau at 1.
    """
    if not dt_s > 0:
        raise ValueError(f"Invalid value for 'dt_s': {dt_s!r}. Allowed: a number > 0 (seconds).")
    t = np.arange(0.0, length_s + dt_s / 2, dt_s)
    h = gamma.pdf(t, 6.0) - gamma.pdf(t, 16.0) / 6.0
    return h / (h.sum() * dt_s)


def boxcar(blocks: Iterable[Block], condition: str, t_s: np.ndarray) -> np.ndarray:
    """1.0 where a block of ``condition`` is on (onset <= t < onset + duration), else 0.0."""
    out = np.zeros(t_s.shape, dtype=float)
    for b in blocks:
        if b.condition == condition:
            out[(t_s >= b.onset_s) & (t_s < b.onset_s + b.duration_s)] = 1.0
    return out


def block_response(
    blocks: Iterable[Block],
    condition: str,
    tr_s: float,
    n_volumes: int,
    dt_s: float = FINE_DT_S,
) -> np.ndarray:
    """Expected BOLD response of one condition at each volume's acquisition time.

    The condition's boxcar is built on a fine grid (``dt_s``), convolved with
    :func:`spm_hrf` and sampled at t_i = i * tr_s (volume 0 at t = 0).

    Parameters
    ----------
    blocks : iterable of Block
        Task blocks (times relative to the acquisition of volume 0).
    condition : str
        Which condition's blocks to use.
    tr_s : float
        Repetition time in seconds.
    n_volumes : int
        Number of volumes.
    dt_s : float
        Fine grid step in seconds.

    Returns
    -------
    np.ndarray, shape (n_volumes,)
        Response scaled so that a long block plateaus at 1.0.
    """
    blocks = list(blocks)
    t_vol = np.arange(n_volumes) * tr_s
    n_fine = int(np.ceil(t_vol[-1] / dt_s)) + 2
    t_fine = np.arange(n_fine) * dt_s
    h = spm_hrf(dt_s)
    # Causal discrete convolution; '* dt_s' turns the sum into an integral so
    # that the unit-integral kernel gives a plateau of exactly 1.
    resp = np.convolve(boxcar(blocks, condition, t_fine), h)[:n_fine] * dt_s
    return np.interp(t_vol, t_fine, resp)
