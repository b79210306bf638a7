"""Confound regressors that arrive with each volume: physiological noise and tissue signals.

Each source (:class:`~rtnf.analysis.confounds.base.ConfoundSource`) is
configured by a table of ``[confounds]`` in the session config and fills its
own columns of the design (see :mod:`rtnf.analysis.design`).
"""

from __future__ import annotations

from typing import Any

from .base import ConfoundContext, ConfoundError, ConfoundInput, ConfoundSource

__all__ = ["ConfoundContext", "ConfoundError", "ConfoundInput", "ConfoundSource", "make_confounds"]


def make_confounds(cfg: Any) -> list[ConfoundSource]:
    """The confound sources a session config asks for (``[confounds.physio]``, ``[confounds.tissue]``), in that order.

    Parameters
    ----------
    cfg : rtnf.config.Config
        The session config.
    """
    sources: list[ConfoundSource] = []
    confounds = cfg.confounds
    if confounds.physio is not None:
        from .physio import PhysioRegressors

        sources.append(PhysioRegressors(confounds.physio, base_dir=cfg.base_dir, export_dir=cfg.scanner.export_dir,
                                        dummy_volumes=cfg.scanner.dummy_volumes))
    if confounds.tissue is not None:
        from .tissue import TissueRegressors

        sources.append(TissueRegressors(confounds.tissue, base_dir=cfg.base_dir))
    return sources
