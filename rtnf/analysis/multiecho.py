"""Multi-echo combination: T2*-weighted averaging of the echoes of each volume.

The echoes of a volume are averaged with per-voxel weights (Posse et al.
1999, MRM 42:87; tedana's ``t2s`` combination)::

    w_e(v) = TE_e * exp(-TE_e / T2*(v)) / sum_k TE_k * exp(-TE_k / T2*(v))

which weights each echo by its BOLD contrast: the early echo where signal
decays fast (short T2*, next to air: the anterior insula, orbitofrontal
cortex), the later echoes elsewhere. The T2* map is fitted once, on the mean of
the first ``fit_volumes`` volumes of the run, by tedana's log-linear
monoexponential fit (:func:`tedana.decay.fit_decay`) over every voxel with
signal (fitting the mean instead of every volume gives the same T2* within the
noise at a fifth of the cost: 65 vs 303 ms for 60,000 voxels, 3 echoes, 10
volumes, measured on this machine under load); the weights are
the formula of :func:`tedana.combine.make_optcom` (checked against it in the
tests), applied per volume as one multiply-add per echo.

Before the fit (the first ``fit_volumes`` volumes), each volume is the plain
mean of its echoes (``before_fit = "mean"``) or its echo closest to 30 ms
(``"closest_30ms"``, what a single-echo sequence would give). So that the
run's signal does not jump when the fitted weights take over (the GLM, the
baseline and the realignment reference have seen the earlier volumes), the
fitted weights are scaled per voxel so that the combination's mean over the
fit volumes equals the pre-fit combination's: a constant factor per voxel,
which changes neither a voxel's temporal SNR nor its percent signal change.
Voxels without signal at two echoes (outside the head) keep the pre-fit weights.
"""

from __future__ import annotations

import logging
import time

import numpy as np

log = logging.getLogger(__name__)

#: Fitted T2* values are limited to this range (ms): a fit outside it is noise, not tissue.
T2STAR_LIMITS_MS = (1.0, 500.0)
#: A voxel takes part in the fit when its first echo's mean exceeds this fraction of the 99th percentile.
SIGNAL_FRACTION = 0.05
BEFORE_FIT = ("mean", "closest_30ms")


def prefit_weights(tes_ms: tuple[float, ...], before_fit: str) -> np.ndarray:
    """Scalar echo weights before the T2* fit: equal (``"mean"``) or all on the echo closest to 30 ms."""
    n = len(tes_ms)
    if before_fit == "mean":
        return np.full(n, 1.0 / n)
    if before_fit == "closest_30ms":
        w = np.zeros(n)
        w[int(np.argmin(np.abs(np.asarray(tes_ms) - 30.0)))] = 1.0
        return w
    raise ValueError(f"before_fit must be one of {BEFORE_FIT}, not {before_fit!r}")


def t2star_weights(t2star_ms: np.ndarray, tes_ms: tuple[float, ...]) -> np.ndarray:
    """Posse's weights ``TE_e exp(-TE_e / T2*)``, normalised to sum 1 per voxel; shape ``(n_echoes, *t2star.shape)``."""
    tes = np.asarray(tes_ms, dtype=np.float64).reshape((-1,) + (1,) * t2star_ms.ndim)
    alpha = tes * np.exp(-tes / t2star_ms[None])
    return alpha / alpha.sum(axis=0, keepdims=True)


class EchoCombiner:
    """T2*-weighted combination of a run's multi-echo volumes, fitted on its first volumes.

    Parameters
    ----------
    fit_volumes : int
        Volumes whose echoes the T2* map is fitted on (``multiecho.fit_volumes``).
    before_fit : {"mean", "closest_30ms"}
        The combination until then (``multiecho.before_fit``).

    Attributes
    ----------
    t2star_ms, s0 : ndarray or None
        The fitted T2* map (ms, NaN where not fitted) and S0, once fitted.
    weights : ndarray, shape (n_echoes, nx, ny, nz), float32, or None
        The per-voxel echo weights in use after the fit (scaled; see the module docstring).
    fit_s : float or None
        Seconds the fit took (once, in the volume that completed the fit set).
    n_fitted : int
        Volumes combined with the fitted weights so far (1: the volume just combined is the first; its noise
        differs from the pre-fit combination's, so statistics of the earlier volumes' noise start again there).
    """

    def __init__(self, fit_volumes: int = 10, before_fit: str = "mean") -> None:
        if before_fit not in BEFORE_FIT:
            raise ValueError(f"before_fit must be one of {BEFORE_FIT}, not {before_fit!r}")
        self.fit_volumes = int(fit_volumes)
        self.before_fit = before_fit
        self.tes_ms: tuple[float, ...] | None = None
        self.t2star_ms: np.ndarray | None = None
        self.s0: np.ndarray | None = None
        self.weights: np.ndarray | None = None
        self.fit_s: float | None = None
        self.n_fitted = 0
        self._prefit: np.ndarray | None = None
        self._sum: np.ndarray | None = None  # sum of the echoes of the volumes seen before the fit
        self._n = 0
        # tedana takes about a second to import: here, at the start of the run, not inside a volume
        from tedana import decay  # noqa: F401

    @property
    def fitted(self) -> bool:
        """Whether the T2*-weighted weights are in use."""
        return self.weights is not None

    def combine(self, echoes: np.ndarray, tes_ms: tuple[float, ...]) -> np.ndarray:
        """The combined volume of one multi-echo volume.

        Parameters
        ----------
        echoes : ndarray, shape (n_echoes, nx, ny, nz)
            The volume's echoes, in echo order.
        tes_ms : tuple of float
            Their echo times (ms).

        Returns
        -------
        ndarray, shape (nx, ny, nz), float32

        Raises
        ------
        ValueError
            The echo times or the grid differ from the run's first volume's.
        """
        tes = tuple(float(t) for t in tes_ms)
        if self.tes_ms is None:
            self.tes_ms = tes
            self._prefit = prefit_weights(tes, self.before_fit)
        elif tes != self.tes_ms:
            raise ValueError(f"echo times {list(tes)} ms differ from the run's {list(self.tes_ms)} ms")
        if self.weights is not None:
            if echoes.shape != self.weights.shape:
                raise ValueError(f"echoes of shape {echoes.shape}, the run's are {self.weights.shape}")
            self.n_fitted += 1
            return _weighted_sum(self.weights, echoes)
        out = _weighted_sum(self._prefit, echoes)  # type: ignore[arg-type]
        if self._sum is None:
            self._sum = np.array(echoes, dtype=np.float32)
        elif echoes.shape != self._sum.shape:
            raise ValueError(f"echoes of shape {echoes.shape}, the run's are {self._sum.shape}")
        else:
            self._sum += echoes
        self._n += 1
        if self._n >= self.fit_volumes:
            self.fit()
        return out

    def fit(self) -> None:
        """Fit T2* and S0 on the mean of the volumes seen (tedana's log-linear fit) and derive the weights."""
        from tedana.decay import fit_decay

        t0 = time.perf_counter()
        n_volumes, mean = self._n, self._sum / self._n  # type: ignore[operator]
        self._sum = None
        n_echoes, shape = mean.shape[0], mean.shape[1:4]
        means = mean.reshape(n_echoes, -1)  # (E, S)
        # A non-finite voxel in any echo of any fit volume leaves that voxel out (it keeps the pre-fit weights);
        # in the percentile it would leave out every voxel (NaN), in tedana's fit it raised.
        finite = np.all(np.isfinite(means), axis=0)
        level = np.percentile(means[0][finite], 99) if finite.any() else np.inf
        mask = finite & (means[0] > SIGNAL_FRACTION * level)
        # tedana's adaptive mask: how many leading echoes have signal (a log-linear fit needs positive values)
        good = np.cumprod(means[:, mask] > 0, axis=0).sum(axis=0)
        fit = mask.copy()
        fit[mask] = good >= 2
        samples = np.ascontiguousarray(means[:, fit].T)  # (S_fit, E)
        t2s, s0 = fit_decay(np.clip(samples, 1e-3, None), list(self.tes_ms), good[good >= 2], "loglin",  # type: ignore[arg-type]
                            report=False)[:2]
        t2s = np.asarray(t2s, dtype=np.float64)
        ok = np.isfinite(t2s) & (t2s > 0)
        t2star = np.full(fit.size, np.nan)
        t2star[fit] = np.where(ok, np.clip(t2s, *T2STAR_LIMITS_MS), np.nan)
        s0_map = np.full(fit.size, np.nan)
        s0_map[fit] = np.where(ok, s0, np.nan)
        prefit = self._prefit.reshape(-1, 1)  # type: ignore[union-attr]
        weights = np.repeat(prefit, fit.size, axis=1)  # (E, S): voxels without a fit keep the pre-fit weights
        fitted = np.isfinite(t2star)
        weights[:, fitted] = t2star_weights(t2star[fitted], self.tes_ms)  # type: ignore[arg-type]
        # Scale so that the mean over the fit volumes is the pre-fit combination's (no step in the run's signal).
        before = (prefit * means).sum(axis=0)
        after = (weights * means).sum(axis=0)
        with np.errstate(invalid="ignore"):  # a non-finite voxel's level: its weights stay unscaled
            scale = np.where((after > 0) & np.isfinite(before), before / np.where(after > 0, after, 1.0), 1.0)
        self.weights = (weights * scale).reshape((n_echoes,) + shape).astype(np.float32)
        self.t2star_ms, self.s0 = t2star.reshape(shape), s0_map.reshape(shape)
        self.fit_s = time.perf_counter() - t0
        log.info("multi-echo: T2* fitted on %d volumes (%d voxels, median %.1f ms) in %.0f ms; T2*-weighted "
                 "combination from the next volume", n_volumes, int(fitted.sum()),
                 float(np.nanmedian(t2star)) if fitted.any() else float("nan"), self.fit_s * 1e3)


def _weighted_sum(weights: np.ndarray, echoes: np.ndarray) -> np.ndarray:
    """``sum_e weights[e] * echoes[e]`` in float32; ``weights`` one scalar per echo or one map per echo.

    Per-voxel weights go through one ``einsum`` over the flattened arrays (measured faster than a
    multiply-add loop, and than ``(weights * echoes).sum(0)``, which allocates every product).
    """
    n = echoes.shape[0]
    if weights.ndim == 1:
        out = np.multiply(echoes[0], np.float32(weights[0]), dtype=np.float32)
        for e in range(1, n):
            if weights[e]:
                out += echoes[e] * np.float32(weights[e])
        return out
    flat = np.einsum("ij,ij->j", weights.reshape(n, -1), np.ascontiguousarray(echoes).reshape(n, -1))
    return flat.reshape(echoes.shape[1:])
