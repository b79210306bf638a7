"""Incremental general linear model, updated one volume at a time.

The least-squares problem ``Y ~ X B`` over the volumes seen so far is kept as
the triangular factor ``R`` of a QR decomposition of ``X`` and ``Z = Q'Y``,
updated with Givens rotations as each row arrives. This costs
O(p * (p + V)) per volume for p regressors and V signals, never grows with
the run, and is as accurate as a batch QR fit (no normal equations, whose
squared condition number loses digits early in a run).
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import solve_triangular


class IncrementalGLM:
    """Recursive least squares by QR updates.

    Parameters
    ----------
    n_regressors : int
        Number of design columns p.
    n_signals : int
        Number of signals V fitted at once (ROIs, or voxels).
    rcond : float
        Smallest ratio of singular values of ``R`` for which the design is
        considered identifiable (default 1e-6: a condition number up to 1e6,
        so that coefficients keep about ten significant digits).
    """

    def __init__(self, n_regressors: int, n_signals: int, rcond: float = 1e-6) -> None:
        if n_regressors < 1 or n_signals < 1:
            raise ValueError(
                f"n_regressors and n_signals must be >= 1, got {n_regressors} and {n_signals}"
            )
        self.rcond = rcond
        self._p = n_regressors
        self._r = np.zeros((n_regressors, n_regressors))
        # Rows 0..p-1 hold Z = Q'Y; row p receives each new observation. Two
        # buffers alternate so that the rotation is one BLAS product, no copies.
        self._zy = np.zeros((n_regressors + 1, n_signals))
        self._spare = np.empty_like(self._zy)
        self._rss = np.zeros(n_signals)
        self.n_obs = 0
        self._identifiable: dict[int, bool] = {}  # per nested model, until the next update

    @property
    def _z(self) -> np.ndarray:
        return self._zy[: self._p]

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        """Add one observation.

        Parameters
        ----------
        x : ndarray, shape (p,)
            The design row of this volume.
        y : ndarray, shape (V,)
            The signals of this volume.
        """
        p = self._p
        x = np.array(x, dtype=np.float64)
        r = self._r
        # The Givens rotations that zero x against R are found on the small
        # (p + 1) x p system and gathered in one orthogonal matrix g; applying
        # g to [Z; y] is then a single matrix product over all V signals.
        g = np.eye(p + 1)
        for j in range(p):
            a = x[j]
            if a == 0.0:
                continue
            b = r[j, j]
            rho = np.hypot(a, b)
            c, s = b / rho, a / rho
            rj, xj = r[j, j:].copy(), x[j:].copy()
            r[j, j:] = c * rj + s * xj
            x[j:] = c * xj - s * rj
            gj, gp = g[j].copy(), g[p].copy()
            g[j] = c * gj + s * gp
            g[p] = c * gp - s * gj
        self._zy[p] = y
        np.matmul(g, self._zy, out=self._spare)
        self._zy, self._spare = self._spare, self._zy
        # What the rotations leave of y lies outside the column space so far:
        # its square is this volume's contribution to the residual sum of squares.
        e = self._zy[p]
        self._rss += e * e
        self.n_obs += 1
        self._identifiable.clear()

    def _q(self, n_columns: int | None) -> int:
        p = self._r.shape[0]
        if n_columns is None:
            return p
        if not 1 <= n_columns <= p:
            raise ValueError(f"n_columns must be between 1 and {p}, got {n_columns}")
        return n_columns

    def identifiable(self, n_columns: int | None = None) -> bool:
        """Whether the model of the first ``n_columns`` regressors (all by default) is well determined.

        The triangular factor of the first q columns is ``R[:q, :q]``, so every
        leading sub-model can be checked and solved without refitting. It is
        identifiable when ``R[:q, :q]``'s smallest singular value is more than
        ``rcond`` times its largest: early in a run, slow drift terms are
        nearly collinear and their coefficients meaningless.
        """
        q = self._q(n_columns)
        if self.n_obs < q:
            return False
        if q not in self._identifiable:
            s = np.linalg.svd(self._r[:q, :q], compute_uv=False)
            self._identifiable[q] = bool(s[0] > 0 and s[-1] / s[0] > self.rcond)
        return self._identifiable[q]

    def coefficients(self, n_columns: int | None = None) -> np.ndarray:
        """Least-squares coefficients of the first ``n_columns`` regressors, shape (q, V).

        Raises
        ------
        RuntimeError
            If that model is not identifiable (see :meth:`identifiable`).
        """
        q = self._q(n_columns)
        if not self.identifiable(q):
            raise RuntimeError(
                f"design of {q} regressors not identifiable after {self.n_obs} observations"
            )
        return solve_triangular(self._r[:q, :q], self._z[:q], lower=False, check_finite=False)

    def ridge_coefficients(self, precision: np.ndarray) -> np.ndarray:
        """Coefficients of all regressors with a zero-mean Gaussian prior, shape (p, V).

        Solves ``min ||Y - X B||^2 + sum_j precision_j ||B_j||^2`` over the
        observations so far as the least-squares problem ``[R; sqrt(P)] B ~
        [Z; 0]``: O(p^3 + p^2 V), no normal equations, and the prior can
        change from one call to the next (the data part is untouched).

        Parameters
        ----------
        precision : ndarray, shape (p,)
            Prior precision of each coefficient, >= 0 (0: no prior).

        Raises
        ------
        RuntimeError
            If the penalised problem is not identifiable (a column with no
            prior and no information yet).
        """
        p = self._p
        precision = np.asarray(precision, dtype=np.float64)
        a = np.vstack([self._r, np.diag(np.sqrt(precision))])
        b = np.vstack([self._z, np.zeros((p, self._z.shape[1]))])
        s = np.linalg.svd(a, compute_uv=False)
        if not (s[0] > 0 and s[-1] / s[0] > self.rcond):
            raise RuntimeError(f"penalised design of {p} regressors not identifiable after {self.n_obs} observations")
        beta, *_ = np.linalg.lstsq(a, b, rcond=None)
        return beta

    def rss(self, n_columns: int | None = None) -> np.ndarray:
        """Residual sum of squares per signal of the first ``n_columns`` regressors' model."""
        q = self._q(n_columns)
        if q == self._p:
            return self._rss.copy()
        return self._rss + np.einsum("ij,ij->j", self._z[q:], self._z[q:])

    def contrast(self, c: np.ndarray, n_columns: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Effect ``c'b`` and its t statistic for every signal.

        Parameters
        ----------
        c : ndarray, shape (q,)
            Contrast weights over the first ``n_columns`` regressors.
        n_columns : int, optional
            Size of the nested model (all regressors by default).

        Returns
        -------
        effect, t : ndarray, shape (V,)
            ``t`` is NaN where the residual variance is zero or there are no
            degrees of freedom left.

        Raises
        ------
        RuntimeError
            If that model is not identifiable.
        """
        q = self._q(n_columns)
        c = np.asarray(c, dtype=np.float64)
        if c.shape != (q,):
            raise ValueError(f"contrast must have {q} weights (one per regressor), got shape {c.shape}")
        if not self.identifiable(q):
            raise RuntimeError(f"design of {q} regressors not identifiable after {self.n_obs} observations")
        # c'b = c'R^-1 Z = w'Z with R'w = c: one small triangular solve, then O(qV).
        w = solve_triangular(self._r[:q, :q], c, trans="T", lower=False, check_finite=False)
        effect = w @ self._z[:q]
        dof = self.n_obs - q
        if dof <= 0:
            return effect, np.full_like(effect, np.nan)
        var = self.rss(q) * (w @ w) / dof
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(var > 0, effect / np.sqrt(var), np.nan)
        return effect, t
